/* SPDX-License-Identifier: BSD-3-Clause */
/* Pool and volume XML, read with libxml2 and written in the layout libvirt
 * 9.0 writes (two-space indent, single-quoted attributes, the elements in
 * its order).  Every value from the XML is checked before use. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "pool.h"
#include "util/buf.h"

#define XML_MAX_FILE (10 * 1024 * 1024)

/* Pool types this program knows (libvirt's list; only some have backends). */
static const char *const pool_types[] = {
    "dir", "fs", "netfs", "logical", "disk", "iscsi", "iscsi-direct", "scsi",
    "mpath", "rbd", "sheepdog", "gluster", "zfs", "vstorage", NULL,
};

/* Partition types of disk pools' volumes, in libvirt's order. */
static const char *const part_formats[] = {
    "none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm", "linux-raid",
    "extended", NULL,
};

/* Volume formats of file-based pools, in libvirt's order. */
static const char *const vol_formats[] = {
    "none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi",
    "fat", "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk", NULL,
};

/* Is s one of list? */
static bool in_list(const char *const *list, const char *s)
{
    for (; *list; list++)
        if (!strcmp(*list, s))
            return true;
    return false;
}

bool vol_format_known(const char *fmt)
{
    return in_list(vol_formats, fmt);
}

bool vol_format_any(const char *fmt)
{
    return in_list(vol_formats, fmt) || in_list(part_formats, fmt);
}

