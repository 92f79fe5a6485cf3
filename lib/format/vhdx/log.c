/* SPDX-License-Identifier: BSD-3-Clause */
/* The vhdx log ([MS-VHDX] 2.3): find the active sequence of entries at
 * open, replay it, and journal metadata updates.
 *
 * An entry is EntryLength bytes (a multiple of 4 KiB) of log sectors, all
 * fields little endian:
 *   sector 0     entry header (64 bytes), then up to 126 descriptors
 *   sectors 1..  more descriptors, 128 to a sector
 *   then         one data sector per data descriptor, in descriptor order
 *   then         padding to EntryLength (covered by the checksum)
 * A data descriptor ("desc") carries the first 8 and last 4 bytes of a
 * 4 KiB file sector, its data sector ("data") the 4084 between; a zero
 * descriptor ("zero") zeroes a 4 KiB-aligned range.
 *
 * Reading (vhdx_log_open): an entry is valid when its header, checksum,
 * descriptors and data sectors check and it carries the log GUID.  Valid
 * entries that follow each other in the log with sequence numbers one
 * apart form a chain; an entry whose Tail names an entry of its chain at
 * or before it ends a sequence, from that entry to it.  The active
 * sequence is the one ending at the highest sequence number.  The scan
 * looks at each log sector as an entry start at most once (an entry whose
 * header checks but whose body does not is skipped whole), and reads at
 * most SCAN_BUDGET times the log's sectors: a hostile log costs bounded
 * time and memory.  A valid entry of the active sequence whose updates
 * reach the headers, the log, or past its own LastFileOffset, or whose
 * FlushedFileOffset the file does not reach, is an error.
 *
 * Writing keeps these invariants:
 *  W1. The file size an entry records as FlushedFileOffset was made
 *      durable by a flush before the entry is written; LastFileOffset
 *      covers every sector the entry writes.
 *  W2. An entry is durable (written, flushed) before any of its updates
 *      is written in place; the updates are durable before the next entry
 *      is written.  So when an entry is written every earlier one has been
 *      applied: each entry is a sequence by itself (its Tail names it).
 *  W3. Every entry goes to the start of the log, over the previous one.
 *      No older entry of the session stays valid next to a newer one:
 *      QEMU's reader (7.2) chains the entries after the first valid one it
 *      finds without reading Tail, and would replay a stale entry over a
 *      newer update.
 *  W4. log->head != 0 while an entry may be durable but not applied (a
 *      step after its write failed); the next write, or vhdx_log_end,
 *      applies it first.
 * All-zero sectors of an update go as zero descriptors.  QEMU 7.2 reads
 * only the first descriptor sector of an entry right: keep an update
 * under 127 sectors (with data) for QEMU to replay it. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format/vhdx/crc32c.h"
#include "format/vhdx/log.h"
#include "util/checked.h"

#define LOG_SECTOR 4096u
#define LOG_MIB (1u << 20)
#define HEADER_AREA LOG_MIB          /* file identifier, headers, region tables */
#define DESC_SIZE 32u
#define DESC_PER_SECTOR (LOG_SECTOR / DESC_SIZE)
#define DESC_IN_HEADER 2u            /* descriptor slots the entry header takes */
/* No file offset an entry names may pass this (64 TiB of guest data and
 * its metadata fit well below). */
#define MAX_FILE_OFFSET (1ull << 47)
#define SCAN_CHUNK 64u               /* log sectors read at a time */
#define SCAN_BUDGET 8u               /* sectors read by a scan, per log sector */

