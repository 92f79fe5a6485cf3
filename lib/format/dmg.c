/* SPDX-License-Identifier: BSD-3-Clause */
/* The dmg format (Apple's UDIF), read-only.  A 512-byte "koly" trailer at
 * the end of the file names the data fork, the resource fork or the XML
 * property list, and the disk's sector count; each partition's block
 * table ("mish") lists chunks: sector range, type, and where the chunk's
 * bytes lie in the data fork.  Chunk types read here: zero-fill and
 * ignored (zeroes), raw, zlib and bzip2 (libbz2, in the module
 * vdisk-codec.so, loaded when a block table names a bzip2 chunk); lzfse
 * and ADC chunks, for which there is no decompressor, are read errors
 * that name the codec.  It behaves as QEMU 7.2's driver (the same trailer search and
 * checks, the same messages and warnings, the same 64 MiB chunk bounds, no
 * mapping offsets, refused for writing) and checks more of its own:
 * chunks may not overlap or lie outside the file, block tables are
 * bounded, and a raw chunk's length must match its sectors.
 *
 * Invariant: the chunk table is sorted and fixed after open; lock guards
 * only the one-chunk cache, so chunks are read and decompressed in
 * parallel outside it. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "format/codecs.h"
#include "util/checked.h"
#include "vdisk/driver.h"

#define DMG_SECTOR          512u
#define DMG_KOLY_BYTES      512u
#define DMG_LENGTH_MAX      (64u << 20)              /* QEMU's chunk bounds */
#define DMG_SECTORS_MAX     (DMG_LENGTH_MAX / DMG_SECTOR)
#define DMG_XML_MAX         (16u << 20)              /* QEMU's plist bound */
#define DMG_RESOURCE_MAX    (64u << 20)              /* one block table */
#define DMG_CHUNKS_MAX      (1u << 22)               /* chunks in an image */
#define DMG_MISH_HEADER     204u                     /* then 40-byte entries */
#define DMG_MISH_MIN        244u                     /* header + one entry */
#define DMG_ENTRY_BYTES     40u
#define DMG_NO_CHUNK        UINT32_MAX

/* Chunk types. */
enum {
    DMG_ZERO_FILL = 0x00000000, DMG_RAW = 0x00000001, DMG_IGNORE = 0x00000002,
    DMG_ADC = 0x80000004, DMG_ZLIB = 0x80000005, DMG_BZIP2 = 0x80000006,
    DMG_LZFSE = 0x80000007, DMG_COMMENT = 0x7ffffffe, DMG_LAST = 0xffffffff,
};

/* koly trailer field offsets. */
enum { KOLY_DATA_FORK = 0x18, KOLY_RSRC_OFF = 0x28, KOLY_RSRC_LEN = 0x30,
       KOLY_XML_OFF = 0xd8, KOLY_XML_LEN = 0xe0, KOLY_SECTORS = 0x1ec };

struct dmg_chunk {
    uint32_t type;
    uint64_t sector, count;        /* guest sectors */
    uint64_t offset, length;       /* bytes in the file */
};

struct dmg_state {
    pthread_mutex_t lock;          /* the cache (see the invariant) */
    bool lock_ok;
    struct dmg_chunk *chunks;      /* sorted by sector, disjoint */
    uint32_t n_chunks, cap_chunks;
    uint32_t n_known;              /* chunks QEMU keeps (its chunk numbers) */
    uint64_t sectors;              /* the disk's, from the trailer */
    uint64_t file_len;
    uint32_t cache_chunk;          /* chunk in cache, or DMG_NO_CHUNK */
    uint8_t *cache;                /* its decompressed bytes */
    bool warned_lzfse, warned_unknown, checked_bzip2;
};

/* Data fork offset while the tables are read (QEMU's "in_offset" base). */
struct dmg_parse {
    uint64_t data_fork;
};

