/* SPDX-License-Identifier: BSD-3-Clause */
/* The "http", "https", "ftp" and "ftps" protocol drivers over libcurl:
 * a read-only node whose bytes are fetched with range requests.  One
 * thread per node drives a curl multi handle (curl_multi_perform and
 * curl_multi_poll: the socket-action interface hangs on FTP over TLS in
 * libcurl 7.88) over a pool of easy handles, so many callers' requests are
 * in flight at once on reused connections.  A dropped connection or a 5xx
 * answer is retried with backoff; every answer is checked against the
 * range asked for (status, Content-Range, body length). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "crypto/crypto.h"
#include "util/checked.h"
#include "util/json.h"
#include "vdisk/driver.h"

#define CURL_HANDLES 8                 /* transfers in flight per node */
#define CURL_DEFAULT_READAHEAD (256u << 10)
#define CURL_DEFAULT_TIMEOUT 5
#define CURL_TIMEOUT_MAX 10000         /* QEMU's limit, seconds */
#define CURL_MAX_XFER (2u << 20)       /* largest range fetched at once */
/* FTP: each range costs a new control connection (libcurl closes it after
 * a transfer ended early), so fewer, larger ones. */
#define CURL_FTP_MAX_XFER (8u << 20)
/* libcurl receives into a buffer of this size (its default, 16 KiB, costs
 * a recv and a poll per 16 KiB). */
#define CURL_RECV_BUFFER (128u << 10)
#define CURL_RA_LIMIT (1u << 20)       /* reads this long get no readahead */
#define CURL_CACHE_SLOTS 8
#define CURL_RETRIES 5                 /* default; backoff 0.1+0.2+0.4+0.8+1.6 s */
#define CURL_RETRIES_MAX 30
#define CURL_BACKOFF_MS 100
#define CURL_BACKOFF_MAX_MS 1600
#define CURL_MAX_REDIRS 20

/* One range request, owned by the caller that waits for it. */
struct creq {
    uint64_t off, len;        /* the range asked for */
    char *buf;
    uint64_t got;             /* body bytes stored */
    uint64_t last_ms;         /* when it started or last got data */
    bool overflow;            /* the body ran past len */
    bool range_ok;            /* a Content-Range matching the request */
    bool range_bad;           /* a Content-Range naming another range */
    bool done;
    CURLcode code;
    long status;
    char errbuf[CURL_ERROR_SIZE];
    struct creq *next;
};

/* One readahead buffer. */
struct cslot {
    uint64_t off, len, age;
    char *data;
};

struct curl_state {
    char *url, *cookie, *user, *password, *proxy_user, *proxy_password;
    uint64_t readahead, timeout, length, retries;
    bool sslverify, is_http, is_tls;
    CURLM *multi;
    CURL *easy[CURL_HANDLES];
    struct creq *active[CURL_HANDLES];
    pthread_t thread;
    bool thread_started, stopping;
    pthread_mutex_t lock;            /* guards the queue, active, stopping, done */
    pthread_cond_t cond;             /* a request is done */
    struct creq *queue, **queue_tail;
    pthread_mutex_t cache_lock;      /* guards cache and clock */
    struct cslot cache[CURL_CACHE_SLOTS];
    uint64_t clock;
    bool locks_init;
};

/* ---- names and options ---- */