/* Entry header fields. */
#define EH_SIG 0
#define EH_CSUM 4
#define EH_LEN 8
#define EH_TAIL 12
#define EH_SEQ 16
#define EH_NDESC 24
#define EH_GUID 32
#define EH_FLUSHED 48
#define EH_LAST 56
/* Descriptor fields (zero descriptors: D_LEAD is ZeroLength). */
#define D_TRAIL 4
#define D_LEAD 8
#define D_OFF 16
#define D_SEQ 24
/* Data sector fields. */
#define DS_SEQ_HIGH 4
#define DS_DATA 8
#define DS_DATA_LEN 4084u
#define DS_SEQ_LOW 4092

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p)
{
    return le32(p) | (uint64_t)le32(p + 4) << 32;
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

static inline void put_le64(uint8_t *p, uint64_t v)
{
    put_le32(p, (uint32_t)v);
    put_le32(p + 4, (uint32_t)(v >> 32));
}

/* What a valid entry says; positions are in log sectors. */
struct entry {
    uint32_t pos, nsect, tail;
    uint32_t ndesc, desc_sectors, ndata;
    uint64_t seq, flushed, last;
};

/* Reads of one scan or walk, against a budget of sectors. */
struct reader {
    struct vhdx_log *log;
    uint32_t total;                /* sectors in the log */
    uint64_t budget;
    uint8_t *buf;                  /* SCAN_CHUNK sectors */
};

/* The best sequence found so far. */
struct best {
    bool found;
    uint32_t tail, head_end;       /* tail entry, sector after the head */
    uint64_t head_seq;
};

static uint32_t log_sectors(const struct vhdx_log *log)
{
    return log->length / LOG_SECTOR;
}

static bool guid_is_zero(const uint8_t g[16])
{
    static const uint8_t zero[16];
    return !memcmp(g, zero, 16);
}

/* Sectors of descriptors for ndesc descriptors (never 0). */
static uint64_t desc_sectors_for(uint64_t ndesc)
{
    return div_round_up(ndesc + DESC_IN_HEADER, DESC_PER_SECTOR);
}

/* Read n log sectors from sector pos on, wrapping at the end of the log. */
static int read_sectors(struct vhdx_log *log, uint32_t pos, uint32_t n, uint8_t *buf)
{
    uint32_t total = log_sectors(log);

    while (n) {
        uint32_t run = VD_MIN(n, total - pos);
        int r = vd_pread(log->file, log->offset + (uint64_t)pos * LOG_SECTOR,
                         (uint64_t)run * LOG_SECTOR, buf, 0);
        if (r < 0)
            return r;
        buf += (size_t)run * LOG_SECTOR;
        n -= run;
        pos = (pos + run) % total;
    }
    return 0;
}

/* read_sectors, charged to the reader's budget. */
static int reader_read(struct reader *rd, uint32_t pos, uint32_t n, uint8_t *buf)
{
    if (rd->budget < n)
        return vd_error(EINVAL, "vhdx: the log has too many damaged entries to "
                        "scan (hostile image?)");
    rd->budget -= n;
    return read_sectors(rd->log, pos, n, buf);
}

/* Check what the entry header alone tells; fill e from it. */
static bool parse_header(const struct vhdx_log *log, const uint8_t *h, uint32_t pos,
                         struct entry *e)
{
    uint32_t len = le32(h + EH_LEN), tail = le32(h + EH_TAIL);
    uint64_t dsect = desc_sectors_for(le32(h + EH_NDESC));

    if (memcmp(h + EH_SIG, "loge", 4) || memcmp(h + EH_GUID, log->guid, 16))
        return false;
    if (!len || len % LOG_SECTOR || len > log->length)
        return false;
    if (tail % LOG_SECTOR || tail >= log->length || dsect > len / LOG_SECTOR)
        return false;
    *e = (struct entry){
        .pos = pos, .nsect = len / LOG_SECTOR, .tail = tail / LOG_SECTOR,
        .ndesc = le32(h + EH_NDESC), .desc_sectors = (uint32_t)dsect,
        .seq = le64(h + EH_SEQ), .flushed = le64(h + EH_FLUSHED),
        .last = le64(h + EH_LAST),
    };
    return e->seq != 0;
}

/* Check one descriptor against its entry; *is_data says its kind. */
static bool check_desc(const struct entry *e, const uint8_t *d, bool *is_data)
{
    if (le64(d + D_SEQ) != e->seq || le64(d + D_OFF) % LOG_SECTOR)
        return false;
    *is_data = !memcmp(d, "desc", 4);
    if (*is_data)
        return true;
    return !memcmp(d, "zero", 4) && le64(d + D_LEAD) % LOG_SECTOR == 0;
}

/* Check descriptor sector i of an entry, counting data descriptors. */
static bool check_desc_sector(struct entry *e, uint32_t i, const uint8_t *s)
{
    uint64_t first = (uint64_t)i * DESC_PER_SECTOR;
    uint32_t slot = i ? 0 : DESC_IN_HEADER;

    for (; slot < DESC_PER_SECTOR; slot++) {
        uint64_t k = first + slot - DESC_IN_HEADER;
        bool is_data;

        if (k >= e->ndesc)
            break;
        if (!check_desc(e, s + slot * DESC_SIZE, &is_data))
            return false;
        e->ndata += is_data;
    }
    return true;
}

/* Check a data sector's signature and sequence number halves. */
static bool check_data_sector(const struct entry *e, const uint8_t *s)
{
    return !memcmp(s, "data", 4) && le32(s + DS_SEQ_HIGH) == (uint32_t)(e->seq >> 32) &&
           le32(s + DS_SEQ_LOW) == (uint32_t)e->seq;
}

/* Check sector i of an entry for its place: descriptors, data or padding. */
static bool check_sector(struct entry *e, uint32_t i, const uint8_t *s)
{
    if (i < e->desc_sectors)
        return check_desc_sector(e, i, s);
    if (i == e->desc_sectors && (uint64_t)e->desc_sectors + e->ndata > e->nsect)
        return false;
    if (i < (uint64_t)e->desc_sectors + e->ndata)
        return check_data_sector(e, s);
    return true;
}

/* Checksum and check an entry whose header parsed, chunk by chunk. */
static int check_body(struct reader *rd, struct entry *e, uint32_t csum)
{
    static const uint8_t zero[4];
    uint32_t crc = 0;

    for (uint32_t i = 0; i < e->nsect;) {
        uint32_t n = VD_MIN(SCAN_CHUNK, e->nsect - i);
        int r = reader_read(rd, (e->pos + i) % rd->total, n, rd->buf);

        if (r < 0)
            return r;
        for (uint32_t j = 0; j < n; j++, i++) {
            const uint8_t *s = rd->buf + (size_t)j * LOG_SECTOR;

            if (i == 0) {
                crc = vhdx_crc32c(crc, s, EH_CSUM);
                crc = vhdx_crc32c(crc, zero, 4);
                crc = vhdx_crc32c(crc, s + EH_CSUM + 4, LOG_SECTOR - EH_CSUM - 4);
            } else {
                crc = vhdx_crc32c(crc, s, LOG_SECTOR);
            }
            if (!check_sector(e, i, s))
                return 0;
        }
    }
    return crc == csum && (uint64_t)e->desc_sectors + e->ndata <= e->nsect;
}

/* Is there a valid entry at sector pos?  1 (e filled), 0, or -errno.
 * When 0, e->nsect is the length an entry header there claims, or 0. */
static int read_entry(struct reader *rd, uint32_t pos, struct entry *e)
{
    uint32_t csum;
    int r = reader_read(rd, pos, 1, rd->buf);

    e->nsect = 0;
    if (r < 0)
        return r;
    if (!parse_header(rd->log, rd->buf, pos, e)) {
        e->nsect = 0;
        return 0;
    }
    csum = le32(rd->buf + EH_CSUM);
    return check_body(rd, e, csum);
}

static int reader_init(struct reader *rd, struct vhdx_log *log, uint64_t budget)
{
    rd->log = log;
    rd->total = log_sectors(log);
    rd->budget = budget;
    rd->buf = malloc((size_t)SCAN_CHUNK * LOG_SECTOR);
    return rd->buf ? 0 : vd_error(ENOMEM, "vhdx: out of memory reading the log");
}

/* ---- the scan for the active sequence ---- */

/* Entries of one chain: offsets (in sectors) from the chain's start. */
struct chain {
    uint32_t start;
    uint32_t *rel;
    size_t n, cap;
};

static int chain_push(struct chain *c, uint32_t rel)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        uint32_t *p = vd_calloc_array(cap, sizeof(*p));

        if (!p)
            return vd_error(ENOMEM, "vhdx: out of memory scanning the log");
        if (c->n)
            memcpy(p, c->rel, c->n * sizeof(*p));
        free(c->rel);
        c->rel = p;
        c->cap = cap;
    }
    c->rel[c->n++] = rel;
    return 0;
}

