/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img bench: qemu-img bench's sequential read/write benchmark.  Depth
 * requests are kept in flight by up to BENCH_MAX_THREADS threads issuing
 * synchronous requests; optional flushes every N requests, with or without
 * draining the queue first. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "img.h"
#include "cli.h"
#include "util/size.h"

#define BENCH_MAX_THREADS 256

/* Parsed command line of bench. */
struct bench_args {
    const char *fmt, *cache, *name;
    unsigned count, depth, flush_interval;
    uint64_t offset, bufsize, step;
    int pattern;
    bool write, image_opts, force_share, no_drain, native_aio, quiet;
};

/* The shared state of a running benchmark. */
struct bench_state {
    const struct bench_args *ba;
    vd_node *n;
    uint64_t image_size;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned issued, completed;
    uint64_t next_offset;
    bool flushing;
    int err;
};

/* An unsigned integer as strtoul(base 0) reads it, at most max. */
static int parse_uint(const char *s, unsigned long max, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '-')
        return -1;
    v = strtoul(s, &end, 0);
    if (errno || end == s || *end || v > max)
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* A size from 0 to INT_MAX, worded as qemu's cvtnum_full. */
static int parse_int_size(const char *what, const char *s, uint64_t *out)
{
    uint64_t v;
    int r = vd_parse_size(s, 'B', &v);

    if (r < 0 && r != -ERANGE) {
        img_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", what);
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if (r < 0 || v > INT_MAX) {
        img_error("Invalid %s specified. Must be between 0 and %d.", what, INT_MAX);
        return -1;
    }
    *out = v;
    return 0;
}

/* A numeric option; prints msg and returns -1 when it is invalid. */
static int numeric_opt(const char *s, unsigned long max, unsigned *out, const char *msg)
{
    if (parse_uint(s, max, out) == 0)
        return 0;
    img_error("%s", msg);
    return -1;
}

/* -i: the AIO backends qemu-img knows. */
static int parse_aio(struct bench_args *ba, const char *s)
{
    if (!strcmp(s, "native")) {
        ba->native_aio = true;
        return 0;
    }
    if (!strcmp(s, "threads") || !strcmp(s, "io_uring")) {
        ba->native_aio = false;
        return 0;
    }
    img_error("Invalid aio option: %s", s);
    return -1;
}

/* Long-only options of bench. */
enum { OPT_FLUSH_INTERVAL = 256, OPT_PATTERN, OPT_NO_DRAIN, OPT_IMAGE_OPTS };

/* Handle one option; -1 on error (printed). */
static int bench_option(struct bench_args *ba, int c, char **argv)
{
    unsigned v;

    switch (c) {
    case 'h': img_help();
    case 'c': return numeric_opt(optarg, INT_MAX, &ba->count, "Invalid request count specified");
    case 'd':
        if (numeric_opt(optarg, INT_MAX, &ba->depth, "Invalid queue depth specified") < 0)
            return -1;
        if (ba->depth == 0) {     /* qemu-img would wait forever */
            img_error("Invalid queue depth specified");
            return -1;
        }
        return 0;
    case 'f': ba->fmt = optarg; return 0;
    case 'n': ba->native_aio = true; return 0;
    case 'i': return parse_aio(ba, optarg);
    case 'o': return img_cvtnum("offset", optarg, &ba->offset);
    case 'q': ba->quiet = true; return 0;
    case 's': return parse_int_size("buffer size", optarg, &ba->bufsize);
    case 'S': return parse_int_size("step_size", optarg, &ba->step);
    case 't':
        if (img_cache_mode_opts(optarg, NULL) < 0) {
            img_error("Invalid cache mode");
            return -1;
        }
        ba->cache = optarg;
        return 0;
    case 'w': ba->write = true; return 0;
    case 'U': ba->force_share = true; return 0;
    case OPT_FLUSH_INTERVAL:
        return numeric_opt(optarg, INT_MAX, &ba->flush_interval,
                           "Invalid flush interval specified");
    case OPT_PATTERN:
        if (numeric_opt(optarg, 0xff, &v, "Invalid pattern byte specified") < 0)
            return -1;
        ba->pattern = (int)v;
        return 0;
    case OPT_NO_DRAIN: ba->no_drain = true; return 0;
    case OPT_IMAGE_OPTS: ba->image_opts = true; return 0;
    default:
        img_getopt_error(c, argv);
        return -1;
    }
}

/* Parse bench's command line and check it as qemu-img does; -1 (printed). */
static int parse_args(int argc, char **argv, struct bench_args *ba)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "pattern", required_argument, NULL, OPT_PATTERN },
        { "no-drain", no_argument, NULL, OPT_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", longopts, NULL)) != -1)
        if (bench_option(ba, c, argv) < 0)
            return -1;
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return -1;
    }
    ba->name = argv[optind];
    if (ba->flush_interval && !ba->write) {
        img_error("--flush-interval is only available in write tests");
        return -1;
    }
    if (ba->flush_interval && ba->flush_interval < ba->depth) {
        img_error("Flush interval can't be smaller than depth");
        return -1;
    }
    if (ba->step == 0)
        ba->step = ba->bufsize;
    return 0;
}

