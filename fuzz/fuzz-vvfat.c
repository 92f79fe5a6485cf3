/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz vvfat's rw write-back (lib/format/vvfat/commit.c, parse.c): a small
 * synthetic directory (a file, a subdirectory with a file, an empty file)
 * is opened with rw as a 1.44 MB FAT12 floppy (first input byte even) or
 * a FAT32 hard disk (odd); the rest of the input is a list of sector
 * writes (2 bytes little-endian sector number modulo 2880, then up to 512
 * bytes laid over that sector), then a flush commits them to the
 * directory: the guest's FAT and directories parsed and mapped to file
 * changes.  The directory is made afresh for every input.  With bit 1
 * of the first byte set, a journal file (2 bytes little-endian length,
 * then its bytes) is planted in the directory first, beside an object
 * under a commit's temporary name, as a killed commit leaves them: the
 * open recovers it (journal.c).  Nothing is printed (the driver's
 * warnings go to a closed stderr). */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vdisk/driver.h"

#define SECTOR 512u
#define SECTORS 2880u

static char base[] = "/tmp/fuzz-vvfat-XXXXXX";

/* nftw callback: remove one entry. */
static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st; (void)flag; (void)f;
    remove(p);
    return 0;
}

/* Write a file of len bytes of byte c. */
static void put_file(const char *path, size_t len, int c)
{
    FILE *f = fopen(path, "wb");

    if (!f)
        return;
    for (size_t i = 0; i < len; i++)
        fputc(c, f);
    fclose(f);
}

/* The directory the disk is made from. */
static void make_dir(char *dir, size_t room)
{
    char p[512];

    snprintf(dir, room, "%s/d", base);
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    mkdir(dir, 0755);
    snprintf(p, sizeof(p), "%s/hello.txt", dir);
    put_file(p, 100, 'h');
    snprintf(p, sizeof(p), "%s/Sub Dir", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/Sub Dir/big.bin", dir);
    put_file(p, 20000, 'b');
    snprintf(p, sizeof(p), "%s/empty", dir);
    put_file(p, 0, 0);
}

/* What a killed commit leaves: the journal (its bytes given) and an
 * object moved aside. */
static void plant_journal(const char *dir, const uint8_t *j, size_t len)
{
    char p[512];
    FILE *f;

    snprintf(p, sizeof(p), "%s/.vdisk-vvfat-mv-1-1", dir);
    put_file(p, 10, 'm');
    snprintf(p, sizeof(p), "%s/.vdisk-vvfat-journal", dir);
    if ((f = fopen(p, "wb"))) {
        fwrite(j, 1, len, f);
        fclose(f);
    }
}

/* Remove the scratch directory at exit. */
static void cleanup(void)
{
    nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    if (!mkdtemp(base))
        abort();
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char dir[256], name[300];
    uint8_t sec[SECTOR];
    vd_node *n = NULL;

    if (size < 1)
        return 0;
    make_dir(dir, sizeof(dir));
    snprintf(name, sizeof(name), "fat:%s:%s", data[0] & 1 ? "rw:32" : "floppy:rw:12", dir);
    if (data[0] & 2 && size >= 3) {
        size_t l = (size_t)(data[1] | data[2] << 8);
        l = l < size - 3 ? l : size - 3;
        plant_journal(dir, data + 3, l);
        data += 2 + l;
        size -= 2 + l;
    }
    data++;
    size--;
    if (vd_open(&n, name, "vvfat", NULL, VD_O_RDWR | VD_O_NO_LOCK) < 0)
        return 0;
    while (size >= 2) {
        uint32_t s = (uint32_t)(data[0] | data[1] << 8) % SECTORS;
        size_t l = size - 2 < SECTOR ? size - 2 : SECTOR;
        if (vd_pread(n, (uint64_t)s * SECTOR, SECTOR, sec, 0) < 0)
            break;
        memcpy(sec, data + 2, l);
        vd_pwrite(n, (uint64_t)s * SECTOR, SECTOR, sec, 0);
        data += 2 + l;
        size -= 2 + l;
    }
    vd_flush(n);
    vd_close(n);
    return 0;
}