/* Does the tail of the chain's last entry name an entry of the chain? */
static bool chain_tail_ok(const struct chain *c, uint32_t total, uint32_t tail)
{
    uint32_t rel = (tail + total - c->start) % total;
    size_t lo = 0, hi = c->n;

    while (lo < hi) {                 /* offsets increase along the chain */
        size_t mid = lo + (hi - lo) / 2;
        if (c->rel[mid] < rel)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->n && c->rel[lo] == rel;
}

/* The chain's last entry e was added: is it the head of a better sequence? */
static void consider(struct best *b, const struct chain *c, uint32_t total,
                     const struct entry *e)
{
    if (!chain_tail_ok(c, total, e->tail))
        return;
    if (b->found && e->seq <= b->head_seq)
        return;
    *b = (struct best){ .found = true, .tail = e->tail,
                        .head_end = (e->pos + e->nsect) % total, .head_seq = e->seq };
}

/* Follow the chain that starts with valid entry e; returns the sectors it
 * covers (>= 1) or -errno. */
static int64_t follow_chain(struct reader *rd, struct chain *c, struct entry e,
                            struct best *b)
{
    uint64_t covered = e.nsect;
    int r;

    c->start = e.pos;
    c->n = 0;
    if ((r = chain_push(c, 0)) < 0)
        return r;
    consider(b, c, rd->total, &e);
    while (covered < rd->total) {
        struct entry next;
        uint32_t pos = (uint32_t)((c->start + covered) % rd->total);

        if ((r = read_entry(rd, pos, &next)) < 0)
            return r;
        if (!r || next.seq != e.seq + 1 || covered + next.nsect > rd->total)
            break;
        if ((r = chain_push(c, (uint32_t)covered)) < 0)
            return r;
        consider(b, c, rd->total, &next);
        covered += next.nsect;
        e = next;
    }
    return (int64_t)covered;
}

/* Scan the whole log once for chains; the best sequence in *b. */
static int scan(struct vhdx_log *log, struct best *b)
{
    struct reader rd;
    struct chain c = { 0 };
    uint64_t pos = 0;
    int r;

    if ((r = reader_init(&rd, log, (uint64_t)SCAN_BUDGET * log_sectors(log) + 64)) < 0)
        return r;
    *b = (struct best){ .found = false };
    while (pos < rd.total) {
        struct entry e;
        int64_t covered;

        if ((r = read_entry(&rd, (uint32_t)pos, &e)) < 0)
            break;
        if (!r) {
            /* A damaged entry is skipped whole, as QEMU does: a writer
             * puts no entry inside one it writes, and the scan stays
             * linear in the log's length. */
            pos += e.nsect ? e.nsect : 1;
            continue;
        }
        if ((covered = follow_chain(&rd, &c, e, b)) < 0) {
            r = (int)covered;
            break;
        }
        pos += (uint64_t)covered;
        r = 0;
    }
    free(c.rel);
    free(rd.buf);
    return r < 0 ? r : 0;
}

/* ---- walking the active sequence: checks and replay ---- */

/* Descriptors of one entry, read a sector at a time, with the data sector
 * of each data descriptor. */
struct desc_iter {
    struct vhdx_log *log;
    const struct entry *e;
    uint32_t k, ndata;
    uint32_t loaded;               /* descriptor sector in sect, or UINT32_MAX */
    uint8_t sect[LOG_SECTOR];
    uint8_t data[LOG_SECTOR];
};

/* Next descriptor in *d (32 bytes; it->data holds a data descriptor's
 * data sector when want_data): 1, 0 at the end, or -errno. */
static int next_desc(struct desc_iter *it, const uint8_t **d, bool want_data)
{
    uint32_t total = log_sectors(it->log);
    uint64_t slot = (uint64_t)it->k + DESC_IN_HEADER;
    uint32_t s = (uint32_t)(slot / DESC_PER_SECTOR);
    int r;

    if (it->k >= it->e->ndesc)
        return 0;
    if (s != it->loaded) {
        if ((r = read_sectors(it->log, (it->e->pos + s) % total, 1, it->sect)) < 0)
            return r;
        it->loaded = s;
    }
    *d = it->sect + (slot % DESC_PER_SECTOR) * DESC_SIZE;
    it->k++;
    if (memcmp(*d, "desc", 4))
        return 1;
    if (want_data) {
        uint64_t ds = (uint64_t)it->e->desc_sectors + it->ndata;
        if ((r = read_sectors(it->log, (uint32_t)((it->e->pos + ds) % total), 1,
                              it->data)) < 0)
            return r;
        if (!check_data_sector(it->e, it->data))
            return vd_error(EIO, "vhdx: log entry %" PRIu64 " changed while it "
                            "was replayed", it->e->seq);
    }
    it->ndata++;
    return 1;
}

/* The file range a descriptor writes. */
static bool desc_range(const uint8_t *d, uint64_t *off, uint64_t *end)
{
    uint64_t len = memcmp(d, "desc", 4) ? le64(d + D_LEAD) : LOG_SECTOR;

    *off = le64(d + D_OFF);
    return !ADD_OVERFLOW(*off, len, end);
}

/* Does [off, end) stay out of the headers and the log, within limit? */
static int check_range(const struct vhdx_log *log, const struct entry *e,
                       uint64_t off, uint64_t end, uint64_t limit)
{
    if (off < HEADER_AREA)
        return vd_error(EINVAL, "vhdx: log entry %" PRIu64 " writes into the "
                        "headers (offset 0x%" PRIx64 ")", e->seq, off);
    if (off < log->offset + log->length && end > log->offset)
        return vd_error(EINVAL, "vhdx: log entry %" PRIu64 " writes into the log "
                        "(offset 0x%" PRIx64 ")", e->seq, off);
    if (end > limit)
        return vd_error(EINVAL, "vhdx: log entry %" PRIu64 " writes past its last "
                        "file offset (0x%" PRIx64 " > 0x%" PRIx64 ")", e->seq, end,
                        limit);
    return 0;
}

/* Check the updates of a valid entry against the file; *max_end is the
 * end of its last-reaching update. */
static int check_entry_updates(struct vhdx_log *log, const struct entry *e,
                               uint64_t flen, uint64_t *max_end)
{
    struct desc_iter *it = calloc(1, sizeof(*it));
    uint64_t limit, last_up = 0;
    const uint8_t *d;
    int r;

    if (!it)
        return vd_error(ENOMEM, "vhdx: out of memory reading the log");
    *max_end = 0;
    r = 0;
    if (e->flushed > flen)
        r = vd_error(EINVAL, "vhdx: the file (%" PRIu64 " bytes) is shorter than "
                     "log entry %" PRIu64 " says it was (%" PRIu64 "): truncated "
                     "image", flen, e->seq, e->flushed);
    else if (e->last > MAX_FILE_OFFSET || !round_up_checked(e->last, LOG_MIB, &last_up))
        r = vd_error(EINVAL, "vhdx: log entry %" PRIu64 " has a last file offset "
                     "too large (0x%" PRIx64 ")", e->seq, e->last);
    limit = VD_MAX(flen, r < 0 ? 0 : last_up);
    *it = (struct desc_iter){ .log = log, .e = e, .loaded = UINT32_MAX };
    while (r >= 0 && (r = next_desc(it, &d, false)) > 0) {
        uint64_t off, end;

        if (!desc_range(d, &off, &end))
            r = vd_error(EINVAL, "vhdx: log entry %" PRIu64 " has a descriptor "
                         "out of range", e->seq);
        else if ((r = check_range(log, e, off, end, limit)) >= 0)
            *max_end = VD_MAX(*max_end, end);
    }
    free(it);
    return r < 0 ? r : 0;
}

/* Grow the file to at least size (never shrink). */
static int grow_file(struct vhdx_log *log, uint64_t size)
{
    int64_t flen = vd_getlength(log->file);

    if (flen < 0)
        return (int)flen;
    if ((uint64_t)flen >= size)
        return 0;
    return vd_truncate(log->file, size, true, VD_PREALLOC_OFF);
}

/* Write one descriptor's update in place (the file already reaches it).
 * Past *written the file reads as zeroes (it was grown for this entry):
 * zero descriptors stop there, data descriptors move it. */
static int apply_desc(struct vhdx_log *log, const struct desc_iter *it,
                      const uint8_t *d, uint64_t *written)
{
    uint8_t sector[LOG_SECTOR];
    uint64_t off = le64(d + D_OFF), end;

    if (memcmp(d, "desc", 4)) {
        end = VD_MIN(off + le64(d + D_LEAD), *written);   /* checked: no overflow */
        return end > off ? vd_pwrite_zeroes(log->file, off, end - off, 0) : 0;
    }
    *written = VD_MAX(*written, off + LOG_SECTOR);
    memcpy(sector, d + D_LEAD, 8);
    memcpy(sector + 8, it->data + DS_DATA, DS_DATA_LEN);
    memcpy(sector + 8 + DS_DATA_LEN, d + D_TRAIL, 4);
    return vd_pwrite(log->file, off, LOG_SECTOR, sector, 0);
}

/* Apply a checked entry: grow the file to reach its updates, write them
 * in order, then grow to its LastFileOffset. */
static int apply_entry(struct vhdx_log *log, const struct entry *e, uint64_t max_end)
{
    struct desc_iter *it = calloc(1, sizeof(*it));
    int64_t flen = vd_getlength(log->file);
    uint64_t last_up, written;
    const uint8_t *d;
    int r;

    if (!it || flen < 0) {
        free(it);
        return flen < 0 ? (int)flen : vd_error(ENOMEM, "vhdx: out of memory replaying "
                                               "the log");
    }
    written = (uint64_t)flen;
    *it = (struct desc_iter){ .log = log, .e = e, .loaded = UINT32_MAX };
    r = grow_file(log, max_end);
    while (r >= 0 && (r = next_desc(it, &d, true)) > 0)
        r = apply_desc(log, it, d, &written);
    free(it);
    if (r < 0)
        return r;
    if (!round_up_checked(e->last, LOG_MIB, &last_up))
        return vd_error(EINVAL, "vhdx: log entry %" PRIu64 " has a last file "
                        "offset too large", e->seq);
    return grow_file(log, last_up);
}

/* Walk the active sequence (log->tail to sequence number log->sequence -
 * 1): check every entry, and apply it when apply. */
static int walk(struct vhdx_log *log, bool apply)
{
    struct reader rd;
    uint64_t head_seq = log->sequence - 1;
    uint32_t pos = log->tail / LOG_SECTOR;
    bool done = false;
    int r;

    if ((r = reader_init(&rd, log, 2 * (uint64_t)log_sectors(log) + 64)) < 0)
        return r;
    for (uint32_t steps = 0; steps < rd.total && !done && r >= 0; steps++) {
        struct entry e;
        int64_t flen = vd_getlength(log->file);
        uint64_t max_end = 0;

        if ((r = flen < 0 ? (int)flen : read_entry(&rd, pos, &e)) <= 0) {
            if (!r)
                r = vd_error(EIO, "vhdx: log entry at 0x%" PRIx64 " is no longer "
                             "valid", log->offset + (uint64_t)pos * LOG_SECTOR);
            break;
        }
        if ((r = check_entry_updates(log, &e, (uint64_t)flen, &max_end)) >= 0 && apply)
            r = apply_entry(log, &e, max_end);
        done = e.seq >= head_seq;
        pos = (pos + e.nsect) % rd.total;
    }
    free(rd.buf);
    if (r >= 0 && !done)
        r = vd_error(EIO, "vhdx: the log's active sequence does not end");
    return r;
}

/* ---- the interface ---- */

/* See log.h. */
int vhdx_log_open(struct vhdx_log *log, vd_node *owner, vd_node *file,
                  uint64_t offset, uint32_t length, const uint8_t guid[16],
                  bool *needs_replay)
{
    struct best b;
    int64_t flen;
    int r;

    *log = (struct vhdx_log){ .file = file, .owner = owner, .offset = offset,
                              .length = length, .sequence = 1 };
    memcpy(log->guid, guid, 16);
    *needs_replay = false;
    if (offset < HEADER_AREA || offset % LOG_MIB)
        return vd_error(EINVAL, "vhdx: log offset 0x%" PRIx64 " is not a multiple "
                        "of 1 MiB past the headers", offset);
    if (guid_is_zero(guid) || !length)
        return 0;
    if (length % LOG_MIB)
        return vd_error(EINVAL, "vhdx: log length %" PRIu32 " is not a multiple "
                        "of 1 MiB", length);
    if ((flen = vd_getlength(file)) < 0)
        return (int)flen;
    /* A log past the end of the file holds no entry (QEMU reads zeroes
     * there); writes refuse to use it. */
    if (!range_ok(offset, length, (uint64_t)flen))
        return 0;
    if ((r = scan(log, &b)) < 0 || !b.found)
        return r;
    if (b.head_seq == UINT64_MAX)
        return vd_error(EINVAL, "vhdx: the log's sequence numbers run out");
    log->tail = b.tail * LOG_SECTOR;
    log->head = b.head_end * LOG_SECTOR;
    log->sequence = b.head_seq + 1;
    if ((r = walk(log, false)) < 0)
        return r;
    *needs_replay = true;
    return 0;
}

/* See log.h. */
int vhdx_log_replay(struct vhdx_log *log)
{
    int r;

    if (log->sequence < 2)
        return 0;
    if ((r = walk(log, true)) < 0 || (r = vd_flush(log->file)) < 0)
        return r;
    log->head = log->tail = 0;
    return 0;
}

/* See log.h. */
void vhdx_log_begin(struct vhdx_log *log, const uint8_t guid[16])
{
    memcpy(log->guid, guid, 16);
    log->head = log->tail = 0;
    if (!log->sequence)
        log->sequence = 1;
    log->active = true;
}

/* Apply an entry that may be durable but not applied (W4). */
static int settle(struct vhdx_log *log)
{
    struct reader rd;
    struct entry e;
    int r;

    if (!log->head)
        return 0;
    if ((r = reader_init(&rd, log, (uint64_t)log_sectors(log) + 64)) < 0)
        return r;
    r = read_entry(&rd, log->tail / LOG_SECTOR, &e);
    free(rd.buf);
    if (r < 0)
        return r;
    if (r && e.seq == log->sequence - 1) {
        if ((r = walk(log, true)) < 0 || (r = vd_flush(log->file)) < 0)
            return r;
    }
    log->head = log->tail = 0;
    return 0;
}

/* ---- building an entry ---- */

/* The 4 KiB file sectors one entry updates, with their new contents. */
struct plan {
    uint64_t *sect;                /* sorted, distinct sector numbers */
    size_t n;
    uint8_t *content;              /* n sectors */
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The sector numbers [*first, *end) update u covers. */
static int update_sectors(const struct vhdx_log_update *u, uint64_t *first, uint64_t *end)
{
    uint64_t e;

    if (ADD_OVERFLOW(u->off, (uint64_t)u->len, &e) || e > MAX_FILE_OFFSET)
        return vd_error(EINVAL, "vhdx: metadata update at 0x%" PRIx64 " out of range",
                        u->off);
    *first = u->off / LOG_SECTOR;
    *end = div_round_up(e, LOG_SECTOR);
    return 0;
}

/* Collect the distinct sectors of the updates (at most cap of them). */
static int plan_sectors(struct plan *p, const struct vhdx_log_update *u, size_t n,
                        uint64_t cap)
{
    uint64_t count = 0, first = 0, end = 0;
    size_t k = 0;
    int r;

    for (size_t i = 0; i < n; i++) {
        if ((r = update_sectors(&u[i], &first, &end)) < 0)
            return r;
        if (u[i].len && (count += end - first) > 4 * cap)
            break;
    }
    if (count > 4 * cap || !(p->sect = vd_calloc_array((size_t)count, sizeof(uint64_t))))
        return count > 4 * cap ? vd_error(ENOSPC, "vhdx: metadata update too large "
                                          "for the log") :
                                 vd_error(ENOMEM, "vhdx: out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!u[i].len)
            continue;
        update_sectors(&u[i], &first, &end);
        for (uint64_t s = first; s < end; s++)
            p->sect[k++] = s;
    }
    qsort(p->sect, k, sizeof(uint64_t), cmp_u64);
    p->n = 0;
    for (size_t i = 0; i < k; i++)
        if (!p->n || p->sect[p->n - 1] != p->sect[i])
            p->sect[p->n++] = p->sect[i];
    if (p->n > cap)
        return vd_error(ENOSPC, "vhdx: a metadata update of %zu sectors does not "
                        "fit in the log", p->n);
    return 0;
}

/* Read the current contents of the planned sectors (zeroes past the end
 * of the file), run by run. */
static int plan_read(struct vhdx_log *log, struct plan *p)
{
    int64_t flen = vd_getlength(log->file);

    if (flen < 0)
        return (int)flen;
    for (size_t i = 0, j; i < p->n; i = j) {
        uint64_t off = p->sect[i] * LOG_SECTOR, len, have;
        int r;

        for (j = i + 1; j < p->n && p->sect[j] == p->sect[j - 1] + 1; j++)
            ;
        len = (uint64_t)(j - i) * LOG_SECTOR;
        have = off < (uint64_t)flen ? VD_MIN(len, (uint64_t)flen - off) : 0;
        if (have && (r = vd_pread(log->file, off, have, p->content + i * LOG_SECTOR,
                                  0)) < 0)
            return r;
    }
    return 0;
}

/* Index of sector s in the plan (it is there). */
static size_t plan_index(const struct plan *p, uint64_t s)
{
    size_t lo = 0, hi = p->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->sect[mid] < s)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Lay the updates over the read sectors, in order (a NULL buf: zeroes). */
static void plan_overlay(struct plan *p, const struct vhdx_log_update *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t s = u[i].off / LOG_SECTOR;
        uint8_t *dst;

        if (!u[i].len)
            continue;
        dst = p->content + plan_index(p, s) * LOG_SECTOR + u[i].off % LOG_SECTOR;
        if (u[i].buf)
            memcpy(dst, u[i].buf, u[i].len);
        else
            memset(dst, 0, u[i].len);
    }
}

static bool sector_is_zero(const struct plan *p, size_t i)
{
    return buffer_is_zero(p->content + i * LOG_SECTOR, LOG_SECTOR);
}

/* Descriptors the plan needs: a data descriptor per sector with data, a
 * zero descriptor per run of all-zero sectors. */
static void plan_count(const struct plan *p, uint32_t *ndesc, uint32_t *ndata)
{
    *ndesc = *ndata = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (!sector_is_zero(p, i))
            (*ndesc)++, (*ndata)++;
        else if (!i || !sector_is_zero(p, i - 1) || p->sect[i] != p->sect[i - 1] + 1)
            (*ndesc)++;
    }
}