char *pool_read_file(const char *path, size_t *len)
{
    bool in = pool_stream_file && !strcmp(path, pool_stream_file);
    FILE *f = in ? fdopen(dup(0), "r") : fopen(path, "re");
    char *buf;
    size_t n;

    if (!f) {
        pool_set_error("Failed to open file '%s': %s", path, strerror(errno));
        return NULL;
    }
    if (in)
        pool_stream_file = NULL;   /* stdin is read once */
    buf = malloc(XML_MAX_FILE + 1);
    if (!buf)
        pool_oom();
    n = fread(buf, 1, XML_MAX_FILE + 1, f);
    fclose(f);
    if (n > XML_MAX_FILE) {
        free(buf);
        pool_set_error("failed to read '%s': file too large", path);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* libxml2's first error, kept as libvirt words a parse failure: the
 * message, then the line of input the parser stopped on and a caret under
 * the place ("(null)" when that line is empty, as libvirt prints it). */
static char parse_msg[1024];

/* The input line around the parser's position and the caret line. */
static void error_context(xmlParserCtxtPtr ctxt, char *out, size_t size)
{
    const xmlChar *base, *cur, *p;
    size_t n = 0, col;

    out[0] = 0;
    if (!ctxt || !ctxt->input || !ctxt->input->cur || !ctxt->input->base)
        return;
    base = ctxt->input->base;
    cur = p = ctxt->input->cur;
    while (p > base && (*p == '\n' || *p == '\r'))
        p--;
    while (p > base && *p != '\n' && *p != '\r')
        p--;
    if (*p == '\n' || *p == '\r')
        p++;
    col = (size_t)(cur - p);
    for (; *p && *p != '\n' && *p != '\r' && n + 1 < size / 2; p++)
        out[n++] = (char)*p;
    if (n == 0) {
        snprintf(out, size, "(null)\n^");
        return;
    }
    out[n++] = '\n';
    for (size_t i = 0; i < col && n + 2 < size && out[i] != '\n'; i++)
        out[n++] = '-';
    out[n++] = '^';
    out[n] = 0;
}

/* Structured error handler: keep the first error only. */
static void on_xml_error(void *ctx, xmlErrorPtr e)
{
    char context[512];

    if (parse_msg[0] || !e || !e->message)
        return;
    error_context(e->domain == XML_FROM_PARSER ? (xmlParserCtxtPtr)e->ctxt : NULL,
                  context, sizeof(context));
    snprintf(parse_msg, sizeof(parse_msg), "%d: %s%s", e->line, e->message,
             context[0] ? context : "(null)\n^");
}

/* Parse text into a document whose root must be root; NULL (error set). */
static xmlDocPtr parse_doc(const char *xml, size_t len, const char *root,
                           const char *what)
{
    xmlDocPtr doc;
    xmlNodePtr r;

    if (len > XML_MAX_FILE || len > INT32_MAX) {
        pool_set_error("XML error: document too large");
        return NULL;
    }
    if (len == 0) {
        pool_set_error("(%s):1: Document is empty\n(null)\n^", what);
        return NULL;
    }
    parse_msg[0] = 0;
    xmlSetStructuredErrorFunc(NULL, on_xml_error);
    doc = xmlReadMemory(xml, (int)len, what, NULL,
                        XML_PARSE_NONET | XML_PARSE_NOWARNING | XML_PARSE_NOERROR);
    xmlSetStructuredErrorFunc(NULL, NULL);
    if (!doc) {
        pool_set_error("(%s):%s", what, parse_msg[0] ? parse_msg : "0: empty document\n(null)\n^");
        return NULL;
    }
    r = xmlDocGetRootElement(doc);
    if (!r || strcmp((const char *)r->name, root)) {
        pool_set_error("XML error: expecting root element of '%s', not '%s'", root,
                       r ? (const char *)r->name : "");
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}

/* The first element child of n called name, or NULL. */
static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    if (!n)
        return NULL;
    for (xmlNodePtr c = n->children; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
            return c;
    return NULL;
}

/* The text of element n (malloc'd, NULL if n is NULL). */
static char *text(xmlNodePtr n)
{
    xmlChar *t;
    char *s;

    if (!n)
        return NULL;
    t = xmlNodeGetContent(n);
    s = xstrdup(t ? (const char *)t : "");
    xmlFree(t);
    return s;
}

/* Attribute name of n (malloc'd) or NULL. */
static char *attr(xmlNodePtr n, const char *name)
{
    xmlChar *a;
    char *s;

    if (!n || !(a = xmlGetProp(n, (const xmlChar *)name)))
        return NULL;
    s = xstrdup((const char *)a);
    xmlFree(a);
    return s;
}

int pool_uuid_parse(const char *s, char out[37])
{
    int nd = 0;
    char hex[33];

    for (; *s && nd < 33; s++) {
        if (*s == '-' || *s == ' ')
            continue;
        if (!isxdigit((unsigned char)*s))
            return -1;
        hex[nd++] = (char)tolower((unsigned char)*s);
    }
    if (nd != 32 || *s)
        return -1;
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
             hex + 16, hex + 20);
    return 0;
}

/* A number from the text of element n, base 8 or 10; -1 when invalid. */
static int parse_long(xmlNodePtr n, int base, long *out)
{
    char *s = text(n), *end;
    long v;

    errno = 0;
    v = strtol(s, &end, base);
    if (errno || end == s || *end) {
        free(s);
        return -1;
    }
    free(s);
    *out = v;
    return 0;
}

/* <permissions>: mode (octal, 0..0777), owner, group (-1 allowed). */
static int parse_perms(xmlNodePtr p, struct pool_perms *pm, const char *what)
{
    xmlNodePtr m = child(p, "mode"), o = child(p, "owner"), g = child(p, "group");

    pm->mode = pm->owner = pm->group = -1;
    if (!p)
        return 0;
    if (m && (parse_long(m, 8, &pm->mode) < 0 || pm->mode < 0 || pm->mode > 07777)) {
        pool_set_error("XML error: malformed octal mode");
        return -1;
    }
    if ((o && (parse_long(o, 10, &pm->owner) < 0 || pm->owner < -1 || pm->owner > UINT32_MAX)) ||
        (g && (parse_long(g, 10, &pm->group) < 0 || pm->group < -1 || pm->group > UINT32_MAX))) {
        pool_set_error("XML error: malformed %s element", o && pm->owner == -1 ? "owner" : "group");
        return -1;
    }
    pm->label = text(child(p, "label"));
    (void)what;
    return 0;
}

/* Drop trailing slashes and doubled slashes, as libvirt cleans paths. */
static void clean_path(char *p)
{
    char *w = p;

    for (char *r = p; *r; r++)
        if (!(*r == '/' && r[1] == '/'))
            *w++ = *r;
    *w = 0;
    while (w - p > 1 && w[-1] == '/')
        *--w = 0;
}

/* <source> of a pool. */
/* An unsigned number attribute; -1 if absent or malformed. */
static int attr_u64(xmlNodePtr n, const char *name, uint64_t *out)
{
    char *s = attr(n, name), *end;
    int r = -1;

    if (s && s[0] >= '0' && s[0] <= '9') {
        errno = 0;
        *out = strtoull(s, &end, 10);
        r = errno || *end ? -1 : 0;
    }
    free(s);
    return r;
}

/* The <freeExtent start end/> children of a device (a live disk pool's
 * state); malformed or inverted ones are left out. */
static void parse_free_extents(xmlNodePtr dev, struct pool_def *d)
{
    for (xmlNodePtr c = dev ? dev->children : NULL; c; c = c->next) {
        uint64_t s, e;
        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "freeExtent") ||
            attr_u64(c, "start", &s) < 0 || attr_u64(c, "end", &e) < 0 || e < s ||
            d->n_free_ext >= 4096)
            continue;
        d->free_ext = realloc(d->free_ext, (d->n_free_ext + 1) * sizeof(*d->free_ext));
        if (!d->free_ext)
            pool_oom();
        d->free_ext[d->n_free_ext].start = s;
        d->free_ext[d->n_free_ext].end = e;
        d->n_free_ext++;
    }
}

