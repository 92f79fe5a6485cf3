/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the qcow2 driver: the input is a qcow2 image; it is opened (format
 * forced, no backing files), its mapping walked and each extent read,
 * including compressed clusters, the info hook and check; then opened
 * read-write for a few writes, zero writes and a discard (allocation,
 * the overlap check and bitmap marking on hostile metadata); persistent
 * bitmaps are listed and walked read-only, then changed and stored.
 * Encrypted images (the LUKS header extension, legacy AES) are opened
 * again with the key "fuzz" (PBKDF2 iterations capped low) and walked
 * and written through the encrypting paths. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/bitmap.h"
#include "vdisk/object.h"
#include "vdisk/driver.h"
#include "fuzz-image.h"
#include "util/json.h"

extern uint32_t luks_max_iters;

/* Once: the key secret and a low PBKDF2 cap (fast inputs). */
static void init(void)
{
    static int done;

    if (done)
        return;
    done = 1;
    luks_max_iters = 2000;
    vd_object_add("secret,id=fz,data=fuzz");
}

/* Run the info hook as vdisk-img info does. */
static void info(vd_node *n)
{
    vd_json *d = vd_json_new_object();

    if (d && n->drv->info)
        n->drv->info(n, d);
    vd_json_free(d);
}

/* Walk the dirty status of each bitmap (bounded). */
static void bitmaps_walk(vd_node *n)
{
    struct vd_bitmap_info *l;
    int64_t size = vd_getlength(n);
    int count = vd_bitmap_list(n, &l);

    for (int i = 0; i < count && size > 0; i++) {
        uint64_t off = 0, pnum;
        bool dirty;
        for (int k = 0; k < 256 && off < (uint64_t)size; k++, off += pnum)
            if (vd_bitmap_status(n, l[i].name, off, (uint64_t)size - off, &dirty, &pnum) < 0)
                break;
    }
    if (count >= 0)
        vd_bitmap_list_free(l, count);
}

/* Bitmap changes, stored at the flush. */
static void bitmaps_modify(vd_node *n)
{
    struct vd_bitmap_info *l;
    int count = vd_bitmap_list(n, &l);

    vd_bitmap_add(n, "fz", 0, false);
    if (count > 0) {
        vd_bitmap_clear(n, l[0].name);
        vd_bitmap_merge(n, "fz", n, l[0].name);
        vd_bitmap_remove(n, l[count - 1].name);
    }
    if (count >= 0)
        vd_bitmap_list_free(l, count);
    vd_flush(n);
}

/* A few changes through the write paths (the image is a memfd copy). */
static void modify(vd_node *n)
{
    static uint8_t buf[8192];
    int64_t size = vd_getlength(n);

    if (size < (int64_t)sizeof(buf))
        return;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)i;
    vd_pwrite(n, 0, 4096, buf, 0);
    vd_pwrite(n, (uint64_t)size / 2 & ~511ull, sizeof(buf), buf, 0);
    vd_pwrite_zeroes(n, (uint64_t)size - 4096, 4096, 0);
    vd_discard(n, 0, (uint64_t)size / 2);
    vd_flush(n);
}

/* An encrypted image opened with the key: walk, then write (read-write
 * when flags say so). */
static void with_key(const char *name, int flags)
{
    vd_opts *o = vd_opts_new();
    vd_node *n = NULL;

    if (!o || vd_opts_set(o, "encrypt.key-secret", "fz") < 0) {
        vd_opts_free(o);
        return;
    }
    if (vd_open(&n, name, "qcow2", o, VD_O_NO_LOCK | VD_O_NO_BACKING | flags) != 0)
        return;
    if (flags & VD_O_RDWR)
        modify(n);
    fuzz_walk(n);
    vd_close(n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-qcow2", 0);

    init();
    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        vd_opts *o = vd_opts_new();
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        /* Small caches keep eviction paths busy. */
        vd_opts_set(o, "l2-cache-size", "8192");
        if (vd_open(&n, name, "qcow2", o, VD_O_NO_LOCK | VD_O_NO_BACKING | VD_O_NO_IO) == 0) {
            bool enc = vd_node_encrypted(n);
            info(n);
            vd_close(n);
            n = NULL;
            if (enc) {
                with_key(name, 0);
                with_key(name, VD_O_RDWR);
            }
        }
        o = vd_opts_new();
        vd_opts_set(o, "l2-cache-size", "8192");
        if (vd_open(&n, name, "qcow2", o, VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
            info(n);
            fuzz_walk(n);
            bitmaps_walk(n);
            fuzz_check(n);
            vd_close(n);
            n = NULL;
            o = vd_opts_new();
            vd_opts_set(o, "l2-cache-size", "8192");
            if (vd_open(&n, name, "qcow2", o, VD_O_RDWR | VD_O_NO_LOCK | VD_O_NO_BACKING) == 0) {
                modify(n);
                bitmaps_modify(n);
                bitmaps_walk(n);
                vd_close(n);
            }
        }
    }
    close(fd);
    return 0;
}