/* Fill a data descriptor and its data sector from a file sector. */
static void put_data(uint8_t *d, uint8_t *ds, const uint8_t *sector, uint64_t off,
                     uint64_t seq)
{
    memcpy(d, "desc", 4);
    memcpy(d + D_TRAIL, sector + 8 + DS_DATA_LEN, 4);
    memcpy(d + D_LEAD, sector, 8);
    put_le64(d + D_OFF, off);
    put_le64(d + D_SEQ, seq);
    memcpy(ds, "data", 4);
    put_le32(ds + DS_SEQ_HIGH, (uint32_t)(seq >> 32));
    memcpy(ds + DS_DATA, sector + 8, DS_DATA_LEN);
    put_le32(ds + DS_SEQ_LOW, (uint32_t)seq);
}

/* Fill a zero descriptor. */
static void put_zero(uint8_t *d, uint64_t off, uint64_t len, uint64_t seq)
{
    memcpy(d, "zero", 4);
    put_le64(d + D_LEAD, len);
    put_le64(d + D_OFF, off);
    put_le64(d + D_SEQ, seq);
}

/* Address of descriptor k in an entry buffer. */
static uint8_t *desc_at(uint8_t *entry, uint32_t k)
{
    return entry + ((size_t)k + DESC_IN_HEADER) * DESC_SIZE;
}

