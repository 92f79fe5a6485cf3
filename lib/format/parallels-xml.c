/* SPDX-License-Identifier: BSD-3-Clause */
/* Parallels disks through their DiskDescriptor.xml (QEMU's
 * docs/interop/prl-xml.txt describes it): Disk_Parameters/Disk_size in
 * sectors; StorageData/Storage elements with Start and End sectors and
 * Image elements (GUID, Type Plain or Compressed, File); Snapshots/Shot
 * elements (GUID, ParentGUID) whose leaf is the top snapshot, the image
 * guests read and write.  Parsed with libxml2 (no network, no entity
 * substitution, at most PRL_XML_MAX_BYTES).  Opened with -f parallels on
 * the descriptor file, where qemu-img 7.2 (which does not read
 * descriptors) says the image is not in Parallels format. */
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "format/parallels-xml.h"
#include "util/checked.h"

#define PRL_SECTOR 512u
#define GUID_MAX   64u
#define MAX_SHOTS  256u

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

/* The first child element of p named name, or NULL. */
static xmlNode *child(const xmlNode *p, const char *name)
{
    for (xmlNode *c = p ? p->children : NULL; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
            return c;
    return NULL;
}

/* The text of child name of p into out (room bytes), trimmed; -EINVAL
 * when missing or too long. */
static int child_text(const xmlNode *p, const char *name, char *out, size_t room)
{
    xmlNode *c = child(p, name);
    xmlChar *t = c ? xmlNodeGetContent(c) : NULL;
    const char *s = (const char *)t;
    size_t l;

    if (!t)
        return vd_error(EINVAL, "parallels: DiskDescriptor.xml has no <%s>", name);
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')
        s++;
    l = strlen(s);
    while (l && (s[l - 1] == ' ' || s[l - 1] == '\n' || s[l - 1] == '\t' || s[l - 1] == '\r'))
        l--;
    if (l >= room) {
        xmlFree(t);
        return vd_error(EINVAL, "parallels: <%s> in DiskDescriptor.xml is too long", name);
    }
    memcpy(out, s, l);
    out[l] = 0;
    xmlFree(t);
    return 0;
}

/* A decimal number child of p. */
static int child_u64(const xmlNode *p, const char *name, uint64_t *out)
{
    char buf[32], *end;
    int r = child_text(p, name, buf, sizeof(buf));

    if (r < 0)
        return r;
    errno = 0;
    *out = strtoull(buf, &end, 10);
    if (!buf[0] || *end || errno || buf[0] == '-')
        return vd_error(EINVAL, "parallels: <%s> in DiskDescriptor.xml is not a number: '%s'",
                        name, buf);
    return 0;
}

/* The GUID of the top snapshot: the shot no other shot names as parent. */
static int top_guid(const xmlNode *root, char *out)
{
    char guids[MAX_SHOTS][GUID_MAX], parents[MAX_SHOTS][GUID_MAX];
    uint32_t n = 0, tops = 0;
    xmlNode *shots = child(root, "Snapshots");
    int r;

    for (xmlNode *c = shots ? shots->children : NULL; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "Shot"))
            continue;
        if (n == MAX_SHOTS)
            return vd_error(EINVAL, "parallels: more than %u snapshots in DiskDescriptor.xml",
                            MAX_SHOTS);
        if ((r = child_text(c, "GUID", guids[n], GUID_MAX)) < 0 ||
            (r = child_text(c, "ParentGUID", parents[n], GUID_MAX)) < 0)
            return r;
        n++;
    }
    out[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        bool is_parent = false;
        for (uint32_t k = 0; k < n && !is_parent; k++)
            is_parent = !strcmp(parents[k], guids[i]);
        if (!is_parent) {
            tops++;
            strcpy(out, guids[i]);
        }
    }
    if (n && tops != 1)
        return vd_error(EINVAL, "parallels: DiskDescriptor.xml has %" PRIu32 " top snapshots, "
                        "not one", tops);
    return 0;
}

/* Is the image file name one that stays next to the descriptor? */
static bool file_name_ok(const char *f)
{
    const char *p = f;

    if (!*f || *f == '/')
        return false;
    while (p) {
        if (!strncmp(p, "..", 2) && (p[2] == '/' || !p[2]))
            return false;
        p = strchr(p, '/');
        p = p ? p + 1 : NULL;
    }
    return true;
}

/* The image of storage element c whose GUID is top (any, when top is
 * empty and there is one). */