/* Every <device path='...'/> of a pool source. */
static void parse_devices(xmlNodePtr s, struct pool_def *d)
{
    for (xmlNodePtr c = s ? s->children : NULL; c; c = c->next) {
        char *p;
        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "device") ||
            !(p = attr(c, "path")))
            continue;
        d->src_devs = realloc(d->src_devs, (d->n_src_devs + 1) * sizeof(*d->src_devs));
        if (!d->src_devs)
            pool_oom();
        d->src_devs[d->n_src_devs++] = p;
    }
    if (d->n_src_devs)
        d->src_device = xstrdup(d->src_devs[0]);
    parse_free_extents(child(s, "device"), d);
}

/* The defaults libvirt fills in: a logical pool's source name is the
 * pool's name and its format lvm2; a disk pool's format is unknown. */
static void source_defaults(struct pool_def *d)
{
    if (!strcmp(d->type, "logical")) {
        if (!d->src_name)
            d->src_name = xstrdup(d->name);
        if (!d->src_format)
            d->src_format = xstrdup("lvm2");
    } else if (!strcmp(d->type, "disk") && !d->src_format) {
        d->src_format = xstrdup("unknown");
    }
}

/* The checks libvirt makes of a netfs pool's source. */
static int parse_netfs_source(xmlNodePtr s, struct pool_def *d)
{
    static const char *const formats[] = { "auto", "nfs", "glusterfs", "cifs", NULL };
    const char *fmt = d->src_format ? d->src_format : "auto";

    d->src_proto_ver = attr(child(s, "protocol"), "ver");
    if (!d->src_host) {
        pool_set_error("XML error: missing storage pool source host name");
        return -1;
    }
    if (!d->src_dir) {
        pool_set_error("XML error: missing storage pool source path");
        return -1;
    }
    if (!in_list(formats, fmt)) {
        pool_set_error("unsupported configuration: unknown pool format type %s", fmt);
        return -1;
    }
    if (d->src_proto_ver && (!d->src_proto_ver[0] ||
                             strspn(d->src_proto_ver, "0123456789") != strlen(d->src_proto_ver) ||
                             strlen(d->src_proto_ver) > 9)) {
        pool_set_error("XML error: storage pool protocol ver value '%s' is malformed",
                       d->src_proto_ver);
        return -1;
    }
    if (d->src_proto_ver && strcmp(fmt, "nfs")) {
        pool_set_error("unsupported configuration: storage pool protocol ver unsupported "
                       "for pool type '%s'", fmt);
        return -1;
    }
    return 0;
}

static int parse_source(xmlNodePtr s, struct pool_def *d)
{
    parse_devices(s, d);
    d->src_dir = attr(child(s, "dir"), "path");
    d->src_host = attr(child(s, "host"), "name");
    d->src_name = text(child(s, "name"));
    d->src_format = attr(child(s, "format"), "type");
    if ((!strcmp(d->type, "fs") || !strcmp(d->type, "disk")) && !d->src_device) {
        pool_set_error("XML error: missing storage pool source device name");
        return -1;
    }
    if (!strcmp(d->type, "netfs"))
        return parse_netfs_source(s, d);
    return 0;
}

/* The name and uuid of a pool. */
static int parse_ident(xmlNodePtr r, struct pool_def *d)
{
    char *u;

    d->name = text(child(r, "name"));
    if (!d->name || !*d->name) {
        pool_set_error("XML error: missing pool source name element");
        return -1;
    }
    if (strchr(d->name, '/')) {
        pool_set_error("XML error: name %s cannot contain '/'", d->name);
        return -1;
    }
    u = text(child(r, "uuid"));
    if (!u) {
        make_uuid(d->uuid);
        return 0;
    }
    if (pool_uuid_parse(u, d->uuid) < 0) {
        free(u);
        pool_set_error("XML error: malformed uuid element");
        return -1;
    }
    free(u);
    return 0;
}

/* An unsigned number from the text of element n; 0 when absent or bad. */
static uint64_t size_of(xmlNodePtr n)
{
    char *s = text(n), *end;
    uint64_t v;

    if (!s)
        return 0;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        v = 0;
    free(s);
    return v;
}

/* The sizes a live state file records (0 in definitions). */
static void parse_sizes(xmlNodePtr r, struct pool_def *d)
{
    d->capacity = size_of(child(r, "capacity"));
    d->allocation = size_of(child(r, "allocation"));
    d->available = size_of(child(r, "available"));
}

/* The pool element's content into d. */
static int parse_pool(xmlNodePtr r, struct pool_def *d)
{
    xmlNodePtr t;

    d->type = attr(r, "type");
    if (!d->type) {
        pool_set_error("XML error: Missing required attribute 'type' in element 'pool'");
        return -1;
    }
    if (!in_list(pool_types, d->type)) {
        pool_set_error("XML error: Invalid value for attribute 'type' in element 'pool': '%s'.",
                       d->type);
        return -1;
    }
    if (parse_ident(r, d) < 0 || parse_source(child(r, "source"), d) < 0)
        return -1;
    source_defaults(d);
    t = child(r, "target");
    d->target_path = text(child(t, "path"));
    if ((!d->target_path || !*d->target_path) && !strcmp(d->type, "logical")) {
        free(d->target_path);
        d->target_path = xasprintf("/dev/%s", d->src_name);
    }
    if (!d->target_path || !*d->target_path) {
        pool_set_error("XML error: missing storage pool target path");
        return -1;
    }
    clean_path(d->target_path);
    parse_sizes(r, d);
    return parse_perms(child(t, "permissions"), &d->perms, "pool");
}