/* Fill the descriptors and data sectors of an entry from the plan. */
static void fill_descs(uint8_t *entry, uint32_t desc_sectors, const struct plan *p,
                       uint64_t seq)
{
    uint32_t k = 0, nd = 0;

    for (size_t i = 0; i < p->n; i++) {
        uint64_t off = p->sect[i] * LOG_SECTOR;

        if (!sector_is_zero(p, i)) {
            uint8_t *ds = entry + ((size_t)desc_sectors + nd++) * LOG_SECTOR;
            put_data(desc_at(entry, k++), ds, p->content + i * LOG_SECTOR, off, seq);
        } else if (k && !memcmp(desc_at(entry, k - 1), "zero", 4) &&
                   le64(desc_at(entry, k - 1) + D_OFF) +
                   le64(desc_at(entry, k - 1) + D_LEAD) == off) {
            uint8_t *d = desc_at(entry, k - 1);
            put_le64(d + D_LEAD, le64(d + D_LEAD) + LOG_SECTOR);
        } else {
            put_zero(desc_at(entry, k++), off, LOG_SECTOR, seq);
        }
    }
}

/* Build the entry for a plan: *out (nsect sectors, malloc'd). */
static int build_entry(struct vhdx_log *log, const struct plan *p, uint64_t flushed,
                       uint64_t last, uint8_t **out, uint32_t *nsect)
{
    uint32_t ndesc, ndata, dsect;
    uint8_t *e;

    plan_count(p, &ndesc, &ndata);
    dsect = (uint32_t)desc_sectors_for(ndesc);
    if ((uint64_t)dsect + ndata > log_sectors(log))
        return vd_error(ENOSPC, "vhdx: a metadata update of %zu sectors does not "
                        "fit in the log", p->n);
    *nsect = dsect + ndata;
    if (!(e = vd_calloc_array(*nsect, LOG_SECTOR)))
        return vd_error(ENOMEM, "vhdx: out of memory");
    memcpy(e + EH_SIG, "loge", 4);
    put_le32(e + EH_LEN, *nsect * LOG_SECTOR);
    put_le32(e + EH_TAIL, 0);
    put_le64(e + EH_SEQ, log->sequence);
    put_le32(e + EH_NDESC, ndesc);
    memcpy(e + EH_GUID, log->guid, 16);
    put_le64(e + EH_FLUSHED, flushed);
    put_le64(e + EH_LAST, last);
    fill_descs(e, dsect, p, log->sequence);
    put_le32(e + EH_CSUM, vhdx_crc32c_skip(e, (size_t)*nsect * LOG_SECTOR, EH_CSUM));
    *out = e;
    return 0;
}

