/* SPDX-License-Identifier: BSD-3-Clause */
/* Parallels disks through their DiskDescriptor.xml (QEMU's
 * docs/interop/prl-xml.txt describes it): Disk_Parameters/Disk_size in
 * sectors; StorageData/Storage elements with Start and End sectors and
 * Image elements (GUID, Type Plain or Compressed, File); Snapshots/Shot
 * elements (GUID, ParentGUID) whose leaf is the top snapshot, the image
 * guests read and write.  Parsed with libxml2 (at most PRL_XML_MAX_BYTES)
 * by parallels-xml-parse.c, in the module vdisk-xml.so loaded on the first
 * descriptor.  Opened with -f parallels on the descriptor file, where
 * qemu-img 7.2 (which does not read descriptors) says the image is not in
 * Parallels format. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/module.h"
#include "format/parallels-xml.h"
#include "util/checked.h"

#define PRL_SECTOR 512u

/* ---- parsing ---- */

/* Does the file start like a disk descriptor? */
bool prl_xml_detect(const uint8_t *buf, size_t len)
{
    static const char decl[] = "<?xml", root[] = "<Parallels_disk_image";

    while (len && (*buf == ' ' || *buf == '\n' || *buf == '\r' || *buf == '\t'))
        buf++, len--;
    return (len >= 5 && !memcmp(buf, decl, 5)) ||
           (len >= sizeof(root) - 1 && !memcmp(buf, root, sizeof(root) - 1));
}

/* The parser of the XML module (parallels-xml-parse.c), once loaded. */
static prl_xml_parser *parser;

/* See parallels-xml.h. */
void prl_xml_register_parser(prl_xml_parser *parse)
{
    __atomic_store_n(&parser, parse, __ATOMIC_RELEASE);
}

/* See parallels-xml.h: checks the size, loads the XML module on first
 * use and parses with it. */
int prl_xml_parse(const char *text, size_t len, struct prl_xml *out)
{
    prl_xml_parser *parse = __atomic_load_n(&parser, __ATOMIC_ACQUIRE);
    int r;

    memset(out, 0, sizeof(*out));
    if (len > PRL_XML_MAX_BYTES)
        return vd_error(EFBIG, "parallels: DiskDescriptor.xml is larger than %u bytes",
                        PRL_XML_MAX_BYTES);
    if (!parse) {
        if ((r = vd_module_require("xml")) < 0)
            return vd_error_prefix(r, "parallels: cannot parse DiskDescriptor.xml");
        if (!(parse = __atomic_load_n(&parser, __ATOMIC_ACQUIRE)))
            return vd_error(ELIBBAD, "parallels: the module vdisk-xml.so has no "
                            "DiskDescriptor.xml parser");
    }
    return parse(text, len, out);
}

/* ---- opening and I/O ---- */

/* Open the image of storage st, named relative to the descriptor. */
static int open_image(vd_node *n, struct prl_xml_storage *st)
{
    char *copy = strdup(n->file->filename), *path;
    int r;

    if (!copy || asprintf(&path, "%s/%s", dirname(copy), st->file) < 0) {
        free(copy);
        return vd_error(ENOMEM, "out of memory");
    }
    free(copy);
    r = vd_open_child(&st->child, n, path, st->plain ? "raw" : "parallels", NULL,
                      n->flags & (VD_O_RDWR | VD_O_FORCE_SHARE | VD_O_NO_LOCK));
    free(path);
    return r < 0 ? vd_error_prefix(r, "parallels: cannot open image '%s'", st->file) : 0;
}

