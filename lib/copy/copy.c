/* SPDX-License-Identifier: BSD-3-Clause */
/* The copy engine behind convert, dd and commit: N worker threads, each
 * with one buffer (so bytes in flight are bounded by workers x chunk),
 * driven by block status so holes are never read, with zero detection at
 * min_sparse granularity, optional out-of-order writes, salvage, a rate
 * limit, and compressed output (each worker compresses its own clusters, so
 * compression runs on every core).
 *
 * Invariants:
 *  1. Only the planner (plan_next, under st->lock) walks the source; it cuts
 *     it into jobs in ascending order, each job one kind over one source and
 *     numbered by seq in that order.
 *  2. In order mode, the writes of job k start only once the writes of jobs
 *     0..k-1 have finished (st->write_seq == k); reads run in parallel.
 *     Order decides where a format allocates what, so a target that stores
 *     guest data as it is (raw) is written out of order: qemu-img -W's
 *     result, with every worker's write in flight at once (network
 *     targets, page-cache copies on every core).
 *  3. The first error wins: it is recorded once in st, every worker stops at
 *     its next step, and the message is re-raised on the caller's thread.
 *  4. With compression every job starts on a target cluster boundary and
 *     ends on one (or at the end of the data), so no two jobs share a
 *     cluster; data jobs may then span sources.  Compressed jobs write out
 *     of order: each cluster is written once, so the order only decides
 *     where in the file the compressed bytes land.  A target that
 *     compresses in two steps (vd_compress_cluster) gets one cluster per
 *     job, compressed by its worker before the job's turn and stored in
 *     order, so its file is laid out as qemu-img lays it out.
 *  5. Targets allocate as qemu-img 7.2 leaves them, so jobs are cut where
 *     qemu-img cuts its requests whenever that decides allocation: convert
 *     with zero detection makes every data job one qemu-img request (an
 *     answer of block status trimmed to a source cluster, then 2 MiB pieces
 *     from its start) and decides its zero runs by qemu-img's rule
 *     (sparse.c); commit follows QEMU's active commit job (plan_commit).
 *     Workers may run such jobs in parallel: each decision rests on its own
 *     job's bytes only.
 *  6. A data job with zero detection does not read what is known to read
 *     as zeroes (holes of the file under a format, blocks a format's
 *     data_extent calls zero: holes.c); the scan counts those sectors zero
 *     and the parts that data runs write are zeroed in the buffer, so every
 *     decision is the one reading them would give.
 *  7. A worker's buffer comes from vd_iobuf_alloc, so a driver may keep it
 *     past a request it gave up on (util/iobuf.h): after a failed request
 *     the worker stops and only frees it.  With --salvage a failed read is
 *     zeroed and the buffer used on, so there it is plain memory, and
 *     drivers read and write through their own. */
#include <errno.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vdisk/copy.h"
#include "vdisk/driver.h"
#include "util/checked.h"
#include "util/iobuf.h"
#include "holes.h"
#include "sparse.h"

#define COPY_DEFAULT_WORKERS 8
#define COPY_MAX_WORKERS 64
#define COPY_DEFAULT_CHUNK (1u << 20)
#define COPY_COMPRESS_CHUNK (256u << 10)
#define COPY_ZERO_CHUNK (1ull << 30)
#define COPY_SECTOR 512u
/* qemu-img convert's request: at most 2 MiB of data, status queried over
 * at most INT_MAX rounded down to sectors. */
#define QEMU_CONVERT_BUF (2u << 20)
#define QEMU_MAX_REQUEST 0x7ffffe00ull
/* qemu-img commit (QEMU's active commit job): dirty chunks handled in
 * groups of up to 16 MiB, data copied in pieces of up to 1 MiB. */
#define QEMU_COMMIT_BUF (16u << 20)
#define QEMU_COMMIT_MAX_IO (1u << 20)
#define QEMU_COMMIT_MAX_IOV 1024u

/* What a job does with its range. */
enum job_kind {
    JOB_DATA,    /* read the source, write it (zero runs become zeroes) */
    JOB_ZERO,    /* the source reads as zero: write zeroes */
    JOB_FILL,    /* the source reads as zero, -S 0: write zero bytes */
    JOB_DISCARD, /* commit: the chain holds nothing here: discard */
    JOB_SKIP,    /* nothing to write (planner only) */
};

/* One unit of work, cut by the planner. */
struct copy_job {
    enum job_kind kind;
    vd_node *src;
    size_t si;       /* index of src */
    uint64_t soff;   /* offset in src */
    uint64_t pos;    /* offset in the concatenation (for messages) */
    uint64_t doff;   /* offset in dst */
    uint64_t len;
    uint64_t seq;
    size_t packed_len;   /* compressed ahead: bytes at packed_off; 0 = zeroes */
    vd_node *hfile;      /* set when block status said the job's bytes */
    uint64_t host;       /* lie as they are at host in hfile */
};

/* A worker's own memory: its buffer, the zero runs of its job, the parts
 * of the job known to read as zeroes, the file it last asked about. */
struct worker_mem {
    char *buf;
    struct sparse_map map;
    struct sparse_known known;
    struct hole_cache holes;
};

/* A worker waiting for its turn to write (in order mode); each has its own
 * condition so that a finished job wakes exactly the next writer. */
struct copy_waiter {
    pthread_cond_t cond;
    uint64_t seq;
    bool waiting;
    /* In order mode a worker whose job is read parks it here; the worker
     * that writes the job before writes it too (so ordered writes go on
     * without a thread switch) and sets done. */
    bool parked, done;
    int result;
    const struct copy_job *job;
    char *buf;
    const struct sparse_map *map;
};