/* Is the cache mode one that opens with O_DIRECT? */
static bool cache_is_direct(const char *mode)
{
    return mode && (!strcmp(mode, "none") || !strcmp(mode, "off") ||
                    !strcmp(mode, "directsync"));
}

/* Open the image as bench needs it; NULL (printed) on error. */
static vd_node *bench_open(const struct bench_args *ba)
{
    struct img_open_args a = { .name = ba->name, .fmt = ba->fmt,
        .image_opts = ba->image_opts, .writable = ba->write,
        .force_share = ba->force_share, .cache = ba->cache, .quiet = ba->quiet };

    if (img_check_image_opts_fmt(ba->image_opts, ba->fmt) < 0)
        return NULL;
    if (ba->native_aio && !cache_is_direct(ba->cache)) {
        img_error("Could not open '%s': aio=native was specified, but it requires "
                  "cache.direct=on, which was not specified.", ba->name);
        return NULL;
    }
    return img_open(&a);
}

/* The offset of the request after one at off, as qemu-img 7.2 steps:
 * modulo the image size, so a request can run past the end and fail as
 * it does in qemu (an empty image, where qemu divides by zero, stays at 0;
 * the sum is taken modulo the size first, so it cannot overflow). */
static uint64_t step_offset(uint64_t off, uint64_t step, uint64_t size)
{
    if (!size)
        return 0;
    return (off % size + step % size) % size;
}

/* Take the next request (index and offset); false when none are left. */
static bool next_request(struct bench_state *bs, unsigned *idx, uint64_t *off)
{
    const struct bench_args *ba = bs->ba;
    bool ok;

    pthread_mutex_lock(&bs->lock);
    while (bs->flushing && !bs->err)
        pthread_cond_wait(&bs->cond, &bs->lock);
    ok = !bs->err && bs->issued < ba->count;
    if (ok) {
        *idx = bs->issued++;
        *off = bs->next_offset;
        bs->next_offset = step_offset(*off, ba->step, bs->image_size);
        if (ba->flush_interval && *idx && *idx % ba->flush_interval == 0 && !ba->no_drain)
            bs->flushing = true;
    }
    pthread_mutex_unlock(&bs->lock);
    return ok;
}

/* Record a failure and wake everyone. */
static void bench_fail(struct bench_state *bs, int err)
{
    pthread_mutex_lock(&bs->lock);
    if (!bs->err)
        bs->err = err;
    pthread_cond_broadcast(&bs->cond);
    pthread_mutex_unlock(&bs->lock);
}

/* Before request idx: the flush due every flush_interval requests (after
 * draining the earlier ones unless --no-drain); <0 on error. */