/* Write the planned sectors in place, growing the file first. */
static int plan_apply(struct vhdx_log *log, const struct plan *p, uint64_t last)
{
    int64_t flen = vd_getlength(log->file);
    uint64_t end = (p->sect[p->n - 1] + 1) * LOG_SECTOR;
    int r;

    if (flen < 0)
        return (int)flen;
    if (end > (uint64_t)flen && (r = grow_file(log, last)) < 0)
        return r;
    for (size_t i = 0, j; i < p->n; i = j) {
        for (j = i + 1; j < p->n && p->sect[j] == p->sect[j - 1] + 1; j++)
            ;
        if ((r = vd_pwrite(log->file, p->sect[i] * LOG_SECTOR,
                           (uint64_t)(j - i) * LOG_SECTOR, p->content + i * LOG_SECTOR,
                           0)) < 0)
            return r;
    }
    return 0;
}

/* Flush, then record the durable file size (W1) and the size the entry
 * needs. */
static int entry_sizes(struct vhdx_log *log, const struct plan *p, uint64_t *flushed,
                       uint64_t *last)
{
    uint64_t end = (p->sect[p->n - 1] + 1) * LOG_SECTOR;
    int64_t flen;
    int r;

    vd_event(log->owner, "vhdx_log_flush_data");
    if ((r = vd_flush(log->file)) < 0)
        return r;
    if ((flen = vd_getlength(log->file)) < 0)
        return (int)flen;
    *flushed = round_down((uint64_t)flen, LOG_MIB);
    if (!round_up_checked(VD_MAX((uint64_t)flen, end), LOG_MIB, last))
        return vd_error(EINVAL, "vhdx: file too large");
    return 0;
}

