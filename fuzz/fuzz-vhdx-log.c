/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the vhdx log (lib/format/vhdx/log.c): the input is the log region
 * of a vhdx image that vdisk creates once (16 MiB, 1 MiB blocks, 1 MiB
 * log).  The image gets a log GUID in both headers, every log sector that
 * starts with "loge" gets that GUID and the CRC-32C its claimed length
 * calls for (so that mutations reach the descriptors, the sequence logic
 * and the replay rather than stopping at a checksum); then the image is
 * opened read-only (the scan), read-write (the replay) and written (a new
 * entry journalled).  fuzz-vhdx covers the rest of the driver. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vdisk/driver.h"

#define SECTOR 4096u
#define MIB (1u << 20)
#define LOG_OFF MIB
#define LOG_LEN MIB
#define HDR1 (64u * 1024)
#define HDR2 (128u * 1024)

static const uint8_t guid[16] = { 0x6c, 0x6f, 0x67, 0x21, 1, 2, 3, 4,
                                  5, 6, 7, 8, 9, 10, 11, 12 };
static uint8_t *tmpl;
static size_t tmpl_len;

static uint32_t crc_table[256];

/* CRC-32C (reflected 0x82f63b78), continuing crc. */
static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
    if (!crc_table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
            crc_table[i] = c;
        }
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

/* A memfd holding len bytes of buf; its /proc name in name. */
static int memfd_with(const uint8_t *buf, size_t len, char *name, size_t nlen)
{
    int fd = memfd_create("fuzz-vhdx-log", 0);

    if (fd < 0)
        return -1;
    if (len && write(fd, buf, len) != (ssize_t)len) {
        close(fd);
        return -1;
    }
    snprintf(name, nlen, "/proc/self/fd/%d", fd);
    return fd;
}

/* Create the template image once, with vdisk itself. */
static bool make_template(void)
{
    char name[64];
    vd_opts *o = vd_opts_new();
    int fd = memfd_with(NULL, 0, name, sizeof(name));
    bool ok = fd >= 0 && o && vd_opts_set(o, "size", "16M") >= 0 &&
              vd_opts_set(o, "block_size", "1M") >= 0 && vd_create("vhdx", name, o) >= 0;
    off_t end;

    vd_opts_free(o);
    if (!ok)
        return false;
    end = lseek(fd, 0, SEEK_END);
    if (end < (off_t)(LOG_OFF + LOG_LEN) || !(tmpl = malloc((size_t)end)) ||
        pread(fd, tmpl, (size_t)end, 0) != end)
        return false;
    tmpl_len = (size_t)end;
    close(fd);
    return true;
}

/* Give a header the log GUID and its checksum back. */
static void set_header_guid(uint8_t *h)
{
    memcpy(h + 48, guid, 16);
    put_le32(h + 4, 0);
    put_le32(h + 4, crc32c(0, h, SECTOR));
}

/* Checksum of the entry at log sector s over len bytes, wrapping. */
static uint32_t entry_crc(const uint8_t *log, uint32_t s, uint32_t len)
{
    static const uint8_t zero[4];
    uint32_t crc = crc32c(0, log + s * SECTOR, 4);

    crc = crc32c(crc, zero, 4);
    crc = crc32c(crc, log + s * SECTOR + 8, SECTOR - 8);
    for (uint32_t i = 1; i < len / SECTOR; i++)
        crc = crc32c(crc, log + ((s + i) % (LOG_LEN / SECTOR)) * SECTOR, SECTOR);
    return crc;
}

/* Give every entry header in the log the GUID and a checksum that holds. */
static void fix_entries(uint8_t *log)
{
    for (uint32_t s = 0; s < LOG_LEN / SECTOR; s++) {
        uint8_t *e = log + s * SECTOR;
        uint32_t len = le32(e + 8);

        if (memcmp(e, "loge", 4))
            continue;
        memcpy(e + 32, guid, 16);
        if (len && len % SECTOR == 0 && len <= LOG_LEN)
            put_le32(e + 4, entry_crc(log, s, len));
    }
}

/* Open, replay, journal a write. */
static void exercise(const char *name)
{
    static uint8_t buf[8192];
    const int flags = VD_O_NO_LOCK | VD_O_NO_BACKING;
    vd_node *n = NULL;

    if (vd_open(&n, name, "vhdx", NULL, flags) == 0)
        vd_close(n);
    n = NULL;
    if (vd_open(&n, name, "vhdx", NULL, flags | VD_O_RDWR) == 0) {
        memset(buf, 0x5a, sizeof(buf));
        vd_pwrite(n, 3 * MIB - 4096, sizeof(buf), buf, 0);
        vd_flush(n);
        vd_pread(n, 0, sizeof(buf), buf, 0);
        vd_close(n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready, failed;
    char name[64];
    uint8_t *img;
    int fd;

    if (!ready && !failed)
        failed = !(ready = make_template());
    if (failed || !(img = malloc(tmpl_len)))
        return 0;
    memcpy(img, tmpl, tmpl_len);
    set_header_guid(img + HDR1);
    set_header_guid(img + HDR2);
    memcpy(img + LOG_OFF, data, size < LOG_LEN ? size : LOG_LEN);
    fix_entries(img + LOG_OFF);
    fd = memfd_with(img, tmpl_len, name, sizeof(name));
    free(img);
    if (fd >= 0) {
        exercise(name);
        close(fd);
    }
    return 0;
}