static int storage_image(const xmlNode *c, const char *top, struct prl_xml_storage *st)
{
    char guid[GUID_MAX], type[32], file[4096];
    uint32_t found = 0;
    int r;

    for (xmlNode *im = c->children; im; im = im->next) {
        if (im->type != XML_ELEMENT_NODE || strcmp((const char *)im->name, "Image"))
            continue;
        if ((r = child_text(im, "GUID", guid, sizeof(guid))) < 0)
            return r;
        if (*top && strcmp(guid, top))
            continue;
        if (found++)
            return vd_error(EINVAL, "parallels: several images of one snapshot in a storage");
        if ((r = child_text(im, "Type", type, sizeof(type))) < 0 ||
            (r = child_text(im, "File", file, sizeof(file))) < 0)
            return r;
        if (strcmp(type, "Plain") && strcmp(type, "Compressed"))
            return vd_error(EINVAL, "parallels: image type '%s' is neither Plain nor "
                            "Compressed", type);
        if (!file_name_ok(file))
            return vd_error(EPERM, "parallels: image file '%s' is not a name relative to the "
                            "descriptor's directory", file);
        st->plain = !strcmp(type, "Plain");
        if (!(st->file = strdup(file)))
            return vd_error(ENOMEM, "out of memory");
    }
    if (!found)
        return vd_error(EINVAL, "parallels: a storage has no image of the top snapshot");
    return 0;
}

/* The storages, checked to cover [0, sectors) in order. */
static int parse_storages(const xmlNode *root, const char *top, struct prl_xml *x)
{
    xmlNode *sd = child(root, "StorageData");
    uint64_t next = 0;
    int r;

    for (xmlNode *c = sd ? sd->children : NULL; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "Storage"))
            continue;
        if (x->n == PRL_XML_MAX_STORAGES)
            return vd_error(EINVAL, "parallels: more than %u storages in DiskDescriptor.xml",
                            PRL_XML_MAX_STORAGES);
        struct prl_xml_storage *st = &x->st[x->n];
        if ((r = child_u64(c, "Start", &st->start)) < 0 ||
            (r = child_u64(c, "End", &st->end)) < 0)
            return r;
        x->n++;
        if (st->start != next || st->end <= st->start || st->end > x->sectors)
            return vd_error(EINVAL, "parallels: storage %" PRIu64 "..%" PRIu64 " does not "
                            "continue the disk at sector %" PRIu64 " within its %" PRIu64
                            " sectors", st->start, st->end, next, x->sectors);
        if ((r = storage_image(c, top, st)) < 0)
            return r;
        next = st->end;
    }
    if (next != x->sectors)
        return vd_error(EINVAL, "parallels: the storages of DiskDescriptor.xml end at sector %"
                        PRIu64 ", not at Disk_size %" PRIu64, next, x->sectors);
    return 0;
}

/* Parse a document into x. */
static int parse_doc(xmlDoc *doc, struct prl_xml *x)
{
    xmlNode *root = xmlDocGetRootElement(doc);
    char top[GUID_MAX];
    int r;

    if (!root || strcmp((const char *)root->name, "Parallels_disk_image"))
        return vd_error(EINVAL, "parallels: not a DiskDescriptor.xml (no "
                        "<Parallels_disk_image>)");
    if ((r = child_u64(child(root, "Disk_Parameters"), "Disk_size", &x->sectors)) < 0)
        return r;
    if (!x->sectors || x->sectors > INT64_MAX / PRL_SECTOR)
        return vd_error(EINVAL, "parallels: Disk_size %" PRIu64 " is not a disk size",
                        x->sectors);
    if ((r = top_guid(root, top)) < 0)
        return r;
    return parse_storages(root, top, x);
}

/* See parallels-xml.h. */
int prl_xml_parse(const char *text, size_t len, struct prl_xml *out)
{
    xmlDoc *doc;
    int r;

    memset(out, 0, sizeof(*out));
    if (len > PRL_XML_MAX_BYTES)
        return vd_error(EFBIG, "parallels: DiskDescriptor.xml is larger than %u bytes",
                        PRL_XML_MAX_BYTES);
    doc = xmlReadMemory(text, (int)len, "DiskDescriptor.xml", NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return vd_error(EINVAL, "parallels: DiskDescriptor.xml is not well-formed XML");
    r = parse_doc(doc, out);
    xmlFreeDoc(doc);
    return r;
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
