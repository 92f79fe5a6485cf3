/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the vhdx driver: the input is a vhdx image; it is opened (format
 * forced, no backing file: a differencing image's parent reads as
 * zeroes), a sample of every block read (sector bitmaps of partially
 * present blocks included), the mapping walked and the image checked;
 * then opened read-write (log replay, header updates) for a few writes
 * (block allocation, BAT updates through the log).  Nothing is printed
 * per input: the check report goes to /dev/null.
 *
 * A vhdx file puts its structures a MiB and more apart, past what
 * libFuzzer mutates (1 MiB inputs), so an input may also describe a
 * sparse file: "SPRS", the file length (u64 LE, at most 4 GiB), then
 * records of a page number (u32 LE, 4 KiB pages), a length (u16 LE) and
 * that many bytes, written there.  Any other input is the file itself. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "fuzz-image.h"

/* Read the start and the middle of each block (bounded), and walk the
 * block status. */
static void walk(vd_node *n)
{
    static uint8_t buf[1 << 16];
    int64_t size = vd_getlength(n), bs = vd_node_cluster_size(n);
    uint64_t pnum = 0, map = 0;
    vd_node *f = NULL;

    if (size <= 0 || bs <= 0)
        return;
    for (uint64_t off = 0, i = 0; off < (uint64_t)size && i < 1024; off += (uint64_t)bs, i++) {
        uint64_t l = (uint64_t)size - off < sizeof(buf) ? (uint64_t)size - off : sizeof(buf);
        uint64_t mid = off + (uint64_t)bs / 2;
        vd_pread(n, off, l, buf, 0);
        if (mid + 4096 <= (uint64_t)size)
            vd_pread(n, mid + 100, 3000, buf, 0);
    }
    vd_block_status(n, 0, (uint64_t)size, &pnum, &map, &f);
}

/* A few writes: the first block, across a block boundary in the middle,
 * the last sector (the image is a memfd copy). */
static void modify(vd_node *n)
{
    static uint8_t buf[8192];
    int64_t size = vd_getlength(n), bs = vd_node_cluster_size(n);

    if (size < (int64_t)sizeof(buf) || bs <= 0)
        return;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)i;
    vd_pwrite(n, 512, 4096, buf, 0);
    if (size > bs)
        vd_pwrite(n, (uint64_t)bs - 4096, sizeof(buf), buf, 0);
    vd_pwrite(n, (uint64_t)size - 512, 512, buf, 0);
    vd_flush(n);
    walk(n);
}

/* Little-endian loads from the input. */
static uint64_t le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;

    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Write the input into fd: as is, or as the sparse file it describes. */
static bool fill(int fd, const uint8_t *data, size_t size)
{
    uint64_t flen;

    if (size < 12 || memcmp(data, "SPRS", 4))
        return write(fd, data, size) == (ssize_t)size;
    flen = le(data + 4, 8);
    if (flen > (4ull << 30) || ftruncate(fd, (off_t)flen) < 0)
        return false;
    for (size_t at = 12; at + 6 <= size;) {
        uint64_t off = le(data + at, 4) * 4096;
        size_t len = (size_t)le(data + at + 4, 2);
        at += 6;
        len = len < size - at ? len : size - at;
        if (off + len <= flen && pwrite(fd, data + at, len, (off_t)off) != (ssize_t)len)
            return false;
        at += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[64];
    vd_node *n = NULL;
    int fd = memfd_create("fuzz-vhdx", 0);
    const int flags = VD_O_NO_LOCK | VD_O_NO_BACKING;

    if (fd < 0)
        return 0;
    if (fill(fd, data, size)) {
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        if (vd_open(&n, name, "vhdx", NULL, flags) == 0) {
            walk(n);
            fuzz_check(n);
            vd_close(n);
        }
        n = NULL;
        if (vd_open(&n, name, "vhdx", NULL, flags | VD_O_RDWR) == 0) {
            modify(n);
            vd_close(n);
        }
    }
    close(fd);
    return 0;
}