/* A URL names the node: it becomes the url option. */
static int curl_parse_filename(const char *name, vd_opts *o)
{
    if (vd_opts_set(o, "url", name) < 0)
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* *out = a copy of option key (NULL when absent). */
static int opt_str(const vd_opts *o, const char *key, char **out)
{
    const char *v = vd_opts_get(o, key);

    *out = NULL;
    if (v && !(*out = strdup(v)))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* *out = the secret that option key names (NULL when absent). */
static int opt_secret(const vd_opts *o, const char *key, char **out)
{
    const char *id = vd_opts_get(o, key);

    *out = NULL;
    return id ? vd_secret_get_text(id, out) : 0;
}

/* Numbers and flags: readahead, timeout, sslverify (QEMU's checks). */
static int parse_numbers(struct curl_state *s, const vd_opts *o)
{
    int r;

    if ((r = vd_opts_get_size(o, "readahead", CURL_DEFAULT_READAHEAD, &s->readahead)) < 0 ||
        (r = vd_opts_get_u64(o, "timeout", CURL_DEFAULT_TIMEOUT, &s->timeout)) < 0 ||
        (r = vd_opts_get_bool(o, "sslverify", true, &s->sslverify)) < 0 ||
        (r = vd_opts_get_u64(o, "x-retries", CURL_RETRIES, &s->retries)) < 0)
        return r;
    if (s->retries > CURL_RETRIES_MAX)
        return vd_error(EINVAL, "x-retries must not be over %d", CURL_RETRIES_MAX);
    if (s->readahead % 512)
        return vd_error(EINVAL, "HTTP_READAHEAD_SIZE %llu is not a multiple of 512",
                        (unsigned long long)s->readahead);
    if (s->readahead > CURL_MAX_XFER)
        return vd_error(EINVAL, "readahead must not be over %u bytes", CURL_MAX_XFER);
    if (s->timeout > CURL_TIMEOUT_MAX)
        return vd_error(EINVAL, "timeout parameter is too large or negative");
    return 0;
}

/* Does url start with "proto://"? */
static bool scheme_is(const char *url, const char *proto)
{
    size_t l = strlen(proto);
    return !strncasecmp(url, proto, l) && !strncmp(url + l, "://", 3);
}

/* All the node's options into s. */
static int parse_options(struct curl_state *s, const vd_opts *o, const char *proto)
{
    int r;

    if (vd_opts_has(o, "cookie") && vd_opts_has(o, "cookie-secret"))
        return vd_error(EINVAL, "curl driver cannot handle both cookie and cookie secret");
    if ((r = parse_numbers(s, o)) < 0 || (r = opt_str(o, "url", &s->url)) < 0)
        return r;
    if (!s->url)
        return vd_error(EINVAL, "curl block driver requires an 'url' option");
    if (!scheme_is(s->url, proto))
        return vd_error(EINVAL, "%s curl driver cannot handle the URL '%s' (does not start "
                        "with '%s://')", proto, s->url, proto);
    if ((r = opt_str(o, "cookie", &s->cookie)) < 0 ||
        (!s->cookie && (r = opt_secret(o, "cookie-secret", &s->cookie)) < 0) ||
        (r = opt_str(o, "username", &s->user)) < 0 ||
        (r = opt_secret(o, "password-secret", &s->password)) < 0 ||
        (r = opt_str(o, "proxy-username", &s->proxy_user)) < 0 ||
        (r = opt_secret(o, "proxy-password-secret", &s->proxy_password)) < 0)
        return r;
    s->is_http = scheme_is(s->url, "http") || scheme_is(s->url, "https");
    s->is_tls = scheme_is(s->url, "https") || scheme_is(s->url, "ftps");
    return 0;
}

/* ---- easy handles ---- */

/* Milliseconds on the monotonic clock. */
static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Body bytes of a range request: stored up to the length asked for. */
static size_t on_body(char *p, size_t size, size_t nmemb, void *opaque)
{
    struct creq *q = opaque;
    size_t n = size * nmemb;

    if (n > q->len - q->got) {
        q->overflow = true;
        return 0;                   /* aborts the transfer */
    }
    memcpy(q->buf + q->got, p, n);
    q->got += n;
    q->last_ms = now_ms();
    return n;
}

/* Does header line h (length n) start with name (case-insensitive)? */
static const char *header_value(const char *h, size_t n, const char *name)
{
    size_t l = strlen(name);

    if (n <= l || strncasecmp(h, name, l))
        return NULL;
    h += l;
    while (*h == ' ' || *h == '\t')
        h++;
    return h;
}

/* Check a Content-Range header against the request. */
static size_t on_header(char *h, size_t size, size_t nmemb, void *opaque)
{
    struct creq *q = opaque;
    size_t n = size * nmemb;
    char line[256];
    const char *v;
    unsigned long long a, b;

    if (!q || n >= sizeof(line))
        return n;
    memcpy(line, h, n);
    line[n] = '\0';
    if ((v = header_value(line, n, "content-range:"))) {
        if (sscanf(v, "bytes %llu-%llu/", &a, &b) == 2 && a == q->off &&
            b == q->off + q->len - 1)
            q->range_ok = true;
        else
            q->range_bad = true;
    }
    return n;
}

/* Settings common to the probe and the range requests. */
static int setup_easy(struct curl_state *s, CURL *c, char *errbuf)
{
    long t = (long)s->timeout;
    CURLcode e = CURLE_OK;

#define SET(opt, val) if (e == CURLE_OK) e = curl_easy_setopt(c, opt, val)
    SET(CURLOPT_URL, s->url);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_FAILONERROR, 1L);
    SET(CURLOPT_FOLLOWLOCATION, 1L);
    SET(CURLOPT_MAXREDIRS, (long)CURL_MAX_REDIRS);
    SET(CURLOPT_PROTOCOLS_STR, "http,https,ftp,ftps");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https,ftp,ftps");
    SET(CURLOPT_SSL_VERIFYPEER, s->sslverify ? 1L : 0L);
    SET(CURLOPT_SSL_VERIFYHOST, s->sslverify ? 2L : 0L);
    /* A connection not made in timeout seconds fails (0: libcurl's
     * default); a stalled range request is ended by expire_stalled. */
    SET(CURLOPT_CONNECTTIMEOUT, t);
    SET(CURLOPT_COOKIE, s->cookie);
    SET(CURLOPT_USERNAME, s->user);
    SET(CURLOPT_PASSWORD, s->password);
    SET(CURLOPT_PROXYUSERNAME, s->proxy_user);
    SET(CURLOPT_PROXYPASSWORD, s->proxy_password);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_BUFFERSIZE, (long)CURL_RECV_BUFFER);
#undef SET
    if (e != CURLE_OK)
        return vd_error(EINVAL, "curl: %s", curl_easy_strerror(e));
    return 0;
}

