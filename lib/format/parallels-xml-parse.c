/* SPDX-License-Identifier: BSD-3-Clause */
/* The DiskDescriptor.xml parser of parallels disks (the document's layout
 * is described in parallels-xml.c), over libxml2: no network, no entity
 * substitution.  Built into the module vdisk-xml.so, so that libvdisk
 * itself maps neither libxml2 nor what it pulls in (ICU, libstdc++); the
 * module registers the parser with parallels-xml.c when it is loaded. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "format/parallels-xml.h"

#define PRL_SECTOR 512u
#define GUID_MAX   64u
#define MAX_SHOTS  256u

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

/* Parse descriptor text (at most PRL_XML_MAX_BYTES, out zeroed) into out. */
static int parse(const char *text, size_t len, struct prl_xml *out)
{
    xmlDoc *doc = xmlReadMemory(text, (int)len, "DiskDescriptor.xml", NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    int r;

    if (!doc)
        return vd_error(EINVAL, "parallels: DiskDescriptor.xml is not well-formed XML");
    r = parse_doc(doc, out);
    xmlFreeDoc(doc);
    return r;
}

/* Offer the parser to parallels-xml.c when the module is loaded. */
__attribute__((constructor)) static void register_parser(void)
{
    prl_xml_register_parser(parse);
}