struct pool_def *pool_def_parse(const char *xml, size_t len)
{
    xmlDocPtr doc = parse_doc(xml, len, "pool", "storage_pool_definition");
    struct pool_def *d;

    if (!doc)
        return NULL;
    d = calloc(1, sizeof(*d));
    if (!d)
        pool_oom();
    d->perms.mode = d->perms.owner = d->perms.group = -1;
    if (parse_pool(xmlDocGetRootElement(doc), d) < 0) {
        pool_def_free(d);
        d = NULL;
    }
    xmlFreeDoc(doc);
    return d;
}

struct pool_def *pool_def_parse_file(const char *path)
{
    size_t len;
    char *x = pool_read_file(path, &len);
    struct pool_def *d;

    if (!x)
        return NULL;
    d = pool_def_parse(x, len);
    free(x);
    return d;
}

void pool_def_free(struct pool_def *d)
{
    if (!d)
        return;
    free(d->type);
    free(d->name);
    free(d->target_path);
    free(d->perms.label);
    free(d->src_device);
    for (size_t i = 0; i < d->n_src_devs; i++)
        free(d->src_devs[i]);
    free(d->src_devs);
    free(d->free_ext);
    free(d->src_dir);
    free(d->src_host);
    free(d->src_name);
    free(d->src_format);
    free(d->src_proto_ver);
    free(d);
}

/* strdup that keeps NULL. */
static char *dupn(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

struct pool_def *pool_def_copy(const struct pool_def *s)
{
    struct pool_def *d = malloc(sizeof(*d));

    if (!d)
        pool_oom();
    *d = *s;
    d->type = dupn(s->type);
    d->name = dupn(s->name);
    d->target_path = dupn(s->target_path);
    d->perms.label = dupn(s->perms.label);
    d->src_device = dupn(s->src_device);
    d->src_devs = NULL;
    if (s->n_src_devs && !(d->src_devs = malloc(s->n_src_devs * sizeof(*d->src_devs))))
        pool_oom();
    for (size_t i = 0; i < s->n_src_devs; i++)
        d->src_devs[i] = xstrdup(s->src_devs[i]);
    d->free_ext = NULL;
    if (s->n_free_ext && !(d->free_ext = malloc(s->n_free_ext * sizeof(*d->free_ext))))
        pool_oom();
    if (s->n_free_ext)
        memcpy(d->free_ext, s->free_ext, s->n_free_ext * sizeof(*d->free_ext));
    d->src_dir = dupn(s->src_dir);
    d->src_host = dupn(s->src_host);
    d->src_name = dupn(s->src_name);
    d->src_format = dupn(s->src_format);
    d->src_proto_ver = dupn(s->src_proto_ver);
    return d;
}

/* The text of b; exits when an append ran out of memory. */
static char *buf_take(struct vd_buf *b)
{
    char *s = b->oom ? NULL : vd_buf_steal(b);

    if (!s)
        pool_oom();
    return s;
}

/* Append s with XML escapes. */
static void put_esc(struct vd_buf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': vd_buf_adds(b, "&lt;"); break;
        case '>': vd_buf_adds(b, "&gt;"); break;
        case '&': vd_buf_adds(b, "&amp;"); break;
        case '\'': vd_buf_adds(b, "&apos;"); break;
        case '"': vd_buf_adds(b, "&quot;"); break;
        default: vd_buf_addc(b, *s);
        }
    }
}

/* <tag>escaped text</tag> at indent. */
static void put_elem(struct vd_buf *b, int indent, const char *tag, const char *val)
{
    vd_buf_printf(b, "%*s<%s>", indent, "", tag);
    put_esc(b, val);
    vd_buf_printf(b, "</%s>\n", tag);
}

/* <tag attr='escaped'/> at indent. */
static void put_attr_elem(struct vd_buf *b, int indent, const char *tag,
                          const char *an, const char *val)
{
    vd_buf_printf(b, "%*s<%s %s='", indent, "", tag, an);
    put_esc(b, val);
    vd_buf_adds(b, "'/>\n");
}

/* <tag attr='escaped'> at indent (an element with children). */
static void put_attr_elem_open(struct vd_buf *b, int indent, const char *tag,
                               const char *an, const char *val)
{
    vd_buf_printf(b, "%*s<%s %s='", indent, "", tag, an);
    put_esc(b, val);
    vd_buf_adds(b, "'>\n");
}