/* Shared state of one vd_copy call. */
struct copy_state {
    const struct vd_copy_params *p;
    pthread_mutex_t lock;
    struct copy_waiter waiters[COPY_MAX_WORKERS];
    int nworkers;                 /* ids handed out so far */
    uint64_t *src_len;        /* length of every source */
    /* planner cursor */
    size_t si;                /* current source */
    uint64_t soff, pos, end, doff;
    uint64_t bs_start, bs_end; /* cached block status of src si */
    enum job_kind bs_kind;
    vd_node *bs_file;         /* set when the answer's data lies as it is */
    uint64_t bs_map;          /* at bs_map in bs_file (at bs_start) */
    bool bs_valid;
    uint64_t next_seq, write_seq;
    /* settings */
    uint64_t chunk;
    bool skip_zero;           /* zero ranges need no write */
    int zero_flags;
    bool ooo;                 /* writes need not wait for earlier jobs */
    uint64_t cs;              /* -c: target cluster size */
    bool compress_ahead;      /* -c in two steps: compress, then store in order */
    uint64_t packed_off;      /* where in a worker's buffer compressed bytes go */
    uint64_t data_end;        /* target offset where the copied data ends */
    uint64_t dst_size;        /* length of the target */
    int base_depth;           /* commit: chain depth of p->base */
    bool qemu_requests;       /* data jobs are qemu-img convert's requests */
    uint64_t sparse_align;    /* where zero detection steers run ends */
    uint64_t gran;            /* commit: bytes per dirty chunk */
    uint64_t base_cs;         /* commit: the base's cluster size */
    uint64_t grp_end;         /* commit: end of the current group of chunks */
    uint64_t copy_left;       /* commit: rest of a copy longer than a job */
    /* progress, errors, rate limit */
    uint64_t done, total;
    int err;
    char msg[1024];
    struct timespec start;
    uint64_t rate_bytes;
    atomic_bool no_offload;       /* vd_copy_range said -ENOTSUP once */
};

/* Wake every waiting worker (on error); caller holds the lock. */
static void wake_all_locked(struct copy_state *st)
{
    for (int i = 0; i < st->nworkers; i++)
        pthread_cond_signal(&st->waiters[i].cond);
}

