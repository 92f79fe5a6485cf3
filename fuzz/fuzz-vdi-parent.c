/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz the differencing-vdi parent lookup (lib/format/vdi-parent.c): the
 * input is cut into up to four 512-byte vdi headers, written as the .vdi
 * files of a private directory; the first is the child whose parent is
 * looked up among them (UUID matching, modification UUID, loops, sizes).
 * Nothing is printed per input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "format/vdi-parent.h"

#define NFILES 4

static char dir[64];

/* Remove the private directory at exit. */
static void cleanup(void)
{
    char path[96];

    for (int i = 0; i < NFILES; i++) {
        snprintf(path, sizeof(path), "%s/%c.vdi", dir, 'a' + i);
        unlink(path);
    }
    rmdir(dir);
}

/* The private directory, made once per process. */
static const char *workdir(void)
{
    if (!dir[0]) {
        strcpy(dir, "/tmp/fuzz-vdi-parent-XXXXXX");
        if (!mkdtemp(dir))
            abort();
        atexit(cleanup);
    }
    return dir;
}

/* Write file i of the directory from bytes [off, off+512) of the input
 * (zero-padded); remove it when the input ends before off. */
static void put(int i, const uint8_t *data, size_t size, size_t off)
{
    char path[96];
    uint8_t h[VDI_PARENT_HDR_BYTES] = { 0 };
    FILE *f;

    snprintf(path, sizeof(path), "%s/%c.vdi", workdir(), 'a' + i);
    if (off >= size && i > 0) {
        unlink(path);
        return;
    }
    if (off < size)
        memcpy(h, data + off, size - off < sizeof(h) ? size - off : sizeof(h));
    if ((f = fopen(path, "wb"))) {
        fwrite(h, 1, sizeof(h), f);
        fclose(f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t child[VDI_PARENT_HDR_BYTES] = { 0 };
    char path[96], *name = NULL;
    uint64_t disk = 0;

    for (int i = 0; i < NFILES; i++)
        put(i, data, size, (size_t)i * VDI_PARENT_HDR_BYTES);
    memcpy(child, data, size < sizeof(child) ? size : sizeof(child));
    memcpy(&disk, child + 0x170, sizeof(disk));     /* the child's disk size */
    snprintf(path, sizeof(path), "%s/a.vdi", workdir());
    if (vdi_find_parent(path, child, disk, &name) >= 0)
        free(name);
    vd_error_clear();
    return 0;
}
