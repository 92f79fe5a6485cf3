/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the luks driver: the input is the start of a LUKS1 image (short
 * inputs are extended with zeroes to 1 MiB, so header-only inputs reach
 * key slot unlocking).  It is opened for its header (info), then with the
 * passphrase "fuzz" (seeds made with it unlock), its data walked, then
 * written.  PBKDF2 iteration counts above 2000 are refused, so no input
 * spins; nothing is printed per input. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz-image.h"
#include "util/json.h"
#include "vdisk/driver.h"
#include "vdisk/object.h"

#define MIN_FILE (1u << 20)

extern uint32_t luks_max_iters;

/* The passphrase object and the iteration cap, once. */
static void setup(void)
{
    static int done;

    if (done)
        return;
    done = 1;
    luks_max_iters = 2000;
    vd_object_add("secret,id=fz,data=fuzz");
}

/* Header-only open and the info it gives. */
static void header_only(const char *name)
{
    vd_node *n = NULL;
    vd_json *d;

    if (vd_open(&n, name, "luks", NULL, VD_O_NO_LOCK | VD_O_NO_IO) != 0)
        return;
    if ((d = vd_json_new_object())) {
        n->drv->info(n, d);
        vd_json_free(d);
    }
    vd_close(n);
}

/* Open with the key (vd_open takes the options): walk, then write a
 * little and walk again. */
static void with_key(const char *name, int flags)
{
    static uint8_t buf[4096];
    vd_opts *o = vd_opts_new();
    vd_node *n = NULL;

    if (!o || vd_opts_set(o, "key-secret", "fz") < 0) {
        vd_opts_free(o);
        return;
    }
    if (vd_open(&n, name, "luks", o, VD_O_NO_LOCK | flags) == 0) {
        if (flags & VD_O_RDWR) {
            for (size_t i = 0; i < sizeof(buf); i++)
                buf[i] = (uint8_t)i;
            vd_pwrite(n, 0, sizeof(buf), buf, 0);
            vd_pwrite(n, 1536, 1024, buf, 0);
            vd_flush(n);
        }
        fuzz_walk(n);
        vd_close(n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    int fd = memfd_create("fuzz-luks", 0);

    setup();
    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size &&
        (size >= MIN_FILE || ftruncate(fd, MIN_FILE) == 0)) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        header_only(name);
        with_key(name, 0);
        with_key(name, VD_O_RDWR);
    }
    close(fd);
    vd_error_clear();
    return 0;
}