/* ---- opening: the size and range support ---- */

struct probe_ctx { bool accept_ranges; };

/* Look for "Accept-Ranges: bytes" in the probe's headers. */
static size_t probe_header(char *h, size_t size, size_t nmemb, void *opaque)
{
    struct probe_ctx *p = opaque;
    size_t n = size * nmemb;
    char line[256];
    const char *v;

    if (n >= sizeof(line))
        return n;
    memcpy(line, h, n);
    line[n] = '\0';
    if ((v = header_value(line, n, "accept-ranges:")) && !strncasecmp(v, "bytes", 5))
        p->accept_ranges = true;
    else if (!strncasecmp(line, "HTTP/", 5))
        p->accept_ranges = false;   /* a new answer (after a redirect) */
    return n;
}

/* A body on the probe is not expected; drop it. */
static size_t probe_body(char *p, size_t size, size_t nmemb, void *opaque)
{
    return size * nmemb;
}

/* Ask the server for the size (HEAD, FTP SIZE) and range support. */
static int probe(struct curl_state *s)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    struct probe_ctx p = { false };
    curl_off_t cl = -1;
    CURL *c = curl_easy_init();
    int r;

    if (!c)
        return vd_error(ENOMEM, "CURL: Error opening file: out of memory");
    if ((r = setup_easy(s, c, errbuf)) < 0)
        goto out;
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)s->timeout);   /* 0: none */
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, probe_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &p);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, probe_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, NULL);
    if (curl_easy_perform(c) != CURLE_OK)
        r = vd_error(EIO, "CURL: Error opening file: %s", errbuf);
    else if (curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK ||
             cl < 0)
        r = vd_error(EIO, "CURL: Error opening file: Server didn't report file size.");
    else if (s->is_http && !p.accept_ranges)
        r = vd_error(EIO, "CURL: Error opening file: Server does not support 'range' "
                     "(byte ranges).");
    else
        s->length = (uint64_t)cl;
out:
    curl_easy_cleanup(c);
    return r;
}

/* ---- the transfer thread ---- */