/* Write, flush, apply and flush one planned entry (W2, W3). */
static int commit_plan(struct vhdx_log *log, const struct plan *p)
{
    uint64_t flushed = 0, last = 0;
    uint8_t *entry = NULL;
    uint32_t nsect = 0;
    int r;

    if ((r = entry_sizes(log, p, &flushed, &last)) < 0 ||
        (r = build_entry(log, p, flushed, last, &entry, &nsect)) < 0)
        return r;
    log->tail = 0;
    log->head = nsect * LOG_SECTOR % log->length;
    if (!log->head)
        log->head = LOG_SECTOR;       /* a full log: still "pending" (W4) */
    log->sequence++;
    vd_event(log->owner, "vhdx_log_write_entry");
    r = vd_pwrite(log->file, log->offset, (uint64_t)nsect * LOG_SECTOR, entry, 0);
    free(entry);
    if (r < 0)
        return r;
    vd_event(log->owner, "vhdx_log_flush_entry");
    if ((r = vd_flush(log->file)) < 0)
        return r;
    vd_event(log->owner, "vhdx_log_write_update");
    if ((r = plan_apply(log, p, last)) < 0)
        return r;
    vd_event(log->owner, "vhdx_log_flush_update");
    if ((r = vd_flush(log->file)) < 0)
        return r;
    log->head = 0;
    return 0;
}