/* <permissions> with the fields that are set. */
static void put_perms(struct vd_buf *b, int indent, const struct pool_perms *p)
{
    if (p->mode < 0 && p->owner < 0 && p->group < 0 && !p->label)
        return;
    vd_buf_printf(b, "%*s<permissions>\n", indent, "");
    if (p->mode >= 0)
        vd_buf_printf(b, "%*s<mode>0%lo</mode>\n", indent + 2, "", (unsigned long)p->mode);
    if (p->owner >= 0)
        vd_buf_printf(b, "%*s<owner>%ld</owner>\n", indent + 2, "", p->owner);
    if (p->group >= 0)
        vd_buf_printf(b, "%*s<group>%ld</group>\n", indent + 2, "", p->group);
    if (p->label)
        put_elem(b, indent + 2, "label", p->label);
    vd_buf_printf(b, "%*s</permissions>\n", indent, "");
}

/* <source> of a pool as libvirt writes it for each type. */
static void put_source(struct vd_buf *b, const struct pool_def *d)
{
    bool fs = !strcmp(d->type, "fs"), netfs = !strcmp(d->type, "netfs");

    vd_buf_adds(b, "  <source>\n");
    if (d->src_host)
        put_attr_elem(b, 4, "host", "name", d->src_host);
    for (size_t i = 0; i < d->n_src_devs; i++) {
        if (i || !d->n_free_ext) {
            put_attr_elem(b, 4, "device", "path", d->src_devs[i]);
            continue;
        }
        put_attr_elem_open(b, 4, "device", "path", d->src_devs[i]);
        for (size_t j = 0; j < d->n_free_ext; j++)
            vd_buf_printf(b, "      <freeExtent start='%" PRIu64 "' end='%" PRIu64 "'/>\n",
                          d->free_ext[j].start, d->free_ext[j].end);
        vd_buf_adds(b, "    </device>\n");
    }
    if (d->src_dir)
        put_attr_elem(b, 4, "dir", "path", d->src_dir);
    if (d->src_name)
        put_elem(b, 4, "name", d->src_name);
    if (fs || netfs || d->src_format)
        put_attr_elem(b, 4, "format", "type", d->src_format ? d->src_format : "auto");
    if (d->src_proto_ver)
        put_attr_elem(b, 4, "protocol", "ver", d->src_proto_ver);
    vd_buf_adds(b, "  </source>\n");
}

char *pool_def_format(const struct pool_def *d, bool with_perms)
{
    struct vd_buf b = {0};

    vd_buf_adds(&b, "<pool type='");
    put_esc(&b, d->type);
    vd_buf_adds(&b, "'>\n");
    put_elem(&b, 2, "name", d->name);
    put_elem(&b, 2, "uuid", d->uuid);
    vd_buf_printf(&b, "  <capacity unit='bytes'>%" PRIu64 "</capacity>\n", d->capacity);
    vd_buf_printf(&b, "  <allocation unit='bytes'>%" PRIu64 "</allocation>\n", d->allocation);
    vd_buf_printf(&b, "  <available unit='bytes'>%" PRIu64 "</available>\n", d->available);
    put_source(&b, d);
    vd_buf_adds(&b, "  <target>\n");
    put_elem(&b, 4, "path", d->target_path);
    if (with_perms)
        put_perms(&b, 4, &d->perms);
    vd_buf_adds(&b, "  </target>\n</pool>\n");
    return buf_take(&b);
}

int pool_scale(const char *unit, uint64_t *val, uint64_t dflt)
{
    uint64_t scale = dflt, base = 1024;
    int power = 0;
    char c;

    if (unit && *unit) {
        c = (char)tolower((unsigned char)unit[0]);
        const char *p = strchr("bkmgtpe", c);
        if (!p)
            return -1;
        power = (int)(p - "bkmgtpe");
        if (c == 'b') {
            if (strcmp(unit, "b") && strcmp(unit, "byte") && strcmp(unit, "bytes"))
                return -1;
        } else if (!unit[1] || !strcmp(unit + 1, "iB")) {
            base = 1024;
        } else if (!strcmp(unit + 1, "B")) {
            base = 1000;
        } else {
            return -1;
        }
        scale = 1;
        for (int i = 0; i < power; i++)
            scale *= base;
    }
    if (scale && *val > UINT64_MAX / scale)
        return -1;
    *val *= scale;
    return 0;
}

/* <capacity>/<allocation> with their unit attribute. */
static int parse_scaled(xmlNodePtr n, uint64_t *out, const char *what)
{
    char *s = text(n), *u = attr(n, "unit"), *end;
    int r = -1;

    errno = 0;
    if (s && isdigit((unsigned char)s[0])) {
        *out = strtoull(s, &end, 10);
        if (!errno && !*end && (r = pool_scale(u, out, 1)) < 0) {
            pool_set_error("invalid argument: unknown suffix '%s'", u ? u : "");
            free(s);
            free(u);
            return -1;
        }
    }
    if (r < 0)
        pool_set_error("XML error: malformed %s element", what);
    free(s);
    free(u);
    return r;
}

/* Is s a plain token (an algorithm name, a size)? */
static bool token(const char *s)
{
    return s && *s && strlen(s) < 64 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
           strlen(s);
}