/* Record the first error (caller holds the lock) and wake every waiter. */
static void set_error_locked(struct copy_state *st, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error_locked(struct copy_state *st, int err, const char *fmt, ...)
{
    va_list ap;

    if (!st->err) {
        st->err = err < 0 ? err : -EIO;
        va_start(ap, fmt);
        vsnprintf(st->msg, sizeof(st->msg), fmt, ap);
        va_end(ap);
    }
    wake_all_locked(st);
}

/* Record an I/O failure ("error while reading at byte N: ...") from a worker. */
static void io_error(struct copy_state *st, int err, const char *what, uint64_t pos)
{
    pthread_mutex_lock(&st->lock);
    set_error_locked(st, err, "error while %s at byte %llu: %s", what,
                     (unsigned long long)pos, strerror(-err));
    pthread_mutex_unlock(&st->lock);
}

/* Account n finished bytes and report progress; caller holds the lock. */
static void progress_locked(struct copy_state *st, uint64_t n)
{
    st->done += n;
    if (st->p->progress)
        st->p->progress(st->p->opaque, st->done, st->total);
}

/* The kind of a block-status answer for this copy. */
static enum job_kind status_kind(const struct copy_state *st, int r, int depth)
{
    const struct vd_copy_params *p = st->p;
    bool zero = (r & VD_BS_ZERO) || !(r & VD_BS_DATA);

    /* commit: only what the layers above the base allocate, zeroes too;
     * the zeroes past a backing file shorter than its overlay count as the
     * short layer's own (QEMU's rule), so they are committed as well. */
    if (p->base) {
        if (depth >= st->base_depth || (!(r & VD_BS_ALLOCATED) && !(r & VD_BS_ZERO)))
            return JOB_SKIP;
        return zero ? JOB_ZERO : JOB_DATA;
    }
    /* -B: what the top layer does not allocate comes from the backing. */
    if (p->unallocated_only && (depth != 0 || !(r & VD_BS_ALLOCATED)))
        return JOB_SKIP;
    if (!zero)
        return JOB_DATA;
    if (p->min_sparse == 0)
        return JOB_FILL;
    return st->skip_zero ? JOB_SKIP : JOB_ZERO;
}

/* Record a block-status failure at byte off; returns it. */
static int status_error(struct copy_state *st, int r, uint64_t off)
{
    set_error_locked(st, r, "error while reading block status at offset %llu: %s",
                     (unsigned long long)off, strerror(-r));
    return r;
}

/* The alignment of src that qemu-img convert keeps status answers on:
 * its request alignment or, larger, its cluster size. */
static uint64_t source_alignment(vd_node *src)
{
    int64_t cs = vd_node_cluster_size(src);

    return VD_MAX((uint64_t)src->request_alignment, cs > 0 ? (uint64_t)cs : 1);
}

/* qemu-img convert cuts an answer that ends inside a source cluster back
 * to the cluster start, unless that would leave nothing: the rest of the
 * cluster is asked again (so its requests start there). */
static uint64_t trim_status(vd_node *src, uint64_t soff, uint64_t pnum)
{
    uint64_t tail = (soff + pnum) % source_alignment(src);

    return pnum > tail ? pnum - tail : pnum;
}

/* Make sure the cached block status covers st->soff; <0 on error. */
static int refresh_status(struct copy_state *st, vd_node *src, uint64_t limit)
{
    uint64_t pnum = 0, map = 0;
    vd_node *file = NULL;
    int depth = 0, r;

    if (st->bs_valid && st->soff >= st->bs_start && st->soff < st->bs_end)
        return 0;
    if (st->qemu_requests)
        limit = VD_MIN(limit, QEMU_MAX_REQUEST);
    r = vd_block_status_above(src, st->soff, limit, &pnum, &map, &file, &depth);
    if (r < 0)
        return status_error(st, r, st->pos);
    if (pnum == 0 || pnum > limit) {   /* a driver that says nothing: read */
        pnum = limit;
        r = VD_BS_DATA;
        depth = 0;
    }
    /* (a raw source's status already tells its file's holes) */
    st->bs_file = (r & VD_BS_OFFSET_VALID) && (r & VD_BS_DATA) && !src->drv->data_only &&
                  src->drv->kind == VD_DRV_FORMAT ? file : NULL;
    st->bs_map = map;
    if (st->qemu_requests)
        pnum = trim_status(src, st->soff, pnum);
    st->bs_start = st->soff;
    st->bs_end = st->soff + pnum;
    st->bs_kind = status_kind(st, r, depth);
    st->bs_valid = true;
    return 0;
}

/* Largest job length for kind at destination offset doff within n bytes. */
static uint64_t job_length(const struct copy_state *st, enum job_kind kind,
                           uint64_t doff, uint64_t n)
{
    uint64_t cap;

    if (kind == JOB_SKIP)
        return n;
    if (kind == JOB_ZERO)
        return VD_MIN(n, COPY_ZERO_CHUNK);
    if (st->qemu_requests && kind == JOB_DATA)
        return VD_MIN(n, st->chunk);      /* runs from the answer's start */
    cap = st->chunk - doff % st->chunk;   /* end jobs on chunk boundaries */
    return VD_MIN(n, cap);
}

/* -c: a zero or skipped run keeps only the target clusters it covers
 * whole; data (or a run shorter than a cluster) grows to whole clusters. */
static void compress_shape(const struct copy_state *st, enum job_kind *kind, uint64_t *n)
{
    uint64_t cs = st->cs, end = st->doff + *n, e;

    if (*kind == JOB_FILL)
        *kind = JOB_DATA;              /* -S 0: zero clusters compressed too */
    if (*kind != JOB_DATA) {
        e = end == st->data_end ? end : round_down(end, cs);
        if (e > st->doff) {
            *n = e - st->doff;
            return;
        }
        *kind = JOB_DATA;
    }
    e = VD_MIN(round_down(end + cs - 1, cs), st->data_end);
    *n = e - st->doff;
}

/* Move the planner cursor n bytes forward. */
static void advance(struct copy_state *st, uint64_t n)
{
    st->soff += n;
    st->pos += n;
    st->doff += n;
}

/* commit: does a layer above the base allocate [x, x + *pnum)?  1 yes,
 * 0 no, with *pnum the length of that run; <0 on error (recorded). */
static int alloc_above(struct copy_state *st, uint64_t x, uint64_t *pnum)
{
    int depth = 0, r;

    r = vd_block_status_above(st->p->src[0], x, st->end - x, pnum, NULL, NULL, &depth);
    if (r < 0)
        return status_error(st, r, x);
    if (*pnum == 0 || *pnum > st->end - x)
        *pnum = st->end - x;
    /* (the zeroes past a backing file shorter than its overlay are the
     * short layer's own: status_kind) */
    return (r & (VD_BS_ALLOCATED | VD_BS_ZERO)) && depth < st->base_depth;
}

/* commit: the first byte at or after x that a layer above the base
 * allocates (*at = st->end if none) and the length of that run. */
static int next_alloc(struct copy_state *st, uint64_t x, uint64_t *at, uint64_t *len)
{
    int r = 0;

    while (x < st->end && (r = alloc_above(st, x, len)) == 0)
        x += *len;
    *at = x;
    return r < 0 ? r : 0;
}

/* commit: start the next group at or after st->pos: consecutive chunks that
 * hold something allocated above the base, at most QEMU_COMMIT_BUF bytes
 * (QEMU's mirror iteration).  1 when started, 0 when none is left. */
static int next_group(struct copy_state *st)
{
    uint64_t g = st->gran, at, len, start, cap, gend;

    if (next_alloc(st, st->pos, &at, &len) < 0)
        return st->err;
    start = at < st->end ? round_down(at, g) : st->end;
    progress_locked(st, start - st->pos);
    st->pos = st->soff = st->doff = start;
    if (start == st->end)
        return 0;
    cap = start + QEMU_COMMIT_BUF;
    gend = VD_MIN(round_down(at + len + g - 1, g), cap);
    while (gend < cap && gend < st->end) {
        if (next_alloc(st, gend, &at, &len) < 0)
            return st->err;
        if (at >= gend + g || at >= st->end)
            break;
        gend = VD_MIN(round_down(at + len + g - 1, g), cap);
    }
    st->grp_end = VD_MIN(gend, st->end);
    return 1;
}

/* commit: how QEMU's mirror handles the next piece of a group: whole
 * chunks copied (data up to QEMU_COMMIT_MAX_IO at a time, any piece
 * shorter than a chunk, and zeroes off base cluster boundaries, up to
 * QEMU_COMMIT_BUF or IOV_MAX chunks), or zeroed (discarded where the chain
 * holds nothing) when the whole chain reads them as zero over whole base
 * clusters.  Sets *kind and returns the length; <0 on error. */
static int64_t commit_piece(struct copy_state *st, enum job_kind *kind)
{
    uint64_t g = st->gran, off = st->pos, io = 0;
    int depth = 0, r;

    r = vd_block_status_above(st->p->src[0], off, st->grp_end - off, &io, NULL, NULL,
                              &depth);
    if (r < 0)
        return status_error(st, r, off);
    if (io == 0 || io > st->grp_end - off) {
        io = st->grp_end - off;
        r = VD_BS_DATA;
    }
    *kind = JOB_DATA;
    if (r & VD_BS_DATA)
        io = VD_MIN(io, QEMU_COMMIT_MAX_IO);
    io = round_down(io, g);
    if (io < g)
        io = g;
    else if (!(r & VD_BS_DATA) && off % st->base_cs == 0 && (off + io) % st->base_cs == 0)
        *kind = r & VD_BS_ZERO ? JOB_ZERO : JOB_DISCARD;
    if (*kind == JOB_DATA)
        io = VD_MIN(io, VD_MIN(QEMU_COMMIT_BUF, g * QEMU_COMMIT_MAX_IOV));
    return (int64_t)VD_MIN(io, st->end - off);
}

/* commit: cut the next job as QEMU's active commit does; 1 with *job set,
 * 0 when done, <0 on error.  Caller holds the lock. */
static int plan_commit(struct copy_state *st, struct copy_job *job)
{
    enum job_kind kind;
    int64_t n;
    int r;

    if (st->err)
        return st->err;
    if (st->copy_left) {               /* a long copy, cut to our buffers */
        kind = JOB_DATA;
        n = (int64_t)st->copy_left;
    } else {
        if (st->pos >= st->grp_end && (r = next_group(st)) <= 0)
            return r;
        if ((n = commit_piece(st, &kind)) < 0)
            return (int)n;
    }
    if (kind == JOB_DATA) {
        st->copy_left = (uint64_t)n - VD_MIN((uint64_t)n, st->chunk);
        n = (int64_t)VD_MIN((uint64_t)n, st->chunk);
    }
    *job = (struct copy_job){ kind, st->p->src[0], 0, st->pos, st->pos, st->pos,
                              (uint64_t)n, st->next_seq++ };
    advance(st, (uint64_t)n);
    return 1;
}

/* Cut the next job; 1 with *job set, 0 when done, <0 on error.  Skipped
 * ranges are accounted here.  Caller holds the lock. */
static int plan_next(struct copy_state *st, struct copy_job *job)
{
    if (st->p->base)
        return plan_commit(st, job);
    while (st->pos < st->end && !st->err) {
        uint64_t slen = st->src_len[st->si], limit, n;
        enum job_kind kind;

        if (st->soff >= slen) {        /* a -c job may run past a source */
            st->soff -= slen;
            st->si++;
            st->bs_valid = false;
            continue;
        }
        limit = VD_MIN(st->end - st->pos, slen - st->soff);
        if (refresh_status(st, st->p->src[st->si], limit) < 0)
            return st->err;
        kind = st->bs_kind;
        n = VD_MIN(st->bs_end - st->soff, limit);
        if (st->p->compress)
            compress_shape(st, &kind, &n);
        n = job_length(st, kind, st->doff, n);
        if (kind == JOB_SKIP) {
            advance(st, n);
            progress_locked(st, n);
            continue;
        }
        *job = (struct copy_job){ kind, st->p->src[st->si], st->si, st->soff,
                                  st->pos, st->doff, n, st->next_seq++ };
        if (st->bs_file && st->soff + n <= st->bs_end) {
            job->hfile = st->bs_file;
            job->host = st->bs_map + (st->soff - st->bs_start);
        }
        advance(st, n);
        return 1;
    }
    return st->err ? st->err : 0;
}

/* Read one sector-sized piece at a time, zeroing and reporting the ones
 * that fail (--salvage). */
static void salvage_read(struct copy_state *st, vd_node *src, uint64_t soff,
                         uint64_t pos, uint64_t len, char *buf)
{
    uint64_t o = 0;

    while (o < len) {
        uint64_t l = VD_MIN(COPY_SECTOR - (soff + o) % COPY_SECTOR, len - o);
        int r = vd_pread(src, soff + o, l, buf + o, 0);

        if (r < 0) {
            char m[256];
            memset(buf + o, 0, l);
            snprintf(m, sizeof(m), "error while reading offset %llu: %s",
                     (unsigned long long)(pos + o), strerror(-r));
            pthread_mutex_lock(&st->lock);
            if (st->p->warn)
                st->p->warn(st->p->opaque, m);
            pthread_mutex_unlock(&st->lock);
        }
        o += l;
    }
}

/* Read len bytes of one source into buf; <0 on error (recorded). */
static int read_piece(struct copy_state *st, vd_node *src, uint64_t soff,
                      uint64_t pos, uint64_t len, char *buf)
{
    int r = vd_pread(src, soff, len, buf, 0);

    if (r >= 0)
        return 0;
    if (st->p->salvage) {
        salvage_read(st, src, soff, pos, len, buf);
        return 0;
    }
    io_error(st, r, "reading", pos);
    return r;
}

/* Is a data job written through a sparse map? */
static bool job_sparse(const struct copy_state *st, const struct copy_job *job)
{
    return job->kind == JOB_DATA && st->p->min_sparse && !st->p->compress && !st->p->base;
}

/* Read a sparse job of one source into w's buffer but for the parts known
 * to read as zeroes (left for sparse_fill_known); <0 on error (recorded). */
static int read_around_holes(struct copy_state *st, const struct copy_job *job,
                             struct worker_mem *w)
{
    struct sparse_known *k = &w->known;
    uint64_t at = 0;
    int r;

    holes_find(job->src, job->soff, job->len, job->hfile, job->host, &w->holes, k);
    for (size_t i = 0; i <= k->n; i++) {
        uint64_t e = i < k->n ? k->start[i] : job->len;
        if (e > at && (r = read_piece(st, job->src, job->soff + at, job->pos + at, e - at,
                                      w->buf + at)) < 0)
            return r;
        if (i < k->n)
            at = k->end[i];
    }
    return 0;
}

/* Read a data job into buf, source by source; <0 on error (recorded). */
static int read_job(struct copy_state *st, const struct copy_job *job, char *buf)
{
    uint64_t done = 0, soff = job->soff;
    size_t si = job->si;
    int r;

    while (done < job->len && si < st->p->nsrc) {
        uint64_t l = VD_MIN(job->len - done, st->src_len[si] - soff);
        if (l && (r = read_piece(st, st->p->src[si], soff, job->pos + done, l,
                                 buf + done)) < 0)
            return r;
        done += l;
        si++;
        soff = 0;
    }
    return 0;
}

/* Seconds since the copy started. */
static double elapsed(const struct copy_state *st)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - st->start.tv_sec) +
           (double)(now.tv_nsec - st->start.tv_nsec) / 1e9;
}