/* Start queued requests on free handles (lock held). */
static void start_queued(struct curl_state *s)
{
    char range[64];

    for (int i = 0; i < CURL_HANDLES && s->queue; i++) {
        struct creq *q = s->queue;
        CURL *c = s->easy[i];

        if (s->active[i])
            continue;
        s->queue = q->next;
        if (!s->queue)
            s->queue_tail = &s->queue;
        snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)q->off,
                 (unsigned long long)(q->off + q->len - 1));
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, q->errbuf);
        curl_easy_setopt(c, CURLOPT_RANGE, range);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, q);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, q);
        curl_easy_setopt(c, CURLOPT_PRIVATE, (void *)(intptr_t)i);
        s->active[i] = q;
        q->last_ms = now_ms();
        if (curl_multi_add_handle(s->multi, c) != CURLM_OK) {
            s->active[i] = NULL;
            q->code = CURLE_OUT_OF_MEMORY;
            snprintf(q->errbuf, sizeof(q->errbuf), "cannot start a transfer");
            q->done = true;
        }
    }
}

/* End the transfers that got no data for timeout seconds (lock held). */
static void expire_stalled(struct curl_state *s)
{
    uint64_t now = now_ms();

    for (int i = 0; s->timeout && i < CURL_HANDLES; i++) {
        struct creq *q = s->active[i];
        if (!q || now - q->last_ms < s->timeout * 1000)
            continue;
        curl_multi_remove_handle(s->multi, s->easy[i]);
        q->code = CURLE_OPERATION_TIMEDOUT;
        snprintf(q->errbuf, sizeof(q->errbuf), "no data for %llu seconds",
                 (unsigned long long)s->timeout);
        q->done = true;
        s->active[i] = NULL;
        pthread_cond_broadcast(&s->cond);
    }
}

/* Hand finished transfers back to their callers (lock held). */
static void collect_done(struct curl_state *s)
{
    CURLMsg *m;
    int left;

    while ((m = curl_multi_info_read(s->multi, &left))) {
        void *priv = NULL;
        int i;

        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        i = (int)(intptr_t)priv;
        if (i < 0 || i >= CURL_HANDLES || !s->active[i])
            continue;
        s->active[i]->code = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &s->active[i]->status);
        s->active[i]->done = true;
        s->active[i] = NULL;
        curl_multi_remove_handle(s->multi, m->easy_handle);
        pthread_cond_broadcast(&s->cond);
    }
}

/* How long to wait for socket activity.  Over TLS, libcurl 7.88 may hold
 * decrypted FTP data that no socket announces (what hangs the socket-action
 * interface): while transfers run there, poll briefly and perform again. */
static int poll_ms(const struct curl_state *s, int running)
{
    if (!running)
        return 1000;                /* idle: curl_multi_wakeup ends it */
    return s->is_tls ? 5 : 100;
}

/* Body bytes received so far by the running transfers (lock held). */
static uint64_t bytes_in_flight(const struct curl_state *s)
{
    uint64_t sum = 0;

    for (int i = 0; i < CURL_HANDLES; i++)
        if (s->active[i])
            sum += s->active[i]->got;
    return sum;
}

/* Is a handle free for a queued request (lock held)? */
static bool has_free_handle(const struct curl_state *s)
{
    for (int i = 0; i < CURL_HANDLES; i++)
        if (!s->active[i])
            return true;
    return false;
}