/* <cipher name= size= mode= hash=/> and <ivgen name= hash=/> of an
 * <encryption>: name (and the cipher's size, a number) required. */
static int parse_cipher(xmlNodePtr e, struct vol_def *v)
{
    static const char *const cn[] = { "name", "size", "mode", "hash" }, *const in[] = {
        "name", "hash" };
    xmlNodePtr c = child(e, "cipher"), g = child(e, "ivgen");

    for (int i = 0; c && i < 4; i++) {
        v->enc_cipher[i] = attr(c, cn[i]);
        if ((i < 2 && !v->enc_cipher[i]) || (v->enc_cipher[i] && !token(v->enc_cipher[i])) ||
            (i == 1 && strspn(v->enc_cipher[1], "0123456789") != strlen(v->enc_cipher[1]))) {
            pool_set_error("XML error: missing or malformed cipher %s", cn[i]);
            return -1;
        }
    }
    for (int i = 0; g && i < 2; i++) {
        v->enc_ivgen[i] = attr(g, in[i]);
        if ((i == 0 && !v->enc_ivgen[i]) || (v->enc_ivgen[i] && !token(v->enc_ivgen[i]))) {
            pool_set_error("XML error: missing or malformed ivgen %s", in[i]);
            return -1;
        }
    }
    return 0;
}

/* <encryption format='luks'><secret type='passphrase' uuid='...'/>. */
static int parse_encryption(xmlNodePtr e, struct vol_def *v)
{
    static const char *const formats[] = { "default", "qcow", "luks", "luks2", "luks-any",
                                           NULL };
    int n = 0;

    if (!e)
        return 0;
    v->enc_format = attr(e, "format");
    if (!v->enc_format || !in_list(formats, v->enc_format)) {
        pool_set_error("XML error: unknown volume encryption format type %s",
                       v->enc_format ? v->enc_format : "(null)");
        return -1;
    }
    for (xmlNodePtr c = e->children; c; c = c->next) {
        char *type, *uuid;
        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "secret"))
            continue;
        type = attr(c, "type");
        uuid = attr(c, "uuid");
        n++;
        if (!type || strcmp(type, "passphrase"))
            v->enc_secret_bad = true;
        if (uuid && !v->enc_secret) {
            char canon[37];
            if (pool_uuid_parse(uuid, canon) < 0) {
                pool_set_error("XML error: malformed volume encryption uuid '%s'", uuid);
                free(type);
                free(uuid);
                return -1;
            }
            v->enc_secret = xstrdup(canon);
        }
        free(type);
        free(uuid);
    }
    v->enc_secret_bad |= n != 1;
    return parse_cipher(e, v);
}

/* The target element of a volume. */
static int parse_vol_target(xmlNodePtr t, struct vol_def *v)
{
    xmlNodePtr f = child(t, "features");

    v->format = attr(child(t, "format"), "type");
    if (v->format && !vol_format_any(v->format)) {
        pool_set_error("unsupported configuration: unknown volume format type %s", v->format);
        return -1;
    }
    v->compat = text(child(t, "compat"));
    if (parse_encryption(child(t, "encryption"), v) < 0)
        return -1;
    v->lazy_refcounts = child(f, "lazy_refcounts") != NULL;
    v->extended_l2 = child(f, "extended_l2") != NULL;
    return parse_perms(child(t, "permissions"), &v->perms, "volume");
}

struct vol_def *vol_def_parse(const char *xml, size_t len)
{
    xmlDocPtr doc = parse_doc(xml, len, "volume", "storage_volume_definition");
    struct vol_def *v;
    xmlNodePtr r, c, a, bs;
    int rc = -1;

    if (!doc)
        return NULL;
    v = calloc(1, sizeof(*v));
    if (!v)
        pool_oom();
    r = xmlDocGetRootElement(doc);
    v->name = text(child(r, "name"));
    c = child(r, "capacity");
    a = child(r, "allocation");
    bs = child(r, "backingStore");
    if (!v->name || !*v->name)
        pool_set_error("XML error: missing volume name element");
    else if (!c && !bs)
        pool_set_error("XML error: missing capacity element");
    else if ((!c || parse_scaled(c, &v->capacity, "capacity") == 0) &&
             (!a || parse_scaled(a, &v->allocation, "allocation") == 0) &&
             parse_vol_target(child(r, "target"), v) == 0)
        rc = 0;
    v->has_capacity = c != NULL;
    v->has_allocation = a != NULL;
    if (rc == 0 && bs) {
        v->backing_path = text(child(bs, "path"));
        v->backing_format = attr(child(bs, "format"), "type");
    }
    xmlFreeDoc(doc);
    if (rc < 0) {
        vol_def_free(v);
        return NULL;
    }
    return v;
}

