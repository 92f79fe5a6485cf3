/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer harness for the ssh driver's names and options.  The input's
 * first line is a name for the driver's URL parser; the rest is a JSON
 * object of node options (host-key-check, user, path, legacy keys...)
 * opened as the ssh child of a raw node, with the server forced to a
 * loopback port that refuses connections and a 1 s timeout, so that every
 * check before the network runs and no input reaches another host.  Any
 * outcome but a crash or hang is fine. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "vdisk/driver.h"
#include "vdisk/vdisk.h"

static const struct vd_driver *ssh;
static char closed_port[16];

/* A loopback port bound but not listening: connecting is refused. */
static void pick_closed_port(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) < 0)
        abort();
    snprintf(closed_port, sizeof(closed_port), "%d", ntohs(a.sin_port));
    /* fd stays open (and bound) for the whole run */
}

/* Load the ssh module before fuzzing starts, so that libFuzzer sees its
 * coverage counters from the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ssh = vd_driver_find("ssh");
    if (!ssh) {
        fputs("fuzz-ssh-uri: the ssh driver is not there (its module not built?)\n", stderr);
        abort();
    }
    pick_closed_port();
    return 0;
}

/* The URL parser alone. */
static void parse_name(const char *name)
{
    vd_opts *o = vd_opts_new();

    if (o && ssh->parse_filename)
        ssh->parse_filename(name, o);
    vd_opts_free(o);
}

/* Open with the JSON options, the server forced to the closed port. */
static void open_with(const char *json)
{
    vd_opts *j = vd_opts_new(), *o = vd_opts_new();
    vd_node *n = NULL;
    char key[512];

    if (j && o && vd_opts_parse_json(j, json) >= 0) {
        for (size_t i = 0; i < vd_opts_count(j); i++)
            if (snprintf(key, sizeof(key), "file.%s", vd_opts_key(j, i)) < (int)sizeof(key))
                vd_opts_set(o, key, vd_opts_value(j, i));
        vd_opts_set(o, "driver", "raw");
        vd_opts_set(o, "file.driver", "ssh");
        vd_opts_set(o, "file.server.host", "127.0.0.1");
        vd_opts_set(o, "file.server.port", closed_port);
        vd_opts_set(o, "file.x-timeout", "1");
        vd_opts_del(o, "file.x-known-hosts");
        vd_opts_del(o, "file.x-identity-file");
        /* vd_open takes o */
        if (vd_open(&n, NULL, NULL, o, VD_O_NO_LOCK) == 0)
            vd_close(n);
        o = NULL;
    }
    vd_error_clear();
    vd_opts_free(j);
    vd_opts_free(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1), *nl;

    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    nl = strchr(s, '\n');
    if (nl)
        *nl = '\0';
    parse_name(s);
    if (nl)
        open_with(nl + 1);
    free(s);
    return 0;
}