/* Drive the multi handle until the node closes. */
static void *transfer_main(void *arg)
{
    struct curl_state *s = arg;
    int running;
    uint64_t before;

    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        start_queued(s);
        pthread_cond_broadcast(&s->cond);
        before = bytes_in_flight(s);
        pthread_mutex_unlock(&s->lock);
        curl_multi_perform(s->multi, &running);
        pthread_mutex_lock(&s->lock);
        /* Data came: more may wait in TLS buffers that poll cannot see. */
        bool moved = bytes_in_flight(s) != before;
        collect_done(s);
        expire_stalled(s);
        if ((s->queue && has_free_handle(s)) || s->stopping || moved)
            continue;
        pthread_mutex_unlock(&s->lock);
        curl_multi_poll(s->multi, NULL, 0, poll_ms(s, running), NULL);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Submit q and wait for its end. */
static void run_request(struct curl_state *s, struct creq *q)
{
    pthread_mutex_lock(&s->lock);
    q->next = NULL;
    *s->queue_tail = q;
    s->queue_tail = &q->next;
    curl_multi_wakeup(s->multi);
    while (!q->done)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

/* ---- reads ---- */

/* Is a failed transfer worth another try (connection lost, 5xx, short)? */
static bool retryable(const struct creq *q)
{
    switch (q->code) {
    case CURLE_COULDNT_CONNECT: case CURLE_SEND_ERROR: case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING: case CURLE_PARTIAL_FILE: case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR: case CURLE_FTP_ACCEPT_TIMEOUT:
        return true;
    case CURLE_HTTP_RETURNED_ERROR:
        return q->status >= 500;
    case CURLE_OK:
        return !q->overflow && !q->range_bad && q->got < q->len;
    default:
        return false;
    }
}

/* The answer to q is the range asked for: 0, else -EIO with a message. */
static int check_answer(const struct curl_state *s, const struct creq *q)
{
    if (q->overflow)
        return vd_error(EIO, "curl: the server sent more than the %llu bytes asked for "
                        "at offset %llu", (unsigned long long)q->len,
                        (unsigned long long)q->off);
    if (q->code != CURLE_OK)
        return vd_error(EIO, "curl: %s", q->errbuf[0] ? q->errbuf : curl_easy_strerror(q->code));
    if (q->range_bad)
        return vd_error(EIO, "curl: the server answered another range than bytes %llu-%llu",
                        (unsigned long long)q->off, (unsigned long long)(q->off + q->len - 1));
    if (s->is_http && q->status != 206 && !(q->status == 200 && q->off == 0 &&
                                            q->len == s->length))
        return vd_error(EIO, "curl: the server answered HTTP %ld to a range request",
                        q->status);
    if (s->is_http && q->status == 206 && !q->range_ok)
        return vd_error(EIO, "curl: the server's answer has no Content-Range");
    if (q->got != q->len)
        return vd_error(EIO, "curl: short answer: %llu of %llu bytes at offset %llu",
                        (unsigned long long)q->got, (unsigned long long)q->len,
                        (unsigned long long)q->off);
    return 0;
}

/* Fetch [off, off+len) into buf, retrying with backoff. */
static int fetch(struct curl_state *s, uint64_t off, uint64_t len, char *buf)
{
    unsigned delay = CURL_BACKOFF_MS;
    struct creq q;

    for (int attempt = 0;; attempt++) {
        memset(&q, 0, sizeof(q));
        q.off = off;
        q.len = len;
        q.buf = buf;
        run_request(s, &q);
        if (!retryable(&q) || (uint64_t)attempt >= s->retries)
            break;
        nanosleep(&(struct timespec){ delay / 1000, (long)(delay % 1000) * 1000000 }, NULL);
        delay = VD_MIN(delay * 2, (unsigned)CURL_BACKOFF_MAX_MS);
    }
    return check_answer(s, &q);
}

/* Copy [off, off+len) from a readahead buffer if one holds it all. */
static bool cache_lookup(struct curl_state *s, uint64_t off, uint64_t len, char *buf)
{
    bool hit = false;

    pthread_mutex_lock(&s->cache_lock);
    for (int i = 0; i < CURL_CACHE_SLOTS && !hit; i++) {
        struct cslot *c = &s->cache[i];
        if (c->data && off >= c->off && off - c->off <= c->len &&
            len <= c->len - (off - c->off)) {
            memcpy(buf, c->data + (off - c->off), len);
            c->age = ++s->clock;
            hit = true;
        }
    }
    pthread_mutex_unlock(&s->cache_lock);
    return hit;
}

/* Keep data (ownership taken) as the oldest slot's new content. */
static void cache_store(struct curl_state *s, uint64_t off, uint64_t len, char *data)
{
    struct cslot *old;

    pthread_mutex_lock(&s->cache_lock);
    old = &s->cache[0];
    for (int i = 1; i < CURL_CACHE_SLOTS; i++)
        if (s->cache[i].age < old->age)
            old = &s->cache[i];
    free(old->data);
    *old = (struct cslot){ off, len, ++s->clock, data };
    pthread_mutex_unlock(&s->cache_lock);
}

/* A short read fetches readahead more bytes and keeps them. */
static int read_ahead(struct curl_state *s, uint64_t off, uint64_t len, char *buf)
{
    uint64_t total = VD_MIN(len + s->readahead, s->length - off);
    char *data;
    int r;

    if (cache_lookup(s, off, len, buf))
        return 0;
    if (!(data = malloc(total)))
        return fetch(s, off, len, buf);
    if ((r = fetch(s, off, total, data)) < 0) {
        free(data);
        return r;
    }
    memcpy(buf, data, len);
    cache_store(s, off, total, data);
    return 0;
}

/* Read; the sector-rounding tail past the file reads as zeroes. */
static int curl_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct curl_state *s = n->state;
    uint64_t l = off >= s->length ? 0 : VD_MIN(len, s->length - off);

    if (l < len)
        memset((char *)buf + l, 0, (size_t)(len - l));
    if (!l)
        return 0;
    if (s->readahead && l < CURL_RA_LIMIT)
        return read_ahead(s, off, l, buf);
    return fetch(s, off, l, buf);
}

/* ---- the node's name ---- */

/* Options QEMU does not consider implied by the URL: any of them makes the
 * name a json: object. */
static const char *const strong_opts[] = {
    "sslverify", "cookie", "cookie-secret", "username", "password-secret",
    "proxy-username", "proxy-password-secret",
};

/* QEMU prints a json: name's keys in the order of its dictionary's hash
 * buckets (512 of them); this is that bucket for key. */
static unsigned key_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);

    for (unsigned i = 0; key[i]; i++)
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    return (1103515243u * v + 12345u) % 512;
}