void vol_def_free(struct vol_def *v)
{
    if (!v)
        return;
    free(v->name);
    free(v->key);
    free(v->path);
    free(v->format);
    free(v->perms.label);
    free(v->backing_path);
    free(v->backing_format);
    free(v->backing_perms.label);
    free(v->compat);
    for (size_t i = 0; i < v->n_extents; i++)
        free(v->extents[i].dev);
    free(v->extents);
    free(v->enc_format);
    free(v->enc_secret);
    for (int i = 0; i < 4; i++)
        free(v->enc_cipher[i]);
    for (int i = 0; i < 2; i++)
        free(v->enc_ivgen[i]);
    free(v);
}

/* A timestamp as libvirt writes it: seconds, then .nanoseconds if any. */
static void put_time(struct vd_buf *b, const char *tag, const struct timespec *t)
{
    vd_buf_printf(b, "      <%s>%lld", tag, (long long)t->tv_sec);
    if (t->tv_nsec)
        vd_buf_printf(b, ".%09ld", t->tv_nsec);
    vd_buf_printf(b, "</%s>\n", tag);
}

/* <timestamps> block. */
static void put_times(struct vd_buf *b, const struct timespec *a,
                      const struct timespec *m, const struct timespec *c)
{
    vd_buf_adds(b, "    <timestamps>\n");
    put_time(b, "atime", a);
    put_time(b, "mtime", m);
    put_time(b, "ctime", c);
    vd_buf_adds(b, "      <btime>0</btime>\n");
    vd_buf_adds(b, "    </timestamps>\n");
}

/* <backingStore> of a volume. */
static void put_backing(struct vd_buf *b, const struct vol_def *v)
{
    vd_buf_adds(b, "  <backingStore>\n");
    put_elem(b, 4, "path", v->backing_path);
    if (v->backing_format)
        put_attr_elem(b, 4, "format", "type", v->backing_format);
    if (v->backing_stat) {
        put_perms(b, 4, &v->backing_perms);
        put_times(b, &v->batime, &v->bmtime, &v->bctime);
    }
    vd_buf_adds(b, "  </backingStore>\n");
}

/* <source> of a block volume: its extents, grouped by device. */
static void put_extents(struct vd_buf *b, const struct vol_def *v)
{
    const char *dev = NULL;

    vd_buf_adds(b, "  <source>\n");
    for (size_t i = 0; i < v->n_extents; i++) {
        const struct vol_extent *e = &v->extents[i];
        if (!dev || strcmp(dev, e->dev)) {
            if (dev)
                vd_buf_adds(b, "    </device>\n");
            dev = e->dev;
            put_attr_elem_open(b, 4, "device", "path", dev);
        }
        vd_buf_printf(b, "      <extent start='%" PRIu64 "' end='%" PRIu64 "'/>\n",
                      e->start, e->end);
    }
    vd_buf_adds(b, "    </device>\n  </source>\n");
}

/* <cipher/> and <ivgen/> with the attributes given. */
static void put_cipher(struct vd_buf *b, const struct vol_def *v)
{
    static const char *const cn[] = { "name", "size", "mode", "hash" }, *const in[] = {
        "name", "hash" };

    if (v->enc_cipher[0]) {
        vd_buf_adds(b, "      <cipher");
        for (int i = 0; i < 4; i++)
            if (v->enc_cipher[i])
                vd_buf_printf(b, " %s='%s'", cn[i], v->enc_cipher[i]);
        vd_buf_adds(b, "/>\n");
    }
    if (v->enc_ivgen[0]) {
        vd_buf_adds(b, "      <ivgen");
        for (int i = 0; i < 2; i++)
            if (v->enc_ivgen[i])
                vd_buf_printf(b, " %s='%s'", in[i], v->enc_ivgen[i]);
        vd_buf_adds(b, "/>\n");
    }
}

char *vol_def_format(const struct vol_def *v)
{
    struct vd_buf b = {0};

    vd_buf_printf(&b, "<volume type='%s'>\n", v->type);
    put_elem(&b, 2, "name", v->name);
    put_elem(&b, 2, "key", v->key);
    if (v->n_extents)
        put_extents(&b, v);
    vd_buf_printf(&b, "  <capacity unit='bytes'>%" PRIu64 "</capacity>\n", v->capacity);
    vd_buf_printf(&b, "  <allocation unit='bytes'>%" PRIu64 "</allocation>\n", v->allocation);
    if (strcmp(v->type, "dir"))
        vd_buf_printf(&b, "  <physical unit='bytes'>%" PRIu64 "</physical>\n", v->physical);
    vd_buf_adds(&b, "  <target>\n");
    put_elem(&b, 4, "path", v->path);
    if (v->format)
        put_attr_elem(&b, 4, "format", "type", v->format);
    put_perms(&b, 4, &v->perms);
    put_times(&b, &v->atime, &v->mtime, &v->ctime_);
    if (v->enc_format) {
        vd_buf_adds(&b, "    <encryption format='");
        put_esc(&b, v->enc_format);
        vd_buf_adds(&b, "'>\n");
        if (v->enc_secret)
            vd_buf_printf(&b, "      <secret type='passphrase' uuid='%s'/>\n", v->enc_secret);
        put_cipher(&b, v);
        vd_buf_adds(&b, "    </encryption>\n");
    }
    if (v->compat)
        put_elem(&b, 4, "compat", v->compat);
    if (v->cluster_size)
        vd_buf_printf(&b, "    <clusterSize unit='B'>%" PRIu64 "</clusterSize>\n",
                      v->cluster_size);
    if (v->lazy_refcounts || v->extended_l2) {
        vd_buf_adds(&b, "    <features>\n");
        if (v->lazy_refcounts)
            vd_buf_adds(&b, "      <lazy_refcounts/>\n");
        if (v->extended_l2)
            vd_buf_adds(&b, "      <extended_l2/>\n");
        vd_buf_adds(&b, "    </features>\n");
    }
    vd_buf_adds(&b, "  </target>\n");
    if (v->backing_path)
        put_backing(&b, v);
    vd_buf_adds(&b, "</volume>\n");
    return buf_take(&b);
}