/* -r: sleep until writing n more bytes keeps within the rate limit. */
static void throttle(struct copy_state *st, uint64_t n)
{
    double due, now;

    if (!st->p->rate_limit)
        return;
    pthread_mutex_lock(&st->lock);
    st->rate_bytes += n;
    due = (double)st->rate_bytes / (double)st->p->rate_limit;
    pthread_mutex_unlock(&st->lock);
    now = elapsed(st);
    if (due > now) {
        double d = due - now;
        struct timespec ts = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
        nanosleep(&ts, NULL);
    }
}

/* Write zeroes over [off, off+len) of the target unless it is known zero. */
static int write_zero_range(struct copy_state *st, uint64_t off, uint64_t len)
{
    if (st->skip_zero)
        return 0;
    return vd_pwrite_zeroes(st->p->dst, off, len, st->zero_flags);
}

/* Write len bytes of data at off. */
static int write_bytes(struct copy_state *st, uint64_t off, uint64_t len, const char *buf)
{
    throttle(st, len);
    return vd_pwrite(st->p->dst, off, len, buf, st->p->write_flags);
}

/* Write a scanned data buffer: zero runs become zero writes (or nothing on
 * a zero target), data runs data. */
static int write_sparse(struct copy_state *st, uint64_t doff, const char *buf,
                        const struct sparse_map *m)
{
    uint64_t i = 0;

    for (size_t k = 0; k < m->n; k++) {
        int r = sparse_run_zero(m, k) ? write_zero_range(st, doff + i, m->end[k] - i)
                     : write_bytes(st, doff + i, m->end[k] - i, buf + i);
        if (r < 0)
            return r;
        i = m->end[k];
    }
    return 0;
}

