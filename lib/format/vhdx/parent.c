/* SPDX-License-Identifier: BSD-3-Clause */
/* vhdx: the parent locator of a differencing image ([MS-VHDX] 2.6.2.6):
 * a locator type GUID (only VHDX parents are defined), then key/value
 * pairs of UTF-16LE strings.  The parent is the first of relative_path
 * (against the image's directory), absolute_win32_path and volume_path,
 * backslashes turned into slashes, that names an existing file; QEMU 7.2
 * opens no differencing image at all. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/vhdx/vhdx.h"
#include "util/utf8.h"

/* Byte offsets of the locator header and of each 12-byte entry. */
enum {
    PL_TYPE = 0,
    PL_COUNT = 18,
    PL_ENTRIES = 20,
    PLE_KEY_OFF = 0,
    PLE_VALUE_OFF = 4,
    PLE_KEY_LEN = 8,
    PLE_VALUE_LEN = 10,
    PLE_SIZE = 12,
};

/* The keys naming the parent's file, in the order they are tried. */
static const char *const path_keys[] = { "relative_path", "absolute_win32_path",
                                         "volume_path" };
#define NPATHS 3

/* Decode len bytes of UTF-16LE at p into a new UTF-8 string; NULL (and
 * a message) when it is malformed or holds a NUL. */
static char *utf16_to_utf8(const uint8_t *p, uint32_t len)
{
    char *out = malloc((size_t)len * 2 + 1), *o = out;

    if (!out || len % 2) {
        free(out);
        vd_error(EINVAL, "vhdx: a parent locator string is not UTF-16");
        return NULL;
    }
    for (uint32_t i = 0; i < len; i += 2) {
        uint32_t cp = vhdx_le16(p + i);
        if (cp >= 0xd800 && cp < 0xdc00 && i + 3 < len &&
            vhdx_le16(p + i + 2) >= 0xdc00 && vhdx_le16(p + i + 2) < 0xe000) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (vhdx_le16(p + i + 2) - 0xdc00);
            i += 2;
        } else if (cp == 0 || (cp >= 0xd800 && cp < 0xe000)) {
            free(out);
            vd_error(EINVAL, "vhdx: a parent locator string is not valid UTF-16");
            return NULL;
        }
        o += vd_utf8_encode(cp, o);
    }
    *o = '\0';
    return out;
}

/* The string of len bytes at off inside the locator of size total. */
static char *locator_string(const uint8_t *buf, uint32_t total, uint32_t off, uint16_t len)
{
    if (len == 0 || !range_ok(off, len, total)) {
        vd_error(EINVAL, "vhdx: a parent locator entry lies outside the locator");
        return NULL;
    }
    return utf16_to_utf8(buf + off, len);
}

/* Read entry i: keep its value when its key is one of path_keys. */
static int take_entry(const uint8_t *buf, uint32_t len, uint32_t i, char *paths[NPATHS])
{
    const uint8_t *e = buf + PL_ENTRIES + (size_t)i * PLE_SIZE;
    char *key = locator_string(buf, len, vhdx_le32(e + PLE_KEY_OFF), vhdx_le16(e + PLE_KEY_LEN));
    char *value = NULL;
    int k;

    if (!key)
        return -EINVAL;
    for (k = 0; k < NPATHS && strcmp(key, path_keys[k]); k++)
        ;
    free(key);
    if (k == NPATHS)
        return 0;
    if (!(value = locator_string(buf, len, vhdx_le32(e + PLE_VALUE_OFF),
                                 vhdx_le16(e + PLE_VALUE_LEN))))
        return -EINVAL;
    if (paths[k]) {
        free(value);
        return vd_error(EINVAL, "vhdx: the parent locator has two %s entries", path_keys[k]);
    }
    paths[k] = value;
    return 0;
}

/* A Windows path as a host one: backslashes become slashes. */
static void to_host_path(char *p)
{
    for (; *p; p++)
        if (*p == '\\')
            *p = '/';
}

/* Set the backing file to the first path whose file exists, else to the
 * first path given (whose open then fails with its name). */
static int choose_parent(vd_node *n, char *paths[NPATHS])
{
    int first = -1, r;

    for (int k = 0; k < NPATHS; k++) {
        if (!paths[k])
            continue;
        to_host_path(paths[k]);
        if (first < 0)
            first = k;
        if ((r = vd_node_set_backing_name(n, paths[k], "vhdx")) < 0)
            return r;
        if (n->backing_full_name && access(n->backing_full_name, F_OK) == 0)
            return 0;
    }
    if (first < 0)
        return vd_error(EINVAL, "vhdx: the parent locator names no parent file");
    return vd_node_set_backing_name(n, paths[first], "vhdx");
}

/* See vhdx.h. */
int vhdx_parse_parent_locator(vd_node *n, const uint8_t *buf, uint32_t len)
{
    char *paths[NPATHS] = { NULL, NULL, NULL };
    uint16_t count;
    int r = 0;

    if (len < PL_ENTRIES)
        return vd_error(EINVAL, "vhdx: the parent locator is too short");
    if (memcmp(buf + PL_TYPE, vhdx_guid_parent_type_vhdx, 16))
        return vd_error(ENOTSUP, "vhdx: the parent locator is not of the VHDX type");
    count = vhdx_le16(buf + PL_COUNT);
    if (!range_ok(PL_ENTRIES, (uint64_t)count * PLE_SIZE, len))
        return vd_error(EINVAL, "vhdx: the parent locator's %u entries do not fit in it",
                        count);
    for (uint32_t i = 0; i < count && r >= 0; i++)
        r = take_entry(buf, len, i, paths);
    if (r >= 0)
        r = choose_parent(n, paths);
    for (int k = 0; k < NPATHS; k++)
        free(paths[k]);
    return r;
}