/* Usage types and the element naming what each secret is for. */
static const char *const usage_types[][3] = {
    { "volume", "volume", "volume usage specified, but volume path is missing" },
    { "ceph", "name", "Ceph usage specified, but name is missing" },
    { "iscsi", "target", "iSCSI usage specified, but target is missing" },
    { "tls", "name", "TLS usage specified, but name is missing" },
    { "vtpm", "name", "vTPM usage specified, but name is missing" },
};

void secret_def_free(struct secret_def *s)
{
    if (!s)
        return;
    free(s->description);
    free(s->usage_type);
    free(s->usage_id);
    free(s);
}

const char *secret_usage_elem(const char *type, const char **missing)
{
    for (size_t i = 0; i < sizeof(usage_types) / sizeof(usage_types[0]); i++) {
        if (!strcmp(type, usage_types[i][0])) {
            *missing = usage_types[i][2];
            return usage_types[i][1];
        }
    }
    return NULL;
}

/* ephemeral= or private= of a secret: "yes", "no" or absent. */
static int yes_no(xmlNodePtr r, const char *name, bool *out)
{
    char *v = attr(r, name);
    int rc = 0;

    *out = v && !strcmp(v, "yes");
    if (v && strcmp(v, "yes") && strcmp(v, "no")) {
        pool_set_error("XML error: invalid value of '%s': '%s'", name, v);
        rc = -1;
    }
    free(v);
    return rc;
}

/* <usage type='...'><volume|name|target>ID</...></usage>. */
static int parse_usage(xmlNodePtr u, struct secret_def *s)
{
    const char *missing, *elem;

    if (!u)
        return 0;
    s->usage_type = attr(u, "type");
    if (!s->usage_type) {
        pool_set_error("internal error: unknown secret usage type");
        return -1;
    }
    if (!(elem = secret_usage_elem(s->usage_type, &missing))) {
        pool_set_error("internal error: unknown secret usage type %s", s->usage_type);
        return -1;
    }
    s->usage_id = text(child(u, elem));
    if (!s->usage_id || !*s->usage_id) {
        pool_set_error("internal error: %s", missing);
        return -1;
    }
    return 0;
}

struct secret_def *secret_def_parse(const char *xml, size_t len)
{
    xmlDocPtr doc = parse_doc(xml, len, "secret", "secret_definition");
    struct secret_def *s;
    xmlNodePtr r;
    char *u;
    int rc = -1;

    if (!doc)
        return NULL;
    if (!(s = calloc(1, sizeof(*s))))
        pool_oom();
    r = xmlDocGetRootElement(doc);
    u = text(child(r, "uuid"));
    if (yes_no(r, "ephemeral", &s->ephemeral) == 0 && yes_no(r, "private", &s->priv) == 0) {
        if (u && pool_uuid_parse(u, s->uuid) < 0)
            pool_set_error("internal error: malformed uuid element");
        else if (parse_usage(child(r, "usage"), s) == 0)
            rc = 0;
    }
    if (rc == 0 && !u)
        make_uuid(s->uuid);
    s->description = text(child(r, "description"));
    free(u);
    xmlFreeDoc(doc);
    if (rc < 0) {
        secret_def_free(s);
        return NULL;
    }
    return s;
}

char *secret_def_format(const struct secret_def *s)
{
    struct vd_buf b = {0};
    const char *missing, *elem;

    vd_buf_printf(&b, "<secret ephemeral='%s' private='%s'>\n", s->ephemeral ? "yes" : "no",
                  s->priv ? "yes" : "no");
    put_elem(&b, 2, "uuid", s->uuid);
    if (s->description)
        put_elem(&b, 2, "description", s->description);
    if (s->usage_type && (elem = secret_usage_elem(s->usage_type, &missing))) {
        vd_buf_printf(&b, "  <usage type='%s'>\n", s->usage_type);
        put_elem(&b, 4, elem, s->usage_id);
        vd_buf_adds(&b, "  </usage>\n");
    }
    vd_buf_adds(&b, "</secret>\n");
    return buf_take(&b);
}