/* The json: name QEMU gives the node when a strong option is set, else
 * NULL (the URL names it). */
static char *json_name(const vd_opts *o, const char *driver, const char *url)
{
    const char *keys[VD_ARRAY_SIZE(strong_opts) + 2] = { "url", "driver" };
    size_t nk = 2;
    vd_json *j;
    char *text, *name = NULL;

    for (size_t i = 0; i < VD_ARRAY_SIZE(strong_opts); i++)
        if (vd_opts_has(o, strong_opts[i]))
            keys[nk++] = strong_opts[i];
    if (nk == 2)
        return NULL;
    for (size_t i = 1; i < nk; i++)          /* insertion sort by bucket */
        for (size_t k = i; k > 0 && key_bucket(keys[k]) < key_bucket(keys[k - 1]); k--) {
            const char *t = keys[k];
            keys[k] = keys[k - 1];
            keys[k - 1] = t;
        }
    if (!(j = vd_json_new_object()))
        return NULL;
    for (size_t i = 0; i < nk; i++)
        vd_json_set_str(j, keys[i], !strcmp(keys[i], "url") ? url
                        : !strcmp(keys[i], "driver") ? driver : vd_opts_get(o, keys[i]));
    if ((text = vd_json_to_compact(j)) && asprintf(&name, "json:%s", text) < 0)
        name = NULL;
    free(text);
    vd_json_free(j);
    return name;
}

/* Name the node: its URL, or QEMU's json: name. */
static int set_name(vd_node *n, const vd_opts *o, const char *url)
{
    char *name = json_name(o, n->drv->name, url);

    free(n->filename);
    n->filename = name ? name : strdup(url);
    return n->filename ? 0 : vd_error(ENOMEM, "out of memory");
}

/* ---- open / close ---- */

/* Make the multi handle, the easy handles and the transfer thread. */
static int start_transfers(struct curl_state *s)
{
    char dummy[CURL_ERROR_SIZE];
    int r;

    if (!(s->multi = curl_multi_init()))
        return vd_error(ENOMEM, "out of memory");
    curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)CURL_HANDLES);
    for (int i = 0; i < CURL_HANDLES; i++) {
        if (!(s->easy[i] = curl_easy_init()))
            return vd_error(ENOMEM, "out of memory");
        if ((r = setup_easy(s, s->easy[i], dummy)) < 0)
            return r;
    }
    s->queue_tail = &s->queue;
    if (pthread_create(&s->thread, NULL, transfer_main, s))
        return vd_error(EAGAIN, "cannot start the transfer thread");
    s->thread_started = true;
    return 0;
}