static inline uint32_t be32_get(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64_get(const uint8_t *p)
{
    return (uint64_t)be32_get(p) << 32 | be32_get(p + 4);
}

/* Score 2 on a name ending in ".dmg", as QEMU (UDIF has no leading magic). */
static int dmg_probe(const uint8_t *buf, size_t len, const char *filename)
{
    size_t l = filename ? strlen(filename) : 0;

    (void)buf; (void)len;
    return l > 4 && !strcmp(filename + l - 4, ".dmg") ? 2 : 0;
}

/* QEMU's message for a layout it refuses without saying why. */
static int invalid(vd_node *n)
{
    return vd_error(EINVAL, "Could not open '%s': Invalid argument", n->filename);
}

/* A warning once per image, as QEMU's (it warns once per process). */
static void warn_once(bool *done, const char *msg)
{
    if (!*done)
        fprintf(stderr, "%s: warning: %s\n", program_invocation_short_name, msg);
    *done = true;
}

/* ---- the trailer ---- */

/* Read len bytes at off, zero-filled past the end of the file (as QEMU
 * reads the sector the file ends in). */
static int read_padded(vd_node *n, uint64_t off, uint64_t len, void *buf)
{
    struct dmg_state *s = n->state;
    uint64_t l = off >= s->file_len ? 0 : VD_MIN(len, s->file_len - off);

    memset((uint8_t *)buf + l, 0, len - l);
    return l ? vd_pread(n->file, off, l, buf, 0) : 0;
}

/* Find "koly" in the 515 bytes where QEMU looks: the trailer may start up
 * to 511 bytes before the last sector, QEMU's file length being rounded up
 * to whole sectors. */
static int find_koly(vd_node *n, uint64_t *out)
{
    struct dmg_state *s = n->state;
    uint8_t buf[515];
    uint64_t rounded = div_round_up(s->file_len, DMG_SECTOR) * DMG_SECTOR;
    uint64_t off = rounded > 1023 ? rounded - 1023 : 0;
    size_t len = (size_t)VD_MIN(rounded, sizeof(buf));
    int r;

    if (rounded < DMG_KOLY_BYTES)
        return vd_error(EINVAL, "dmg file must be at least 512 bytes long");
    if ((r = read_padded(n, off, len, buf)) < 0)
        return vd_error_prefix(r, "Failed while reading UDIF trailer");
    for (size_t i = 0; i + 4 <= len; i++)
        if (!memcmp(buf + i, "koly", 4)) {
            *out = off + i;
            return 0;
        }
    return vd_error(EINVAL, "Could not locate UDIF trailer in dmg file");
}

/* Read the trailer at off, zero-padded past the end of the file. */
static int read_koly(vd_node *n, uint64_t off, uint8_t *k)
{
    int r = read_padded(n, off, DMG_KOLY_BYTES, k);

    return r < 0 ? vd_error_prefix(r, "Failed while reading UDIF trailer") : 0;
}

/* ---- block tables ---- */

/* Types QEMU 7.2 keeps in its table (bzip2 needs its module there). */
static bool known_type(uint32_t t)
{
    return t == DMG_ZERO_FILL || t == DMG_RAW || t == DMG_IGNORE || t == DMG_ZLIB ||
           t == DMG_BZIP2;
}

/* At the first bzip2 chunk, load the decompressor module; warn as QEMU
 * does without its dmg-bzip2 module when it cannot be loaded (reading
 * those chunks then fails, naming the reason). */
static void check_bzip2(struct dmg_state *s)
{
    if (s->checked_bzip2)
        return;
    s->checked_bzip2 = true;
    if (vd_codecs())
        return;
    vd_error_clear();
    fprintf(stderr, "%s: warning: dmg-bzip2 module is missing, accessing bzip2 compressed "
            "blocks will result in I/O errors\n", program_invocation_short_name);
}

/* Warn as QEMU does about chunks it cannot read; true when the chunk is
 * kept anyway (to name its codec when read). */
static bool other_type(struct dmg_state *s, uint32_t t)
{
    if (t == DMG_COMMENT || t == DMG_LAST)
        return false;
    if (t == DMG_LZFSE) {
        warn_once(&s->warned_lzfse, "dmg-lzfse module is missing, accessing lzfse "
                  "compressed blocks will result in I/O errors");
    } else {
        char msg[128];
        snprintf(msg, sizeof(msg), "Image contains chunks of unknown type %" PRIx32
                 ", accessing them will result in I/O errors", t);
        warn_once(&s->warned_unknown, msg);
    }
    return true;
}

/* Room for one more chunk (bounded). */
static int grow_chunks(vd_node *n)
{
    struct dmg_state *s = n->state;
    uint32_t cap;
    struct dmg_chunk *c;
    int r;

    if (s->n_chunks < s->cap_chunks)
        return 0;
    if (s->n_chunks >= DMG_CHUNKS_MAX)
        return vd_error(EFBIG, "dmg: more than %u chunks", DMG_CHUNKS_MAX);
    cap = s->cap_chunks ? VD_MIN(s->cap_chunks * 2, DMG_CHUNKS_MAX) : 64;
    if ((r = vd_untrusted_table_check(n, (uint64_t)cap * sizeof(*c), "dmg chunk table")) < 0)
        return r;
    if (!(c = realloc(s->chunks, (size_t)cap * sizeof(*c))))
        return vd_error(ENOMEM, "dmg: cannot allocate the chunk table");
    s->chunks = c;
    s->cap_chunks = cap;
    return 0;
}

/* The bounds QEMU checks, printed as QEMU prints them. */
static int check_chunk_bounds(vd_node *n, const struct dmg_chunk *c, uint32_t i)
{
    if (c->type != DMG_ZERO_FILL && c->type != DMG_IGNORE && c->count > DMG_SECTORS_MAX) {
        fprintf(stderr, "%s: sector count %" PRIu64 " for chunk %" PRIu32 " is larger than "
                "max (%u)\n", program_invocation_short_name, c->count, i, DMG_SECTORS_MAX);
        return invalid(n);
    }
    if (c->length > DMG_LENGTH_MAX) {
        fprintf(stderr, "%s: length %" PRIu64 " for chunk %" PRIu32 " is larger than max "
                "(%u)\n", program_invocation_short_name, c->length, i, DMG_LENGTH_MAX);
        return invalid(n);
    }
    return 0;
}

/* Add the chunks of one block table (count bytes at b); tables with
 * another signature or too short are skipped, as in QEMU. */
static int read_mish(vd_node *n, struct dmg_parse *p, const uint8_t *b, uint64_t count)
{
    struct dmg_state *s = n->state;
    uint64_t first, base, entries;
    int r;

    if (count < DMG_MISH_MIN || memcmp(b, "mish", 4))
        return 0;
    first = be64_get(b + 8);
    base = p->data_fork + be64_get(b + 0x18);      /* wraps as QEMU's */
    entries = (count - DMG_MISH_HEADER) / DMG_ENTRY_BYTES;
    for (uint64_t e = 0; e < entries; e++) {
        const uint8_t *q = b + DMG_MISH_HEADER + e * DMG_ENTRY_BYTES;
        struct dmg_chunk c = { .type = be32_get(q) };
        if (!known_type(c.type) && !other_type(s, c.type))
            continue;
        if (c.type == DMG_BZIP2)
            check_bzip2(s);
        c.sector = be64_get(q + 8) + first;
        c.count = be64_get(q + 0x10);
        c.offset = be64_get(q + 0x18) + base;
        c.length = be64_get(q + 0x20);
        if (known_type(c.type) && (r = check_chunk_bounds(n, &c, s->n_known++)) < 0)
            return r;
        if ((r = grow_chunks(n)) < 0)
            return r;
        s->chunks[s->n_chunks++] = c;
    }
    return 0;
}

/* Read a u32 of the resource fork. */
static int read_u32(vd_node *n, uint64_t off, uint32_t *v)
{
    uint8_t b[4];
    int r = vd_pread(n->file, off, 4, b, 0);

    *v = be32_get(b);
    return r < 0 ? r : 0;
}

/* The binary resource fork: a header (offset and length of the resource
 * data), then resources, each a 32-bit length and a block table. */
static int read_resource_fork(vd_node *n, struct dmg_parse *p, uint64_t begin, uint64_t len)
{
    uint32_t data_off, count;
    uint64_t off, end;
    int r;

    if (len < 12 || (r = read_u32(n, begin, &data_off)) < 0 || data_off > len ||
        (r = read_u32(n, begin + 8, &count)) < 0 || !count ||
        (uint64_t)data_off + count > len)
        return invalid(n);
    off = begin + data_off;
    end = off + count;
    while (off < end) {
        if ((r = read_u32(n, off, &count)) < 0 || !count || count > end - off)
            return invalid(n);
        if (count > DMG_RESOURCE_MAX)
            return vd_error(EFBIG, "dmg: a resource of %" PRIu32 " bytes (over %u)", count,
                            DMG_RESOURCE_MAX);
        off += 4;
        uint8_t *b = malloc(count);
        if (!b)
            return vd_error(ENOMEM, "dmg: cannot allocate %" PRIu32 " bytes", count);
        r = vd_pread(n->file, off, count, b, 0);
        if (r >= 0)
            r = read_mish(n, p, b, count);
        free(b);
        if (r < 0)
            return r;
        off += count;
    }
    return 0;
}

/* Value of a base64 character, -1 for others (skipped, as glib does). */
static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decode base64 text in place (the output is never longer); returns the
 * byte count. */
static size_t b64_decode(char *text)
{
    uint8_t *out = (uint8_t *)text;
    uint32_t acc = 0;
    size_t n = 0;
    int bits = 0;

    for (const char *c = text; *c; c++) {
        int v = b64_value(*c);
        if (v < 0)
            continue;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}

/* The XML property list: every <data>...</data> is a base64 block table. */
static int read_plist(vd_node *n, struct dmg_parse *p, uint64_t begin, uint64_t len)
{
    char *xml, *at, *end;
    int r = 0;

    if (len == 0 || len > DMG_XML_MAX)
        return invalid(n);
    if (!(xml = malloc(len + 1)))
        return vd_error(ENOMEM, "dmg: cannot allocate the property list");
    xml[len] = '\0';
    if (vd_pread(n->file, begin, len, xml, 0) < 0) {
        free(xml);
        return invalid(n);
    }
    end = xml;
    while (r >= 0 && (at = strstr(end, "<data>"))) {
        at += 6;
        if (!(end = strstr(at, "</data>"))) {
            r = invalid(n);
            break;
        }
        *end++ = '\0';
        r = read_mish(n, p, (const uint8_t *)at, b64_decode(at));
    }
    free(xml);
    return r;
}

/* ---- checks of our own ---- */

/* qsort comparator: chunks by first sector. */
static int cmp_chunk(const void *a, const void *b)
{
    const struct dmg_chunk *x = a, *y = b;
    return x->sector < y->sector ? -1 : x->sector > y->sector;
}

/* Sort the chunks; refuse empty ranges that wrap, overlapping chunks, data
 * outside the file and raw chunks whose length is not their sectors'. */
static int check_chunks(vd_node *n)
{
    struct dmg_state *s = n->state;

    qsort(s->chunks, s->n_chunks, sizeof(*s->chunks), cmp_chunk);
    for (uint32_t i = 0; i < s->n_chunks; i++) {
        const struct dmg_chunk *c = &s->chunks[i];
        bool stored = c->type != DMG_ZERO_FILL && c->type != DMG_IGNORE;
        if (c->sector + c->count < c->sector)
            return vd_error(EINVAL, "dmg: chunk at sector %" PRIu64 " with %" PRIu64
                            " sectors wraps around", c->sector, c->count);
        if (i && c->sector < s->chunks[i - 1].sector + s->chunks[i - 1].count)
            return vd_error(EINVAL, "dmg: chunks overlap at sector %" PRIu64, c->sector);
        if (stored && (c->offset > s->file_len || c->length > s->file_len - c->offset))
            return vd_error(EINVAL, "dmg: the data of the chunk at sector %" PRIu64 " (%"
                            PRIu64 " bytes at %" PRIu64 ") lies beyond the end of the file",
                            c->sector, c->length, c->offset);
        if (c->type == DMG_RAW && c->length != c->count * DMG_SECTOR)
            return vd_error(EINVAL, "dmg: raw chunk at sector %" PRIu64 " has %" PRIu64
                            " bytes for %" PRIu64 " sectors", c->sector, c->length, c->count);
    }
    return 0;
}

/* ---- open ---- */

/* The trailer's fields, checked as QEMU checks them. */
static int read_tables(vd_node *n, const uint8_t *k, uint64_t koly)
{
    struct dmg_state *s = n->state;
    struct dmg_parse p = { .data_fork = be64_get(k + KOLY_DATA_FORK) };
    uint64_t rsrc_off = be64_get(k + KOLY_RSRC_OFF), rsrc_len = be64_get(k + KOLY_RSRC_LEN);
    uint64_t xml_off = be64_get(k + KOLY_XML_OFF), xml_len = be64_get(k + KOLY_XML_LEN);

    s->sectors = be64_get(k + KOLY_SECTORS);
    if (p.data_fork > koly || rsrc_off >= koly || rsrc_len > koly - rsrc_off ||
        xml_off >= koly || xml_len > koly - xml_off || s->sectors > INT64_MAX)
        return invalid(n);
    if (s->sectors > INT64_MAX / DMG_SECTOR)
        return vd_error(EFBIG, "dmg: sector count %" PRIu64 " is too large", s->sectors);
    if (rsrc_len)
        return read_resource_fork(n, &p, rsrc_off, rsrc_len);
    if (xml_len)
        return read_plist(n, &p, xml_off, xml_len);
    return invalid(n);
}

/* Find the trailer, read the block tables; refuse read-write opens. */
static int dmg_open(vd_node *n, vd_opts *opts, int flags)
{
    struct dmg_state *s = n->state;
    int64_t file_len = vd_getlength(n->file);
    uint8_t k[DMG_KOLY_BYTES];
    uint64_t koly = 0;
    int r;

    (void)opts; (void)flags;
    s->cache_chunk = DMG_NO_CHUNK;
    if (pthread_mutex_init(&s->lock, NULL))
        return vd_error(ENOMEM, "dmg: cannot create a lock");
    s->lock_ok = true;
    if (!n->read_only)
        return vd_error(EACCES, "Image is read-only");
    if (file_len < 0)
        return vd_error_prefix((int)file_len, "Failed to get file size while reading UDIF "
                               "trailer");
    s->file_len = (uint64_t)file_len;
    if ((r = find_koly(n, &koly)) < 0 || (r = read_koly(n, koly, k)) < 0 ||
        (r = read_tables(n, k, koly)) < 0 || (r = check_chunks(n)) < 0)
        return r;
    n->request_alignment = DMG_SECTOR;
    return 0;
}

/* Free the tables. */
static void dmg_close(vd_node *n)
{
    struct dmg_state *s = n->state;

    free(s->chunks);
    free(s->cache);
    if (s->lock_ok)
        pthread_mutex_destroy(&s->lock);
}

/* ---- reading ---- */

/* The chunk holding sector, or DMG_NO_CHUNK. */
static uint32_t find_chunk(const struct dmg_state *s, uint64_t sector)
{
    uint32_t lo = 0, hi = s->n_chunks;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct dmg_chunk *c = &s->chunks[mid];
        if (sector < c->sector)
            hi = mid;
        else if (sector - c->sector >= c->count)
            lo = mid + 1;
        else
            return mid;
    }
    return DMG_NO_CHUNK;
}

/* Compressed bytes read at a time: a chunk's input is streamed through
 * the decoder, so each reader holds this much, not the whole chunk. */
#define DMG_IN_WINDOW (64u << 10)

/* One zlib or bzip2 stream fed in pieces into a fixed output. */
struct dmg_decoder {
    const struct vd_codecs *bz;    /* bzip2: the module's decoder */
    void *b;
    z_stream z;
};

/* Start a decoder; bz (the module's table) for bzip2, NULL for zlib. */
static bool decoder_init(struct dmg_decoder *d, const struct vd_codecs *bz, uint8_t *out,
                         uint64_t out_len)
{
    memset(d, 0, sizeof(*d));
    d->bz = bz;
    if (out_len > UINT32_MAX)
        return false;
    if (bz)
        return (d->b = bz->bz_start(out, (size_t)out_len)) != NULL;
    if (inflateInit(&d->z) != Z_OK)
        return false;
    d->z.next_out = out;
    d->z.avail_out = (uInt)out_len;
    return true;
}

/* Feed len bytes: 1 at the end of the stream, 0 for more, -1 on bad
 * data or output that does not fit. */
static int decoder_feed(struct dmg_decoder *d, const uint8_t *in, size_t len)
{
    if (d->bz)
        return d->bz->bz_feed(d->b, in, len);
    d->z.next_in = (Bytef *)in;
    d->z.avail_in = (uInt)len;
    int zr = inflate(&d->z, Z_NO_FLUSH);
    if (zr == Z_STREAM_END)
        return 1;
    return zr == Z_OK && (d->z.avail_out || !d->z.avail_in) ? 0 : -1;
}

/* Has the stream filled its output exactly?  Frees the decoder. */
static bool decoder_end(struct dmg_decoder *d)
{
    bool full;

    if (d->bz)
        return d->bz->bz_end(d->b);
    full = d->z.avail_out == 0;
    inflateEnd(&d->z);
    return full;
}

/* Read and decompress chunk c into out (c->count sectors). */
static int load_chunk(vd_node *n, const struct dmg_chunk *c, uint8_t *out)
{
    uint64_t out_len = c->count * DMG_SECTOR, pos = 0;
    size_t win = (size_t)VD_MIN(c->length, (uint64_t)DMG_IN_WINDOW);
    uint8_t *in = malloc(win ? win : 1);
    const struct vd_codecs *bz = NULL;
    struct dmg_decoder d;
    int r = 0, st = 0;
    bool ok;

    if (!in)
        return vd_error(ENOMEM, "dmg: cannot allocate %zu bytes", win);
    if (c->type == DMG_BZIP2 && !(bz = vd_codecs())) {
        free(in);
        return vd_error_prefix(-EIO, "dmg: cannot read the bzip2 chunk at sector %" PRIu64,
                               c->sector);
    }
    if (!decoder_init(&d, bz, out, out_len)) {
        free(in);
        return vd_error(ENOMEM, "dmg: cannot start a decompressor");
    }
    while (st == 0 && pos < c->length) {
        size_t l = (size_t)VD_MIN(c->length - pos, (uint64_t)win);
        if ((r = vd_pread(n->file, c->offset + pos, l, in, 0)) < 0)
            break;
        pos += l;
        st = decoder_feed(&d, in, l);
    }
    ok = decoder_end(&d) && st == 1;
    free(in);
    if (r < 0)
        return r;
    if (!ok)
        return vd_error(EIO, "dmg: the %s chunk at sector %" PRIu64 " (%" PRIu64 " bytes at %"
                        PRIu64 ") does not decompress to %" PRIu64 " bytes",
                        c->type == DMG_ZLIB ? "zlib" : "bzip2", c->sector, c->length,
                        c->offset, out_len);
    return 0;
}

/* Copy len bytes from byte in of compressed chunk i, through the cache. */
static int read_compressed(vd_node *n, uint32_t i, uint64_t in, uint64_t len, uint8_t *buf)
{
    struct dmg_state *s = n->state;
    const struct dmg_chunk *c = &s->chunks[i];
    uint8_t *blk;
    int r;

    if (in == 0 && len == c->count * DMG_SECTOR)
        return load_chunk(n, c, buf);        /* the whole chunk: no copy */
    pthread_mutex_lock(&s->lock);
    if (s->cache_chunk == i) {
        memcpy(buf, s->cache + in, len);
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    pthread_mutex_unlock(&s->lock);
    if (!(blk = malloc(c->count * DMG_SECTOR)))
        return vd_error(ENOMEM, "dmg: cannot allocate a chunk buffer");
    if ((r = load_chunk(n, c, blk)) == 0) {
        memcpy(buf, blk + in, len);
        pthread_mutex_lock(&s->lock);
        uint8_t *old = s->cache;
        s->cache = blk;
        s->cache_chunk = i;
        blk = old;
        pthread_mutex_unlock(&s->lock);
    }
    free(blk);
    return r;
}

/* The error for a chunk of a type without a decompressor. */
static int unreadable(const struct dmg_chunk *c)
{
    if (c->type == DMG_LZFSE)
        return vd_error(EIO, "dmg: the chunk at sector %" PRIu64 " is lzfse-compressed, and "
                        "there is no lzfse decompressor", c->sector);
    if (c->type == DMG_ADC)
        return vd_error(EIO, "dmg: the chunk at sector %" PRIu64 " is ADC-compressed, and "
                        "there is no ADC decompressor", c->sector);
    return vd_error(EIO, "dmg: the chunk at sector %" PRIu64 " has the unknown type 0x%"
                    PRIx32, c->sector, c->type);
}

/* Read len bytes at sector-aligned off that lie in chunk i. */
static int read_in_chunk(vd_node *n, uint32_t i, uint64_t off, uint64_t len, uint8_t *buf)
{
    struct dmg_state *s = n->state;
    const struct dmg_chunk *c = &s->chunks[i];
    uint64_t in = off - c->sector * DMG_SECTOR;

    switch (c->type) {
    case DMG_ZERO_FILL:
    case DMG_IGNORE:
        memset(buf, 0, len);
        return 0;
    case DMG_RAW:
        return vd_pread(n->file, c->offset + in, len, buf, 0);
    case DMG_ZLIB:
    case DMG_BZIP2:
        return read_compressed(n, i, in, len, buf);
    default:
        return unreadable(c);
    }
}

/* Read whole sectors, chunk by chunk. */
static int dmg_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct dmg_state *s = n->state;
    uint8_t *p = buf;

    (void)flags;
    while (len) {
        uint64_t sector = off / DMG_SECTOR;
        uint32_t i = find_chunk(s, sector);
        if (i == DMG_NO_CHUNK)
            return vd_error(EIO, "dmg: sector %" PRIu64 " is in no chunk", sector);
        const struct dmg_chunk *c = &s->chunks[i];
        uint64_t left = c->sector + c->count - sector;   /* no wrap: checked at open */
        uint64_t l = left >= len / DMG_SECTOR ? len : left * DMG_SECTOR;
        int r = read_in_chunk(n, i, off, l, p);
        if (r < 0)
            return r;
        p += l;
        off += l;
        len -= l;
    }
    return 0;
}

/* Guest size: the trailer's sector count. */
static int64_t dmg_getlength(vd_node *n)
{
    struct dmg_state *s = n->state;

    return (int64_t)(s->sectors * DMG_SECTOR);
}

/* No cluster size: QEMU's get_info fails, so info has no dirty flag. */
static int64_t dmg_cluster_size(vd_node *n)
{
    (void)n;
    return -ENOTSUP;
}

static const struct vd_driver dmg_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "dmg",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct dmg_state),
    .probe = dmg_probe,
    .open = dmg_open,
    .close = dmg_close,
    .pread = dmg_pread,
    .getlength = dmg_getlength,
    .cluster_size = dmg_cluster_size,
};
VD_DRIVER_REGISTER(dmg_driver)