/* See parallels-xml.h. */
int prl_xml_open(vd_node *n, struct prl_xml **out)
{
    int64_t len = vd_getlength(n->file);
    struct prl_xml *x = calloc(1, sizeof(*x));
    char *text;
    int r;

    *out = x;
    if (!x)
        return vd_error(ENOMEM, "out of memory");
    if (len < 0)
        return (int)len;
    if ((uint64_t)len > PRL_XML_MAX_BYTES)
        return vd_error(EFBIG, "parallels: DiskDescriptor.xml is larger than %u bytes",
                        PRL_XML_MAX_BYTES);
    if (!(text = malloc((size_t)len + 1)))
        return vd_error(ENOMEM, "out of memory");
    r = vd_pread(n->file, 0, (uint64_t)len, text, 0);
    if (r >= 0)
        r = prl_xml_parse(text, (size_t)len, x);
    free(text);
    for (uint32_t i = 0; r >= 0 && i < x->n; i++)
        r = open_image(n, &x->st[i]);
    return r < 0 ? r : 0;
}

/* See parallels-xml.h. */
void prl_xml_free(struct prl_xml *x)
{
    if (!x)
        return;
    for (uint32_t i = 0; i < x->n; i++) {
        vd_close(x->st[i].child);
        free(x->st[i].file);
    }
    free(x);
}

/* The storage holding disk byte off. */
static struct prl_xml_storage *storage_at(struct prl_xml *x, uint64_t off)
{
    for (uint32_t i = 0; i < x->n; i++)
        if (off < x->st[i].end * PRL_SECTOR)
            return &x->st[i];
    return NULL;
}

/* One piece of a request inside a storage: read or write, zeroes read
 * past the end of its image (writes there are errors). */
static int piece(struct prl_xml *x, uint64_t off, uint64_t len, uint8_t *rbuf,
                 const uint8_t *wbuf, uint64_t *done)
{
    struct prl_xml_storage *st = storage_at(x, off);
    uint64_t in, l, have;
    int64_t clen;

    if (!st)
        return vd_error(EIO, "parallels: request past the disk");
    in = off - st->start * PRL_SECTOR;
    l = VD_MIN(len, st->end * PRL_SECTOR - off);
    if ((clen = vd_getlength(st->child)) < 0)
        return (int)clen;
    have = in >= (uint64_t)clen ? 0 : VD_MIN(l, (uint64_t)clen - in);
    *done = l;
    if (wbuf) {
        if (have < l)
            return vd_error(ENOSPC, "parallels: image '%s' is shorter than its storage",
                            st->file);
        return vd_pwrite(st->child, in, l, wbuf, 0);
    }
    memset(rbuf + have, 0, l - have);
    return have ? vd_pread(st->child, in, have, rbuf, 0) : 0;
}

/* See parallels-xml.h. */
int prl_xml_pread(struct prl_xml *x, uint64_t off, uint64_t len, uint8_t *buf)
{
    while (len) {
        uint64_t l;
        int r = piece(x, off, len, buf, NULL, &l);
        if (r < 0)
            return r;
        buf += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* See parallels-xml.h. */
int prl_xml_pwrite(struct prl_xml *x, uint64_t off, uint64_t len, const uint8_t *buf)
{
    while (len) {
        uint64_t l;
        int r = piece(x, off, len, NULL, buf, &l);
        if (r < 0)
            return r;
        buf += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* See parallels-xml.h. */
int prl_xml_flush(struct prl_xml *x)
{
    for (uint32_t i = 0; i < x->n; i++) {
        int r = vd_flush(x->st[i].child);
        if (r < 0)
            return r;
    }
    return 0;
}

/* See parallels-xml.h: plain images map to their file at the storage's
 * offset; expanding ones are data. */
int prl_xml_block_status(struct prl_xml *x, uint64_t off, uint64_t len, uint64_t *pnum,
                         uint64_t *map, vd_node **file)
{
    struct prl_xml_storage *st = storage_at(x, off);

    if (!st)
        return vd_error(EIO, "parallels: request past the disk");
    *pnum = VD_MIN(len, st->end * PRL_SECTOR - off);
    if (!st->plain)
        return VD_BS_DATA | VD_BS_ALLOCATED;
    *map = off - st->start * PRL_SECTOR;
    *file = st->child->file ? st->child->file : st->child;
    return VD_BS_DATA | VD_BS_ALLOCATED | VD_BS_OFFSET_VALID;
}
