/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-nbd: export a disk image over NBD, a drop-in for qemu-nbd 7.2.
 * This file reads the command line (qemu-nbd's options and messages),
 * opens the image and hands it to the server, the lister (-L) or the
 * kernel client (-c/-d). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbd.h"
#include "nbd/nbd-proto.h"
#include "util/size.h"
#include "vdisk/driver.h"

enum {
    OPT_CACHE = 256, OPT_AIO, OPT_DISCARD, OPT_DETECT_ZEROES, OPT_OBJECT,
    OPT_TLSCREDS, OPT_TLSHOSTNAME, OPT_TLSAUTHZ, OPT_IMAGE_OPTS, OPT_FORK,
    OPT_PID_FILE, OPT_SELINUX_LABEL, OPT_UNTRUSTED,
};

static const char *argv0 = NBD_PROG;     /* for "Try `%s --help'" */

static const char short_opts[] = "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:LP:";
static const struct option long_opts[] = {
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { "bind", required_argument, NULL, 'b' },
    { "port", required_argument, NULL, 'p' },
    { "socket", required_argument, NULL, 'k' },
    { "offset", required_argument, NULL, 'o' },
    { "read-only", no_argument, NULL, 'r' },
    { "allocation-depth", no_argument, NULL, 'A' },
    { "bitmap", required_argument, NULL, 'B' },
    { "connect", required_argument, NULL, 'c' },
    { "disconnect", no_argument, NULL, 'd' },
    { "list", no_argument, NULL, 'L' },
    { "snapshot", no_argument, NULL, 's' },
    { "load-snapshot", required_argument, NULL, 'l' },
    { "nocache", no_argument, NULL, 'n' },
    { "cache", required_argument, NULL, OPT_CACHE },
    { "aio", required_argument, NULL, OPT_AIO },
    { "discard", required_argument, NULL, OPT_DISCARD },
    { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
    { "shared", required_argument, NULL, 'e' },
    { "format", required_argument, NULL, 'f' },
    { "persistent", no_argument, NULL, 't' },
    { "verbose", no_argument, NULL, 'v' },
    { "object", required_argument, NULL, OPT_OBJECT },
    { "export-name", required_argument, NULL, 'x' },
    { "description", required_argument, NULL, 'D' },
    { "partition", required_argument, NULL, 'P' },
    { "tls-creds", required_argument, NULL, OPT_TLSCREDS },
    { "tls-hostname", required_argument, NULL, OPT_TLSHOSTNAME },
    { "tls-authz", required_argument, NULL, OPT_TLSAUTHZ },
    { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
    { "trace", required_argument, NULL, 'T' },
    { "fork", no_argument, NULL, OPT_FORK },
    { "pid-file", required_argument, NULL, OPT_PID_FILE },
    { "selinux-label", required_argument, NULL, OPT_SELINUX_LABEL },
    { "untrusted", no_argument, NULL, OPT_UNTRUSTED },
    { NULL, 0, NULL, 0 },
};

static const char help_text[] =
"Usage: " NBD_PROG " [OPTIONS] FILE\n"
"  or:  " NBD_PROG " -L [OPTIONS]\n"
"Export a disk image over the Network Block Device protocol\n"
"\n"
"  -h, --help                display this help and exit\n"
"  -V, --version             output version information and exit\n"
"\n"
"Connection properties:\n"
"  -p, --port=PORT           port to listen on (default `10809')\n"
"  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
"  -k, --socket=PATH         path to the unix socket\n"
"                            (default '/var/lock/qemu-nbd-DEVICE')\n"
"  -e, --shared=NUM          device can be shared by NUM clients (default '1')\n"
"  -t, --persistent          don't exit on the last connection\n"
"  -v, --verbose             display extra debugging information\n"
"  -x, --export-name=NAME    expose export by name (default is empty string)\n"
"  -D, --description=TEXT    export a human-readable description\n"
"\n"
"Exposing part of the image:\n"
"  -o, --offset=OFFSET       offset into the image\n"
"  -P, --partition=NUM       only expose partition NUM (MBR or GPT)\n"
"  -A, --allocation-depth    expose the allocation depth\n"
"  -B, --bitmap=NAME         expose a persistent dirty bitmap\n"
"\n"
"General purpose options:\n"
"  -L, --list                list exports available from another NBD server\n"
"  --object type,id=ID,...   define an object such as 'secret' for providing\n"
"                            passwords and/or encryption keys\n"
"  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
"  --tls-authz=ID            use id of an earlier --object to provide\n"
"                            authorization\n"
"  --tls-hostname=HOSTNAME   override the hostname used to check the\n"
"                            server's x509 certificate (with --list)\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                            specify tracing options\n"
"  --fork                    fork off the server process and exit the parent\n"
"                            once the server is running\n"
"  --pid-file=PATH           store the server's process ID in the given file\n"
"  --selinux-label=LABEL     set SELinux process label on listening socket\n"
"\n"
"Kernel NBD client support:\n"
"  -c, --connect=DEV         connect FILE to the local NBD device DEV\n"
"  -d, --disconnect          disconnect the specified device\n"
"\n"
"Block device options:\n"
"  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
"  -r, --read-only           export read-only\n"
"  -s, --snapshot            use FILE as an external snapshot, create a temporary\n"
"                            file with backing_file=FILE, redirect the write to\n"
"                            the temporary one\n"
"  -l, --load-snapshot=SNAPSHOT_PARAM\n"
"                            load an internal snapshot inside FILE and export it\n"
"                            as an read-only device, SNAPSHOT_PARAM format is\n"
"                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
"                            '[ID_OR_NAME]'\n"
"  -n, --nocache             disable host cache\n"
"      --cache=MODE          set cache mode used to access the disk image, the\n"
"                            valid options are: 'none', 'writeback' (default),\n"
"                            'writethrough', 'directsync' and 'unsafe'\n"
"      --aio=MODE            set AIO mode (native, io_uring or threads)\n"
"      --discard=MODE        set discard mode (ignore, unmap)\n"
"      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n"
"      --image-opts          treat FILE as a full set of image options\n"
"      --untrusted           treat FILE as hostile: refuse backing files, data\n"
"                            files, other vmdk extents, json: and protocol names\n"
"                            inside it and a format that does not match -f; cap\n"
"                            table sizes (also VDISK_UNTRUSTED=1)\n";

/* See nbd.h. */
void nbd_err(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", NBD_PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* An error in the command line, with the hint to --help. */
static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", NBD_PROG);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry `%s --help' for more information.\n", argv0);
    return EXIT_FAILURE;
}

/* -e: a non-negative number of clients. */
static int parse_shared(const char *s, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 0);
    if (errno || end == s || *end || v < 0 || v > 0x7fffffff) {
        nbd_err("Invalid shared device number '%s'", s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* -o: a byte offset. */
static int parse_offset(const char *s, uint64_t *out)
{
    char *end;

    errno = 0;
    *out = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-' || *out > INT64_MAX) {
        nbd_err("Invalid offset '%s'", s);
        return -1;
    }
    return 0;
}

/* Handle one option; 0, or an exit code when the program must end. */
static int parse_one(struct nbd_cli *cli, int c, char **argv)
{
    switch (c) {
    case 'h': fputs(help_text, stdout); exit(EXIT_SUCCESS);
    case 'V': printf("%s %s\n", NBD_PROG, VD_VERSION_STRING); exit(EXIT_SUCCESS);
    case 'b': cli->bind = optarg; break;
    case 'p': cli->port = optarg; break;
    case 'k': cli->sockpath = optarg; break;
    case 'o':
        cli->has_offset = true;
        return parse_offset(optarg, &cli->offset) < 0 ? EXIT_FAILURE : 0;
    case 'r': cli->read_only = true; break;
    case 'A': cli->alloc_depth = true; break;
    case 'B': return nbd_cli_add_bitmap(cli, optarg) < 0 ? EXIT_FAILURE : 0;
    case 'c': cli->device = optarg; break;
    case 'd': cli->disconnect = true; break;
    case 'L': cli->list = true; break;
    case 's': cli->snapshot = true; break;
    case 'l': cli->snapshot_param = optarg; cli->read_only = true; break;
    case 'n': cli->nocache = true; cli->cache = "none"; break;
    case OPT_CACHE: cli->cache = optarg; break;
    case OPT_AIO: cli->aio = optarg; break;
    case OPT_DISCARD: cli->discard = optarg; break;
    case OPT_DETECT_ZEROES: cli->detect_zeroes = optarg; break;
    case 'e': return parse_shared(optarg, &cli->shared) < 0 ? EXIT_FAILURE : 0;
    case 'f': cli->fmt = optarg; break;
    case 't': cli->persistent = true; break;
    case 'v': cli->verbose = true; break;
    case OPT_OBJECT: return nbd_object_add(optarg) < 0 ? EXIT_FAILURE : 0;
    case 'x': cli->export_name = optarg; break;
    case 'D': cli->description = optarg; break;
    case 'P': cli->partition = optarg; break;
    case OPT_TLSCREDS: cli->tls_creds = optarg; break;
    case OPT_TLSHOSTNAME: cli->tls_hostname = optarg; break;
    case OPT_TLSAUTHZ: cli->tls_authz = optarg; break;
    case OPT_IMAGE_OPTS: cli->image_opts = true; break;
    case 'T': break;               /* no trace points: accepted, ignored */
    case OPT_FORK: cli->fork = true; break;
    case OPT_PID_FILE: cli->pid_file = optarg; break;
    case OPT_SELINUX_LABEL: cli->selinux_label = optarg; break;
    case OPT_UNTRUSTED: cli->untrusted = true; break;
    case ':':
        return usage_error("option '%s' requires an argument", argv[optind - 1]);
    default:
        nbd_err("Try `%s --help' for more information.", argv0);
        return EXIT_FAILURE;
    }
    return 0;
}

/* Checks of -L against the rest of the command line. */
static int check_list_mode(const struct nbd_cli *cli, int nargs)
{
    if (nargs) {
        nbd_err("List mode is incompatible with a file name");
        return EXIT_FAILURE;
    }
    if (cli->export_name || cli->description || cli->has_offset || cli->partition ||
        cli->nbitmaps || cli->aio || cli->discard || cli->cache || cli->snapshot_param ||
        cli->detect_zeroes || cli->alloc_depth) {
        nbd_err("List mode is incompatible with per-device settings");
        return EXIT_FAILURE;
    }
    if (cli->fork) {
        nbd_err("List mode is incompatible with forking");
        return EXIT_FAILURE;
    }
    return 0;
}

/* Checks of mode values and combinations, in qemu-nbd's words. */
static int check_modes(const struct nbd_cli *cli)
{
    static const char *const caches[] = { "none", "off", "writeback", "writethrough",
                                          "directsync", "unsafe" };
    bool ok = !cli->cache;

    for (size_t i = 0; !ok && i < sizeof(caches) / sizeof(caches[0]); i++)
        ok = !strcmp(cli->cache, caches[i]);
    if (!ok)
        return nbd_err("Invalid cache mode `%s'", cli->cache), -1;
    if (cli->aio && strcmp(cli->aio, "native") && strcmp(cli->aio, "threads") &&
        strcmp(cli->aio, "io_uring"))
        return nbd_err("Invalid aio mode '%s'", cli->aio), -1;
    if (cli->discard && strcmp(cli->discard, "ignore") && strcmp(cli->discard, "off") &&
        strcmp(cli->discard, "unmap") && strcmp(cli->discard, "on"))
        return nbd_err("Invalid discard mode `%s'", cli->discard), -1;
    if (cli->detect_zeroes && strcmp(cli->detect_zeroes, "off") &&
        strcmp(cli->detect_zeroes, "on") && strcmp(cli->detect_zeroes, "unmap"))
        return nbd_err("Failed to parse detect_zeroes mode: invalid parameter value: %s",
                       cli->detect_zeroes), -1;
    if (cli->detect_zeroes && !strcmp(cli->detect_zeroes, "unmap") &&
        !(cli->discard && (!strcmp(cli->discard, "unmap") || !strcmp(cli->discard, "on"))))
        return nbd_err("setting detect-zeroes to unmap is not allowed without setting "
                       "discard operation to unmap"), -1;
    return 0;
}

/* Checks of the server-mode command line. */
static int check_server_mode(const struct nbd_cli *cli)
{
    if (cli->export_name && strlen(cli->export_name) > NBD_MAX_STRING)
        return nbd_err("export name '%s' too long", cli->export_name), -1;
    if (cli->description && strlen(cli->description) > NBD_MAX_STRING)
        return nbd_err("export description '%s' too long", cli->description), -1;
    if (cli->tls_authz && !cli->tls_creds)
        return nbd_err("--tls-authz is not permitted without --tls-creds"), -1;
    if (cli->tls_hostname)
        return nbd_err("--tls-hostname is only permitted with --list"), -1;
    if (cli->tls_creds && cli->device)
        return nbd_err("TLS is not supported with a host device"), -1;
    if (cli->selinux_label)
        return nbd_err("SELinux support not enabled in this binary"), -1;
    return check_modes(cli);
}

/* The option dict for opening the image (cache mode, --image-opts). */
static vd_opts *open_opts(const struct nbd_cli *cli)
{
    vd_opts *o = vd_opts_new();
    const char *cache = cli->cache ? cli->cache : "writeback";

    if (!o)
        return NULL;
    if (cli->image_opts && vd_opts_parse(o, cli->filename, NULL) < 0) {
        nbd_err("Failed to blk_new_open '%s': %s", cli->filename, vd_errmsg());
        vd_opts_free(o);
        return NULL;
    }
    if (!vd_opts_has(o, "cache.direct"))
        vd_opts_set(o, "cache.direct", !strcmp(cache, "none") || !strcmp(cache, "off") ||
                    !strcmp(cache, "directsync") ? "on" : "off");
    if (!vd_opts_has(o, "cache.no-flush"))
        vd_opts_set(o, "cache.no-flush", !strcmp(cache, "unsafe") ? "on" : "off");
    return o;
}

/* -s: a temporary qcow2 overlay over the image, deleted at once (the
 * open node keeps it alive). */
static vd_node *open_snapshot(const struct nbd_cli *cli)
{
    char tmpl[] = "/var/tmp/vdisk-nbd.XXXXXX", *abs = NULL;
    vd_node *base = NULL, *n = NULL;
    vd_opts *o;
    int fd, r;

    if (!vd_driver_find("qcow2")) {
        nbd_err("Failed to blk_new_open '%s': -s/--snapshot needs the qcow2 driver, "
                "which this build lacks", cli->filename);
        return NULL;
    }
    if (cli->image_opts) {
        nbd_err("--snapshot is not supported with --image-opts");
        return NULL;
    }
    /* Untrusted: the image is checked here; the overlay made below is
     * ours and names it as its backing file, so it is opened trusted. */
    if ((r = vd_open(&base, cli->filename, cli->fmt, NULL,
                     cli->untrusted ? VD_O_UNTRUSTED : 0)) < 0) {
        nbd_err("Failed to blk_new_open '%s': %s", cli->filename, vd_errmsg());
        return NULL;
    }
    abs = realpath(cli->filename, NULL);
    if ((fd = mkstemp(tmpl)) < 0 || !abs || !(o = vd_opts_new())) {
        nbd_err("Could not create temporary overlay: %s", strerror(errno));
        goto out;
    }
    close(fd);
    {
        char size[32];
        snprintf(size, sizeof(size), "%" PRId64, vd_getlength(base));
        vd_opts_set(o, "size", size);
        vd_opts_set(o, "backing_file", abs);
        vd_opts_set(o, "backing_fmt", vd_node_format(base));
    }
    r = vd_create("qcow2", tmpl, o);
    vd_opts_free(o);
    if (r >= 0)
        r = vd_open(&n, tmpl, "qcow2", NULL, VD_O_RDWR);
    unlink(tmpl);
    if (r < 0)
        nbd_err("Failed to blk_new_open '%s': %s", cli->filename, vd_errmsg());
out:
    free(abs);
    vd_close(base);
    return n;
}

/* Open the image named on the command line; NULL with the error printed. */
static vd_node *open_image(const struct nbd_cli *cli)
{
    int flags = (cli->read_only ? 0 : VD_O_RDWR) | (cli->untrusted ? VD_O_UNTRUSTED : 0);
    vd_opts *o;
    vd_node *n = NULL;
    int r;

    if (cli->snapshot)
        return open_snapshot(cli);
    if (!(o = open_opts(cli)))
        return NULL;
    vd_error_clear();
    r = cli->image_opts ? vd_open(&n, NULL, NULL, o, flags)
                        : vd_open(&n, cli->filename, cli->fmt, o, flags);
    if (r < 0) {
        nbd_err("Failed to blk_new_open '%s': %s", cli->filename, vd_errmsg());
        return NULL;
    }
    return n;
}

/* The window the export shows: -o offset or -P partition. */
static int export_window(const struct nbd_cli *cli, vd_node *n, struct vd_nbd_export *e)
{
    int64_t len = vd_getlength(n);
    char *end;
    long part;

    if (len < 0)
        return nbd_err("Failed to get image size: %s", strerror((int)-len)), -1;
    e->offset = cli->offset;
    if (cli->offset > (uint64_t)len)
        return nbd_err("Offset (%" PRIu64 ") cannot be greater than size of the "
                       "containing file (%" PRId64 ")", cli->offset, len), -1;
    e->size = (uint64_t)len - cli->offset;
    if (!cli->partition)
        return 0;
    part = strtol(cli->partition, &end, 10);
    if (end == cli->partition || *end || part < 1 || part > 128)
        return nbd_err("Invalid partition '%s'", cli->partition), -1;
    if (nbd_find_partition(n, (int)part, &e->offset, &e->size) < 0)
        return nbd_err("Could not find partition %ld: %s", part, vd_errmsg()), -1;
    if (cli->offset > e->size)
        return nbd_err("Offset (%" PRIu64 ") is beyond the partition", cli->offset), -1;
    e->offset += cli->offset;
    e->size -= cli->offset;
    return 0;
}

/* -l loads an internal snapshot. */
static int check_image_features(const struct nbd_cli *cli, vd_node *n)
{
    if (cli->snapshot_param && vd_snapshot_load_param(n, cli->snapshot_param) < 0) {
        nbd_err("Failed to load snapshot: %s", vd_errmsg());
        return -1;
    }
    return 0;
}

/* Fill the export from the command line and the open node. */
static int setup_export(const struct nbd_cli *cli, vd_node *n, struct vd_nbd_export *e)
{
    memset(e, 0, sizeof(*e));
    e->name = cli->export_name ? cli->export_name : "";
    e->description = cli->description;
    e->node = n;
    e->read_only = cli->read_only || vd_node_read_only(n);
    e->multi_conn = cli->shared != 1;     /* as qemu-nbd 7.2 */
    e->allocation_depth = cli->alloc_depth;
    if (nbd_export_bitmaps(cli, n, (struct vd_nbd_bitmap **)&e->bitmaps) < 0)
        return -1;
    e->nbitmaps = cli->nbitmaps;
    e->discard_unmap = cli->discard && (!strcmp(cli->discard, "unmap") ||
                                        !strcmp(cli->discard, "on"));
    e->detect_zeroes = !cli->detect_zeroes || !strcmp(cli->detect_zeroes, "off")
                     ? VD_NBD_DZ_OFF : !strcmp(cli->detect_zeroes, "on")
                     ? VD_NBD_DZ_ON : VD_NBD_DZ_UNMAP;
    return export_window(cli, n, e);
}

/* Server mode: open, export, serve. */
static int run_server(struct nbd_cli *cli)
{
    struct vd_nbd_server srv;
    struct vd_nbd_export exp = { 0 };
    struct vd_nbd_tls *tls = NULL;
    vd_node *n;
    int r = EXIT_FAILURE;

    if (cli->tls_creds && !(tls = nbd_object_tls(cli->tls_creds, true, cli->tls_authz)))
        return EXIT_FAILURE;
    if (((cli->device && !cli->verbose) || cli->fork) &&
        nbd_detach(cli->verbose) < 0) {
        vd_nbd_tls_free(tls);
        return EXIT_FAILURE;
    }
    if (!(n = open_image(cli))) {
        vd_nbd_tls_free(tls);
        return EXIT_FAILURE;
    }
    if (check_image_features(cli, n) == 0 && setup_export(cli, n, &exp) == 0) {
        vd_nbd_server_init(&srv);
        srv.exports = &exp;
        srv.nexports = 1;
        srv.tls = tls;
        srv.verbose = cli->verbose;
        r = cli->device ? nbd_kernel_connect(cli, &srv, &exp, n)
                        : nbd_serve(cli, &srv, n);
        vd_nbd_server_destroy(&srv);
    }
    free((void *)exp.bitmaps);
    vd_flush(n);
    vd_close(n);
    vd_nbd_tls_free(tls);
    return r;
}

/* -L: list the exports of a server. */
static int run_list(struct nbd_cli *cli, int nargs)
{
    struct vd_nbd_tls *tls = NULL;
    int r;

    if ((r = check_list_mode(cli, nargs)) != 0)
        return r;
    if (cli->tls_authz)
        return nbd_err("--tls-authz is not permitted without --tls-creds"), EXIT_FAILURE;
    if (cli->tls_creds && !(tls = nbd_object_tls(cli->tls_creds, false, NULL)))
        return EXIT_FAILURE;
    r = nbd_list(cli, tls);
    vd_nbd_tls_free(tls);
    return r;
}

int main(int argc, char **argv)
{
    struct nbd_cli cli = { .shared = 1, .untrusted = vd_untrusted_env() };
    int c, r;

    argv0 = argv[0];
    while ((c = getopt_long(argc, argv, short_opts, long_opts, NULL)) != -1)
        if ((r = parse_one(&cli, c, argv)) != 0) {
            free(cli.bitmaps);
            return r;
        }
    if (cli.list) {
        r = run_list(&cli, argc - optind);
        free(cli.bitmaps);
        return r;
    }
    if (argc - optind != 1 || cli.disconnect) {
        free(cli.bitmaps);
        if (argc - optind != 1)
            return usage_error("%s", "Invalid number of arguments");
        return nbd_kernel_disconnect(argv[optind]) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
    }
    cli.filename = argv[optind];
    r = check_server_mode(&cli) < 0 ? EXIT_FAILURE : run_server(&cli);
    free(cli.bitmaps);
    return r;
}