static int maybe_flush(struct bench_state *bs, unsigned idx)
{
    const struct bench_args *ba = bs->ba;
    int r;

    if (!ba->flush_interval || idx == 0 || idx % ba->flush_interval)
        return 0;
    if (!ba->no_drain) {
        pthread_mutex_lock(&bs->lock);
        while (bs->completed < idx && !bs->err)
            pthread_cond_wait(&bs->cond, &bs->lock);
        pthread_mutex_unlock(&bs->lock);
    }
    r = vd_flush(bs->n);
    pthread_mutex_lock(&bs->lock);
    bs->flushing = false;
    pthread_cond_broadcast(&bs->cond);
    pthread_mutex_unlock(&bs->lock);
    return r;
}

/* A request has finished. */
static void request_done(struct bench_state *bs)
{
    pthread_mutex_lock(&bs->lock);
    bs->completed++;
    pthread_cond_broadcast(&bs->cond);
    pthread_mutex_unlock(&bs->lock);
}

/* One issuing thread: synchronous requests until none are left. */
static void *bench_thread(void *opaque)
{
    struct bench_state *bs = opaque;
    const struct bench_args *ba = bs->ba;
    void *buf = NULL;
    unsigned idx;
    uint64_t off;
    int r;

    if (posix_memalign(&buf, 4096, ba->bufsize ? ba->bufsize : 1)) {
        bench_fail(bs, -ENOMEM);
        return NULL;
    }
    memset(buf, ba->pattern, ba->bufsize);
    while (next_request(bs, &idx, &off)) {
        r = maybe_flush(bs, idx);
        if (r >= 0)
            r = ba->write ? vd_pwrite(bs->n, off, ba->bufsize, buf, 0)
                          : vd_pread(bs->n, off, ba->bufsize, buf, 0);
        if (r < 0) {
            bench_fail(bs, r);
            break;
        }
        request_done(bs);
    }
    free(buf);
    return NULL;
}

/* Run every request with the wanted parallelism; <0 on the first error. */
static int bench_run(struct bench_state *bs)
{
    unsigned n = bs->ba->depth, started = 0;
    pthread_t *tid;

    if (n > bs->ba->count)
        n = bs->ba->count;
    if (n > BENCH_MAX_THREADS)
        n = BENCH_MAX_THREADS;
    if (n == 0)
        return 0;
    if (!(tid = calloc(n, sizeof(*tid))))
        return -ENOMEM;
    for (unsigned i = 1; i < n; i++)
        if (pthread_create(&tid[started], NULL, bench_thread, bs) == 0)
            started++;
    bench_thread(bs);
    for (unsigned i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    free(tid);
    return bs->err;
}

/* Seconds between two monotonic time points. */
static double seconds_between(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

/* Open, announce, run and time the benchmark; returns the exit code. */
static int do_bench(const struct bench_args *ba)
{
    struct bench_state bs = { .ba = ba, .lock = PTHREAD_MUTEX_INITIALIZER,
                              .cond = PTHREAD_COND_INITIALIZER,
                              .next_offset = ba->offset };
    struct timespec t0, t1;
    int64_t size;
    int r;

    if (!(bs.n = bench_open(ba)))
        return 1;
    size = vd_getlength(bs.n);
    bs.image_size = size < 0 ? 0 : (uint64_t)size;
    printf("Sending %u %s requests, %" PRIu64 " bytes each, %u in parallel "
           "(starting at offset %" PRIu64 ", step size %" PRIu64 ")\n",
           ba->count, ba->write ? "write" : "read", ba->bufsize, ba->depth,
           ba->offset, ba->step);
    if (ba->flush_interval)
        printf("Sending flush every %u requests\n", ba->flush_interval);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    r = bench_run(&bs);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (r < 0) {
        img_error("Failed request: %s", strerror(-r));
        vd_close(bs.n);
        return 1;
    }
    printf("Run completed in %3.3f seconds.\n", seconds_between(&t0, &t1));
    vd_close(bs.n);
    return 0;
}

/* vdisk-img bench [options] filename */
int img_bench(int argc, char **argv)
{
    struct bench_args ba = { .count = 75000, .depth = 64, .bufsize = 4096 };

    if (parse_args(argc, argv, &ba) < 0)
        return 1;
    return do_bench(&ba);
}