/* Open: check options and read-only, ask the size, start transfers. */
static int curl_open(vd_node *n, vd_opts *opts, int flags)
{
    struct curl_state *s = n->state;
    int r;

    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->cache_lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->locks_init = true;
    if (!n->read_only)
        return vd_error(EACCES, "curl driver does not support writes");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return vd_error(EIO, "CURL: could not initialise libcurl");
    if ((r = parse_options(s, opts, n->drv->name)) < 0 || (r = probe(s)) < 0 ||
        (r = start_transfers(s)) < 0)
        return r;
    n->max_transfer = s->is_http ? CURL_MAX_XFER : CURL_FTP_MAX_XFER;
    if ((r = set_name(n, opts, s->url)) < 0)
        return r;
    static const char *const ours[] = {
        "url", "readahead", "timeout", "sslverify", "cookie", "cookie-secret", "username",
        "password-secret", "proxy-username", "proxy-password-secret", "x-retries", "filename",
    };
    for (size_t i = 0; i < VD_ARRAY_SIZE(ours); i++)
        vd_opts_del(opts, ours[i]);
    return 0;
}

/* Stop the thread, free the handles and buffers. */
static void curl_close(vd_node *n)
{
    struct curl_state *s = n->state;

    if (s->thread_started) {
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        curl_multi_wakeup(s->multi);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < CURL_HANDLES; i++) {
        if (s->easy[i] && s->multi)
            curl_multi_remove_handle(s->multi, s->easy[i]);
        if (s->easy[i])
            curl_easy_cleanup(s->easy[i]);
    }
    if (s->multi)
        curl_multi_cleanup(s->multi);
    for (int i = 0; i < CURL_CACHE_SLOTS; i++)
        free(s->cache[i].data);
    free(s->url);
    vd_secret_free_text(s->cookie);
    free(s->user);
    vd_secret_free_text(s->password);
    free(s->proxy_user);
    vd_secret_free_text(s->proxy_password);
    if (s->locks_init) {
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->cache_lock);
        pthread_cond_destroy(&s->cond);
    }
}

/* The file's size from the server. */
static int64_t curl_getlength(vd_node *n)
{
    struct curl_state *s = n->state;
    return (int64_t)s->length;
}

/* QEMU's curl driver has no get_info: info over it shows no dirty flag. */
static int64_t curl_cluster_size(vd_node *n)
{
    return -1;
}

static const struct vd_opt_desc curl_open_opts[] = {
    { "url", VD_OPT_STRING, "URL of the image file", NULL },
    { "readahead", VD_OPT_SIZE, "Bytes read beyond a short request and kept", "256k" },
    { "timeout", VD_OPT_NUMBER, "Seconds a connection or a stalled transfer may take", "5" },
    { "sslverify", VD_OPT_BOOL, "Verify the server's TLS certificate", "on" },
    { "cookie", VD_OPT_STRING, "Cookies sent with each request", NULL },
    { "cookie-secret", VD_OPT_STRING, "ID of a secret holding the cookies", NULL },
    { "username", VD_OPT_STRING, "User name for authentication", NULL },
    { "password-secret", VD_OPT_STRING, "ID of a secret holding the password", NULL },
    { "proxy-username", VD_OPT_STRING, "User name for the proxy", NULL },
    { "proxy-password-secret", VD_OPT_STRING, "ID of a secret holding the proxy password",
      NULL },
    { "x-retries", VD_OPT_NUMBER, "Retries of a failed read, with backoff", "5" },
    { NULL, 0, NULL, NULL },
};

#define CURL_DRIVER(var, proto)                         \
    static const struct vd_driver var = {               \
        .struct_size = sizeof(struct vd_driver),        \
        .name = proto,                                  \
        .kind = VD_DRV_PROTOCOL,                        \
        .protocol = proto,                              \
        .state_size = sizeof(struct curl_state),        \
        .open_opts = curl_open_opts,                    \
        .parse_filename = curl_parse_filename,          \
        .open = curl_open,                              \
        .close = curl_close,                            \
        .pread = curl_pread,                            \
        .getlength = curl_getlength,                    \
        .cluster_size = curl_cluster_size,              \
    };                                                  \
    VD_DRIVER_REGISTER(var)

CURL_DRIVER(http_driver, "http")
CURL_DRIVER(https_driver, "https")
CURL_DRIVER(ftp_driver, "ftp")
CURL_DRIVER(ftps_driver, "ftps")