/* Is the log usable for writing? */
static int check_writable_log(struct vhdx_log *log)
{
    int64_t flen = vd_getlength(log->file);

    if (!log->active)
        return vd_error(EINVAL, "vhdx: metadata update outside a log session");
    if (flen < 0)
        return (int)flen;
    if (log->length < LOG_MIB || log->length % LOG_MIB || log->offset < HEADER_AREA ||
        log->offset % LOG_MIB || !range_ok(log->offset, log->length, (uint64_t)flen))
        return vd_error(EINVAL, "vhdx: the image has no usable log (offset 0x%"
                        PRIx64 ", length %" PRIu32 ")", log->offset, log->length);
    return 0;
}

/* See log.h. */
int vhdx_log_write(struct vhdx_log *log, const struct vhdx_log_update *u, size_t n)
{
    struct plan p = { 0 };
    int r;

    if ((r = check_writable_log(log)) < 0 || (r = settle(log)) < 0)
        return r;
    if (!log->sequence)
        log->sequence = 1;              /* wrapped: 0 is no sequence number */
    if ((r = plan_sectors(&p, u, n, log_sectors(log))) < 0)
        goto out;
    if (!p.n)
        goto out;
    if (!(p.content = vd_calloc_array(p.n, LOG_SECTOR))) {
        r = vd_error(ENOMEM, "vhdx: out of memory");
        goto out;
    }
    if ((r = plan_read(log, &p)) < 0)
        goto out;
    plan_overlay(&p, u, n);
    r = commit_plan(log, &p);
out:
    free(p.sect);
    free(p.content);
    return r;
}

/* See log.h. */
void vhdx_log_end(struct vhdx_log *log)
{
    if (log->active && log->head)
        settle(log);
    log->active = false;
}