/* -c: one target cluster [off, off+l) of data; the part of the cluster
 * past the data (a longer target) keeps what the target holds. */
static int write_cluster_compressed(struct copy_state *st, uint64_t off, uint64_t l,
                                    char *buf)
{
    uint64_t wl = VD_MIN(st->cs, st->dst_size - off);
    int r;

    if (wl > l && (r = vd_pread(st->p->dst, off + l, wl - l, buf + l, 0)) < 0)
        return r;
    if (st->p->min_sparse && buffer_is_zero(buf, wl))
        return write_zero_range(st, off, l);
    throttle(st, wl);
    return vd_pwrite_compressed(st->p->dst, off, wl, buf);
}

/* -c: write a data job cluster by cluster, compressed. */
static int write_compressed(struct copy_state *st, const struct copy_job *job, char *buf)
{
    for (uint64_t o = 0; o < job->len; o += st->cs) {
        int r = write_cluster_compressed(st, job->doff + o,
                                         VD_MIN(st->cs, job->len - o), buf + o);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The bytes of target cluster off that a compressed job writes: the
 * cluster, or what is left of the target. */
static uint64_t cluster_bytes(const struct copy_state *st, uint64_t off)
{
    return VD_MIN(st->cs, st->dst_size - off);
}

/* -c in two steps: compress the job's cluster into the worker's buffer
 * before its turn (job->packed_len 0: the cluster is zero and is written
 * as zeroes); <0 on error (recorded). */
static int compress_ahead(struct copy_state *st, struct copy_job *job, char *buf)
{
    uint64_t wl = cluster_bytes(st, job->doff), l = job->len;
    int r = 0;

    job->packed_len = 0;
    if (wl > l)        /* the rest of the cluster keeps what the target holds */
        r = vd_pread(st->p->dst, job->doff + l, wl - l, buf + l, 0);
    if (r >= 0 && !(st->p->min_sparse && buffer_is_zero(buf, wl)))
        r = vd_compress_cluster(st->p->dst, job->doff, wl, buf, buf + st->packed_off,
                                &job->packed_len);
    if (r < 0)
        io_error(st, r, "writing", job->pos);
    return r;
}

/* -c in two steps: store the cluster compressed ahead. */
static int write_packed(struct copy_state *st, const struct copy_job *job, const char *buf)
{
    uint64_t wl = cluster_bytes(st, job->doff);

    if (!job->packed_len)
        return write_zero_range(st, job->doff, job->len);
    throttle(st, wl);
    return vd_store_compressed(st->p->dst, job->doff, wl, buf + st->packed_off,
                               job->packed_len);
}

/* Do the writes of a job; <0 on error (recorded). */
static int write_job(struct copy_state *st, const struct copy_job *job, char *buf,
                     const struct sparse_map *m)
{
    int r;

    switch (job->kind) {
    case JOB_DATA:
        if (st->compress_ahead)
            r = write_packed(st, job, buf);
        else if (st->p->compress)
            r = write_compressed(st, job, buf);
        else if (st->p->min_sparse && !st->p->base)
            r = write_sparse(st, job->doff, buf, m);
        else
            r = write_bytes(st, job->doff, job->len, buf);
        break;
    case JOB_FILL:
        memset(buf, 0, job->len);
        r = write_bytes(st, job->doff, job->len, buf);
        break;
    case JOB_DISCARD:
        r = vd_discard(st->p->dst, job->doff, job->len);
        break;
    default:
        r = write_zero_range(st, job->doff, job->len);
        break;
    }
    if (r < 0)
        io_error(st, r, "writing", job->pos);
    return r;
}

/* In order mode: wait until every earlier job has written; false on error. */
static bool wait_turn(struct copy_state *st, int id, uint64_t seq)
{
    struct copy_waiter *w = &st->waiters[id];
    bool ok;

    pthread_mutex_lock(&st->lock);
    w->seq = seq;
    w->waiting = true;
    while (!st->ooo && st->write_seq != seq && !st->err)
        pthread_cond_wait(&w->cond, &st->lock);
    w->waiting = false;
    ok = !st->err;
    pthread_mutex_unlock(&st->lock);
    return ok;
}

/* A job has written: wake the writer of the next one, report progress. */
static void finish_job(struct copy_state *st, const struct copy_job *job)
{
    pthread_mutex_lock(&st->lock);
    st->write_seq++;
    progress_locked(st, job->len);
    for (int i = 0; i < st->nworkers; i++) {
        if (st->waiters[i].waiting && st->waiters[i].seq == st->write_seq) {
            pthread_cond_signal(&st->waiters[i].cond);
            break;
        }
    }
    pthread_mutex_unlock(&st->lock);
}

/* -C: copy a data job inside the host.  1 when done, 0 to fall back to
 * reading and writing, <0 on error (recorded). */
static int offload_job(struct copy_state *st, int id, const struct copy_job *job)
{
    int r;

    if (!st->p->copy_offload || job->kind != JOB_DATA || atomic_load(&st->no_offload))
        return 0;
    if (!wait_turn(st, id, job->seq))
        return -ECANCELED;
    r = vd_copy_range(job->src, job->soff, st->p->dst, job->doff, job->len);
    if (r == -ENOTSUP) {
        atomic_store(&st->no_offload, true);
        return 0;
    }
    if (r < 0) {
        io_error(st, r, "writing", job->pos);
        return r;
    }
    finish_job(st, job);
    return 1;
}

/* Park a read job until its turn; 1 when it is ours to write, else the
 * result of the worker that wrote it (or -ECANCELED).  Lock held. */
static int park_job(struct copy_state *st, struct copy_waiter *w, const struct copy_job *job,
                    char *buf, const struct sparse_map *m)
{
    w->seq = job->seq;
    w->job = job;
    w->buf = buf;
    w->map = m;
    w->done = false;
    w->parked = w->waiting = true;
    while (w->parked && st->write_seq != job->seq && !st->err)
        pthread_cond_wait(&w->cond, &st->lock);
    w->waiting = false;
    if (w->parked) {
        w->parked = false;
        return st->err ? -ECANCELED : 1;
    }
    while (!w->done)                   /* taken: wait until written */
        pthread_cond_wait(&w->cond, &st->lock);
    return w->result;
}

/* Write job (in order mode once its turn comes), then every parked job
 * that follows it; 0 or <0 on error (recorded). */
static int ordered_write(struct copy_state *st, int id, const struct copy_job *job, char *buf,
                         const struct sparse_map *m)
{
    struct copy_waiter *taken = NULL, *next;
    int r;

    pthread_mutex_lock(&st->lock);
    r = st->ooo || st->write_seq == job->seq ? (st->err ? -ECANCELED : 1)
                                             : park_job(st, &st->waiters[id], job, buf, m);
    pthread_mutex_unlock(&st->lock);
    if (r <= 0)
        return r;
    for (;;) {
        r = write_job(st, job, buf, m);
        pthread_mutex_lock(&st->lock);
        if (r >= 0) {
            st->write_seq++;
            progress_locked(st, job->len);
        }
        if (taken) {
            taken->done = true;
            taken->result = r;
            pthread_cond_signal(&taken->cond);
        }
        next = NULL;
        for (int i = 0; r >= 0 && !st->ooo && i < st->nworkers; i++)
            if (st->waiters[i].waiting && st->waiters[i].seq == st->write_seq)
                next = &st->waiters[i];
        if (!next || !next->parked || st->err) {
            if (next)
                pthread_cond_signal(&next->cond);
            pthread_mutex_unlock(&st->lock);
            return r < 0 ? r : 0;
        }
        next->parked = false;
        next->waiting = false;
        taken = next;
        job = next->job;
        buf = next->buf;
        m = next->map;
        pthread_mutex_unlock(&st->lock);
    }
}

/* Read a data job into w's buffer; a sparse one skips what is known to
 * read as zeroes.  <0 on error (recorded). */
static int read_data(struct copy_state *st, const struct copy_job *job, struct worker_mem *w)
{
    w->known.n = 0;
    if (job_sparse(st, job) && job->soff + job->len <= st->src_len[job->si])
        return read_around_holes(st, job, w);
    return read_job(st, job, w->buf);
}

/* Run one job start to finish; <0 on error. */
static int run_job(struct copy_state *st, int id, struct copy_job *job, struct worker_mem *w)
{
    int r;

    if ((r = offload_job(st, id, job)) != 0)
        return r < 0 ? r : 0;
    if (job->kind == JOB_DATA && (r = read_data(st, job, w)) < 0)
        return r;
    if (job->kind == JOB_DATA && st->compress_ahead &&
        (r = compress_ahead(st, job, w->buf)) < 0)
        return r;
    if (job_sparse(st, job)) {
        sparse_scan(w->buf, job->len, job->doff, st->p->min_sparse, st->sparse_align,
                    &w->known, &w->map);
        if (w->known.n)
            sparse_fill_known(w->buf, &w->map, &w->known);
    }
    return ordered_write(st, id, job, w->buf, &w->map);
}

/* A worker's buffer of len bytes, 4096-aligned (invariant 7); NULL when
 * out of memory. */
static void *worker_buf(const struct copy_state *st, size_t len)
{
    void *p = NULL;

    if (!st->p->salvage)
        return vd_iobuf_alloc(len);
    return posix_memalign(&p, 4096, len) ? NULL : p;
}

/* Free a buffer from worker_buf. */
static void worker_buf_free(const struct copy_state *st, void *buf)
{
    if (st->p->salvage)
        free(buf);
    else
        vd_iobuf_free(buf);
}

/* Worker thread: take jobs until none are left or an error stops us. */
static void *worker(void *opaque)
{
    struct copy_state *st = opaque;
    struct copy_job job = { 0 };
    struct worker_mem w = { 0 };
    struct sparse_map *m = &w.map;
    void *buf = NULL;
    int r, id;

    pthread_mutex_lock(&st->lock);
    id = st->nworkers++;
    pthread_mutex_unlock(&st->lock);
    m->cap = st->p->min_sparse ? sparse_map_slots(st->chunk) : 2;
    if (!(m->end = vd_calloc_array(m->cap, sizeof(*m->end))) ||
        !(m->zero = vd_calloc_array(m->cap, sizeof(*m->zero))) ||
        !(buf = worker_buf(st, st->packed_off +
                           (st->compress_ahead ? VD_COMPRESS_ROOM(st->cs) : 0)))) {
        free(m->end);
        free(m->zero);
        pthread_mutex_lock(&st->lock);
        set_error_locked(st, -ENOMEM, "cannot allocate a copy buffer: %s",
                         strerror(ENOMEM));
        pthread_mutex_unlock(&st->lock);
        return NULL;
    }
    w.buf = buf;
    for (;;) {
        pthread_mutex_lock(&st->lock);
        r = plan_next(st, &job);
        pthread_mutex_unlock(&st->lock);
        if (r <= 0 || run_job(st, id, &job, &w) < 0)
            break;
    }
    free(m->end);
    free(m->zero);
    worker_buf_free(st, buf);
    return NULL;
}

/* Lengths of the sources and their total; <0 on error (message set). */
static int measure_sources(struct copy_state *st, uint64_t *total)
{
    const struct vd_copy_params *p = st->p;

    *total = 0;
    for (size_t i = 0; i < p->nsrc; i++) {
        int64_t l = vd_getlength(p->src[i]);
        if (l < 0)
            return vd_error_prefix((int)-l, "Could not get size of '%s'",
                                   vd_node_filename(p->src[i]));
        st->src_len[i] = (uint64_t)l;
        if (ADD_OVERFLOW(*total, (uint64_t)l, total))
            return vd_error(EFBIG, "total source size is too large");
    }
    return 0;
}

/* Place the planner cursor at src_offset and fix the end; <0 on error. */
static int position_cursor(struct copy_state *st, uint64_t total)
{
    const struct vd_copy_params *p = st->p;
    uint64_t off = p->src_offset, len = p->length;

    if (off > total)
        return vd_error(EINVAL, "copy start %llu is beyond the end of the source",
                        (unsigned long long)off);
    if (len == 0)
        len = total - off;
    if (!range_ok(off, len, total))
        return vd_error(EINVAL, "copy range is beyond the end of the source");
    st->pos = off;
    st->end = off + len;
    st->doff = p->dst_offset;
    st->total = len;
    if (ADD_OVERFLOW(p->dst_offset, len, &st->data_end))
        return vd_error(EINVAL, "copy range is beyond the end of the target");
    while (st->si < p->nsrc && off >= st->src_len[st->si])
        off -= st->src_len[st->si++];
    st->soff = off;
    return 0;
}

/* Processors online (at least 1, at most COPY_MAX_WORKERS). */
static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return (int)VD_MAX(1, VD_MIN(n, COPY_MAX_WORKERS));
}

/* Workers when the caller names no number: two per processor, at most
 * COPY_DEFAULT_WORKERS (qemu-img's eight coroutines).  Each worker keeps a
 * job of up to 2 MiB in flight; past two per core more of them only add
 * memory traffic and wake-ups.  On two cores, four workers against eight:
 * rbd -> raw 1.13 s instead of 1.23 s (CPU 1.11 s instead of 1.29 s),
 * qcow2 -> raw 0.27 s instead of 0.31 s, raw -> qcow2 0.29 s instead of
 * 0.32 s (the 2 GiB mixed image). */
static int default_workers(void)
{
    return VD_MIN(COPY_DEFAULT_WORKERS, 2 * online_cpus());
}

/* Number of workers and bytes per job from the parameters. */
static void choose_sizes(struct copy_state *st, int *nworkers)
{
    const struct vd_copy_params *p = st->p;
    int w = p->workers > 0 ? p->workers : default_workers();
    uint64_t chunk = p->chunk ? p->chunk : COPY_DEFAULT_CHUNK;

    w = VD_MIN(w, COPY_MAX_WORKERS);
    if (p->max_in_flight && p->max_in_flight / (uint64_t)w < chunk)
        chunk = p->max_in_flight / (uint64_t)w;
    chunk = round_down(chunk, COPY_SECTOR);
    st->chunk = chunk ? chunk : COPY_SECTOR;
    if (st->qemu_requests)      /* jobs are qemu-img's requests, to allocate alike */
        st->chunk = QEMU_CONVERT_BUF;
    else if (p->base)
        st->chunk = QEMU_COMMIT_MAX_IO;
    if (p->compress)   /* whole clusters per job; CPU-bound, so small jobs */
        st->chunk = VD_MAX(round_down(VD_MIN(st->chunk, COPY_COMPRESS_CHUNK), st->cs),
                           st->cs);
    if (st->compress_ahead) {   /* one cluster per job; workers beyond the
                                 * cores would only hold memory */
        st->chunk = st->cs;
        w = VD_MIN(w, online_cpus() + 2);
    }
    st->packed_off = div_round_up(VD_MAX(st->chunk, st->cs), 4096) * 4096;
    *nworkers = w;
}

/* Start the workers, run them to completion. */
static void run_workers(struct copy_state *st, int n)
{
    pthread_t tid[COPY_MAX_WORKERS];
    int started = 0;

    for (int i = 1; i < n; i++) {
        if (pthread_create(&tid[started], NULL, worker, st) != 0)
            break;
        started++;
    }
    worker(st);                       /* the caller is a worker too */
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
}

/* -c: the target's cluster size; dst_offset must sit on a cluster. */
static int setup_compress(struct copy_state *st)
{
    const struct vd_copy_params *p = st->p;
    int64_t cs = vd_node_cluster_size(p->dst);

    st->cs = cs > 0 ? (uint64_t)cs : 65536;
    if (!is_power_of_2(st->cs) || st->cs > (64u << 20))
        return vd_error(EINVAL, "unusable target cluster size %llu",
                        (unsigned long long)st->cs);
    if (p->dst_offset % st->cs)
        return vd_error(EINVAL, "compressed writes must start on a cluster boundary");
    st->compress_ahead = p->dst->drv->compress_cluster && p->dst->drv->store_compressed;
    return 0;
}

/* The largest power of two <= v (v > 0). */
static uint64_t pow2_floor(uint64_t v)
{
    return 1ull << (63 - __builtin_clzll(v));
}

/* Zero detection steers run ends to -S rounded down to a power of two, or
 * to the target's request alignment if larger (qemu-img convert's rule). */
static void setup_sparse(struct copy_state *st)
{
    const struct vd_copy_params *p = st->p;
    uint64_t ra = VD_MAX((uint64_t)p->dst->request_alignment, COPY_SECTOR);

    st->qemu_requests = p->min_sparse && !p->compress && !p->base;
    if (st->qemu_requests)
        st->sparse_align = VD_MAX(pow2_floor(p->min_sparse), round_down(ra, COPY_SECTOR));
}

/* commit: QEMU tracks what to copy in chunks of the base's cluster size
 * held to 4..64 KiB (64 KiB when the base has none), and writes zeroes
 * only over whole base clusters. */
static void setup_chunks(struct copy_state *st)
{
    vd_node *base = st->p->base;
    int64_t cs = vd_node_cluster_size(base);

    st->gran = cs > 0 ? VD_MIN(VD_MAX(pow2_floor((uint64_t)cs), 4096u), 65536u) : 65536u;
    st->base_cs = cs > 0 ? (uint64_t)cs : VD_MAX((uint64_t)base->request_alignment, 1u);
}

/* commit: the depth of p->base in the chain of the first source. */
static int setup_base(struct copy_state *st)
{
    vd_node *n = st->p->src[0];
    int d = 0;

    while (n && n != st->p->base) {
        n = vd_node_backing(n);
        d++;
    }
    if (!n || st->p->nsrc != 1)
        return vd_error(EINVAL, "the base is not in the backing chain of the source");
    st->base_depth = d;
    setup_chunks(st);
    return 0;
}

/* Set up the state of a copy; <0 on error (message set). */
static int copy_setup(struct copy_state *st, const struct vd_copy_params *p, int *nw)
{
    uint64_t total;
    int r;

    if (!p || !p->dst || (p->nsrc && !p->src))
        return vd_error(EINVAL, "invalid copy parameters");
    st->p = p;
    st->src_len = vd_calloc_array(p->nsrc, sizeof(uint64_t));
    if (!st->src_len)
        return vd_error(ENOMEM, "out of memory");
    if ((r = measure_sources(st, &total)) < 0 || (r = position_cursor(st, total)) < 0)
        return r;
    if (p->compress && (r = setup_compress(st)) < 0)
        return r;
    if (p->base && (r = setup_base(st)) < 0)
        return r;
    setup_sparse(st);
    choose_sizes(st, nw);
    st->dst_size = (uint64_t)VD_MAX(vd_getlength(p->dst), 0);
    st->ooo = p->out_of_order || (p->compress && !st->compress_ahead) ||
              (p->dst->drv->data_only && !p->base);
    st->skip_zero = (p->target_is_zero || p->no_zero_writes) && !p->unallocated_only &&
                    !p->base;
    st->zero_flags = p->unallocated_only ? 0 : VD_REQ_MAY_UNMAP;
    clock_gettime(CLOCK_MONOTONIC, &st->start);
    return 0;
}

/* Copy; -errno on the first failure (message names the failing side). */
int vd_copy(const struct vd_copy_params *p)
{
    struct copy_state st = { .lock = PTHREAD_MUTEX_INITIALIZER };
    int nw = 1, r;

    for (int i = 0; i < COPY_MAX_WORKERS; i++)
        pthread_cond_init(&st.waiters[i].cond, NULL);
    r = copy_setup(&st, p, &nw);
    if (r == 0) {
        if (p->progress)
            p->progress(p->opaque, 0, st.total);
        run_workers(&st, nw);
        r = st.err;
        if (r < 0)
            vd_error(-r, "%s", st.msg);
    }
    free(st.src_len);
    for (int i = 0; i < COPY_MAX_WORKERS; i++)
        pthread_cond_destroy(&st.waiters[i].cond);
    return r;
}
