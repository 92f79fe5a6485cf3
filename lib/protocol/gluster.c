/* SPDX-License-Identifier: BSD-3-Clause */
/* The "gluster" protocol driver: a file on a GlusterFS volume through
 * libgfapi.  Names: gluster[+tcp|+unix|+rdma]://[host[:port]]/volume/path
 * [?socket=...] or the options volume, path, server.N.{type,host,port,path,
 * socket}, debug, logfile.  The copy engine's workers call the synchronous
 * glfs_pread/glfs_pwrite on one shared glfs_fd from many threads at once
 * (libgfapi is thread-safe), so many requests are in flight.
 *
 * Connections: one glfs_t per process and per volume and server list,
 * shared by every node that names them (reference counted).  glfs_fini
 * blocks for about ten seconds (libgfapi waits for its timer thread), so a
 * connection nobody uses any more stays idle for the next open and is never
 * torn down at exit: the kernel closes its sockets when the process ends and
 * the servers see a disconnect; nothing on the server side depends on a
 * clean teardown.  Only when too many idle ones pile up (a long-running
 * server opening many volumes) is the oldest finished, in a detached thread
 * so no caller waits for it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <glusterfs/api/glfs.h>

#include "protocol/gluster-config.h"
#include "util/checked.h"
#include "vdisk/driver.h"

#define GL_MAX_IDLE 4                  /* idle connections kept per process */
/* Largest read or write.  libgfapi receives each reply into a buffer of
 * its own and copies it out; with eight 1 MiB requests in flight against one
 * brick on loopback, those buffers were fresh memory most of the time (3x
 * the page faults and about 1.5x the CPU of 128 KiB requests, and slower);
 * 256 KiB and 64 KiB did no better than 128 KiB. */
#define GL_MAX_XFER (128u << 10)

/* One shared connection to a volume. */
struct gl_conn {
    char *key;              /* volume and servers */
    glfs_t *fs;
    int refs;
    uint64_t idle_since;    /* order of going idle */
    struct gl_conn *next;
};

struct gl_state {
    struct gl_config cfg;
    struct gl_conn *conn;
    glfs_fd_t *fd;
    bool seek_data;         /* the volume answers SEEK_DATA/SEEK_HOLE */
};

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gl_conn *conns;          /* reachable until exit, on purpose */
static uint64_t idle_clock;

/* A URL names the node: it becomes the filename option (checked at open). */
static int gluster_parse_filename(const char *name, vd_opts *o)
{
    if (vd_opts_set(o, "filename", name) < 0)
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* ---- connections ---- */

/* glfs_init run in its own thread so that a server that accepts but never
 * answers cannot hold the caller beyond the timeout. */
struct init_job {
    glfs_t *fs;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done, abandoned;
    int ret, err;
};

static void free_job(struct init_job *j)
{
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    free(j);
}

static void *init_main(void *arg)
{
    struct init_job *j = arg;
    int ret = glfs_init(j->fs), err = errno;
    bool abandoned;

    pthread_mutex_lock(&j->lock);
    j->ret = ret;
    j->err = err;
    j->done = true;
    abandoned = j->abandoned;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
    if (abandoned)
        free_job(j);   /* the glfs_t stays: finishing it would block */
    return NULL;
}

/* glfs_init bounded by timeout seconds: 0, or -errno (-ETIMEDOUT). */
static int init_bounded(glfs_t *fs, uint64_t timeout)
{
    struct init_job *j = calloc(1, sizeof(*j));
    struct timespec ts;
    pthread_t t;
    int r = 0;

    if (!j)
        return -ENOMEM;
    j->fs = fs;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    if (pthread_create(&t, NULL, init_main, j)) {
        free_job(j);
        return -EAGAIN;
    }
    pthread_detach(t);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)timeout;
    pthread_mutex_lock(&j->lock);
    while (!j->done && r != ETIMEDOUT)
        r = pthread_cond_timedwait(&j->cond, &j->lock, &ts);
    if (!j->done) {
        j->abandoned = true;
        pthread_mutex_unlock(&j->lock);
        return -ETIMEDOUT;
    }
    r = j->ret ? -(j->err ? j->err : EINVAL) : 0;
    pthread_mutex_unlock(&j->lock);
    free_job(j);
    return r;
}

/* Options every connection gets: bounded request and ping times, and
 * writes that failed before a flush retried by it rather than lost. */
static int set_client_options(glfs_t *fs, const struct gl_config *c)
{
    char t[16];

    snprintf(t, sizeof(t), "%llu", (unsigned long long)c->timeout);
    if (glfs_set_xlator_option(fs, "*-client-*", "ping-timeout", t) ||
        glfs_set_xlator_option(fs, "*-client-*", "frame-timeout", t) ||
        glfs_set_xlator_option(fs, "*-write-behind", "resync-failed-syncs-after-fsync", "on"))
        return -EINVAL;
    return 0;
}

/* QEMU's message when the volume cannot be reached. */
static int connect_error(const struct gl_config *c, int err)
{
    char hints[4096] = "";
    size_t used = 0;

    for (size_t i = 0; i < c->nservers && used < sizeof(hints); i++) {
        const struct gl_server *s = &c->servers[i];
        int k = s->type == GL_UNIX
                    ? snprintf(hints + used, sizeof(hints) - used, "hint: failed on socket %s ",
                               s->socket)
                    : snprintf(hints + used, sizeof(hints) - used,
                               "hint: failed on host %s and port %s ", s->host, s->port);
        if (k < 0)
            break;
        used += (size_t)k;
    }
    return vd_error(err, "Gluster connection for volume %s, path %s failed to connect%s\n"
                    "%sPlease refer to gluster logs for more info",
                    c->volume, c->path, err == ETIMEDOUT ? " (timed out)" : "", hints);
}

/* Make and initialise a new glfs_t for c; NULL with a message. */
static glfs_t *new_fs(const struct gl_config *c)
{
    glfs_t *fs = glfs_new(c->volume);
    int r = 0;

    if (!fs)
        return vd_error(ENOMEM, "out of memory"), NULL;
    for (size_t i = 0; i < c->nservers && r == 0; i++) {
        const struct gl_server *s = &c->servers[i];
        r = s->type == GL_UNIX ? glfs_set_volfile_server(fs, "unix", s->socket, 0)
                               : glfs_set_volfile_server(fs, "tcp", s->host, atoi(s->port));
    }
    /* libgfapi's own log goes where the user says, else nowhere: a library
     * does not write on the caller's terminal. */
    if (r == 0)
        r = glfs_set_logging(fs, c->logfile ? c->logfile : "/dev/null", (int)c->debug);
    if (r == 0)
        r = set_client_options(fs, c);
    if (r == 0)
        r = init_bounded(fs, c->timeout);
    if (r != 0) {
        /* Not finished (glfs_fini would block; the process usually exits
         * after a failed open): parked where it stays reachable. */
        static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
        static glfs_t *parked[64];
        static size_t nparked;
        pthread_mutex_lock(&park_lock);
        if (nparked < VD_ARRAY_SIZE(parked))
            parked[nparked++] = fs;
        pthread_mutex_unlock(&park_lock);
        connect_error(c, r < 0 ? -r : EINVAL);
        return NULL;
    }
    return fs;
}

static void *fini_main(void *arg)
{
    glfs_fini(arg);
    return NULL;
}

/* Finish the oldest idle connection when too many are idle (lock held). */
static void trim_idle(void)
{
    struct gl_conn **pp, **oldest = NULL;
    int idle = 0;
    pthread_t t;

    for (pp = &conns; *pp; pp = &(*pp)->next)
        if (!(*pp)->refs) {
            idle++;
            if (!oldest || (*pp)->idle_since < (*oldest)->idle_since)
                oldest = pp;
        }
    if (idle <= GL_MAX_IDLE || !oldest)
        return;
    struct gl_conn *c = *oldest;
    *oldest = c->next;
    if (pthread_create(&t, NULL, fini_main, c->fs) == 0)
        pthread_detach(t);
    free(c->key);
    free(c);
}

/* The shared connection for c, made on first use. */
static struct gl_conn *conn_get(const struct gl_config *c)
{
    struct gl_conn *k;
    char *key = gl_conn_key(c);

    if (!key)
        return vd_error(ENOMEM, "out of memory"), NULL;
    pthread_mutex_lock(&conn_lock);
    for (k = conns; k && strcmp(k->key, key); k = k->next)
        ;
    if (k) {
        k->refs++;
        free(key);
    } else if ((k = calloc(1, sizeof(*k))) && (k->fs = new_fs(c))) {
        k->key = key;
        k->refs = 1;
        k->next = conns;
        conns = k;
    } else {
        if (!k)
            vd_error(ENOMEM, "out of memory");
        free(k);
        free(key);
        k = NULL;
    }
    pthread_mutex_unlock(&conn_lock);
    return k;
}

/* Drop a reference; the connection stays for the next open. */
static void conn_put(struct gl_conn *k)
{
    if (!k)
        return;
    pthread_mutex_lock(&conn_lock);
    if (--k->refs == 0) {
        k->idle_since = ++idle_clock;
        trim_idle();
    }
    pthread_mutex_unlock(&conn_lock);
}

/* Name the node: its URL, or QEMU's json: name. */
static int set_name(vd_node *n, const vd_opts *o, const struct gl_config *c)
{
    char *name = c->from_uri ? strdup(vd_opts_get(o, "filename")) : gl_json_name(o);

    if (!name)
        return vd_error(ENOMEM, "out of memory");
    free(n->filename);
    n->filename = name;
    return 0;
}

/* ---- open / close ---- */

/* Does the volume answer SEEK_DATA (QEMU's test: at offset 0 data, or
 * ENXIO for an empty or all-hole file)? */
static bool probe_seek_data(glfs_fd_t *fd)
{
    off_t r = glfs_lseek(fd, 0, SEEK_DATA);

    return r >= 0 || errno == ENXIO;
}

/* The open file's error, as QEMU words it. */
static int open_error(const struct gl_config *c, const vd_opts *o, int err)
{
    if (c->from_uri)
        return vd_error(err, "Could not open '%s': %s", vd_opts_get(o, "filename"),
                        strerror(err));
    return vd_error(err, "Could not open image: %s", strerror(err));
}

static const char *const gl_keys[] = {
    "filename", "volume", "path", "debug", "logfile", "x-timeout",
};

/* Drop every option the driver consumed. */
static void consume_opts(vd_opts *o)
{
    for (size_t i = 0; i < VD_ARRAY_SIZE(gl_keys); i++)
        vd_opts_del(o, gl_keys[i]);
    for (size_t i = vd_opts_count(o); i-- > 0;)
        if (!strncmp(vd_opts_key(o, i), "server.", 7))
            vd_opts_del(o, vd_opts_key(o, i));
}

static int gluster_open(vd_node *n, vd_opts *opts, int flags)
{
    struct gl_state *s = n->state;
    int r;

    if ((r = gl_parse_config(opts, &s->cfg)) < 0)
        return r;
    if (s->cfg.rdma)
        fprintf(stderr, "%s: warning: rdma feature is not supported, falling back to tcp\n",
                program_invocation_short_name);
    if (!(s->conn = conn_get(&s->cfg)))
        return -EIO;
    s->fd = glfs_open(s->conn->fs, s->cfg.path, n->read_only ? O_RDONLY : O_RDWR);
    if (!s->fd)
        return open_error(&s->cfg, opts, errno ? errno : EIO);
    s->seek_data = probe_seek_data(s->fd);
    /* Whole sectors, as QEMU's gluster driver reads and writes: a file it
     * made ends on a sector boundary, and QEMU fails reads of a file that
     * does not (a short read is an I/O error there). */
    n->request_alignment = 512;
    n->max_transfer = GL_MAX_XFER;
    if ((r = set_name(n, opts, &s->cfg)) < 0)
        return r;
    consume_opts(opts);
    return 0;
}

static void gluster_close(vd_node *n)
{
    struct gl_state *s = n->state;

    if (s->fd)
        glfs_close(s->fd);
    conn_put(s->conn);
    gl_free_config(&s->cfg);
}

/* ---- I/O ---- */

static int64_t gluster_getlength(vd_node *n)
{
    struct gl_state *s = n->state;
    struct stat st;

    if (glfs_fstat(s->fd, &st) < 0)
        return vd_error(errno, "Could not stat '%s': %s", n->filename, strerror(errno));
    return st.st_size;
}

static int64_t gluster_get_allocated_size(vd_node *n)
{
    struct gl_state *s = n->state;
    struct stat st;

    if (glfs_fstat(s->fd, &st) < 0)
        return vd_error(errno, "Could not stat '%s': %s", n->filename, strerror(errno));
    return (int64_t)st.st_blocks * 512;
}

/* Read; bytes past the end of the file read as zeroes. */
static int gluster_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct gl_state *s = n->state;
    char *p = buf;

    while (len) {
        ssize_t r = glfs_pread(s->fd, p, (size_t)len, (off_t)off, 0, NULL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return vd_error(errno, "gluster: read error at offset %llu: %s",
                            (unsigned long long)off, strerror(errno));
        if (r == 0) {
            memset(p, 0, (size_t)len);
            break;
        }
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

static int gluster_flush(vd_node *n)
{
    struct gl_state *s = n->state;

    if (glfs_fsync(s->fd, NULL, NULL) < 0)
        return vd_error(errno, "gluster: flush failed: %s", strerror(errno));
    return 0;
}

static int gluster_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct gl_state *s = n->state;
    const char *p = buf;

    while (len) {
        ssize_t r = glfs_pwrite(s->fd, p, (size_t)len, (off_t)off, 0, NULL, NULL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int err = r < 0 ? errno : EIO;
            return vd_error(err, "gluster: write error at offset %llu: %s",
                            (unsigned long long)off, strerror(err));
        }
        p += r;
        off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return (flags & VD_REQ_FUA) ? gluster_flush(n) : 0;
}

/* Zeroes with the volume's zerofill; -ENOTSUP lets the core write them. */
static int gluster_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct gl_state *s = n->state;

    if (len > INT64_MAX || glfs_zerofill(s->fd, (off_t)off, (off_t)len) < 0) {
        int err = len > INT64_MAX ? EINVAL : errno;
        if (err == ENOTSUP || err == EOPNOTSUPP || err == ENOSYS || err == EINVAL)
            return -ENOTSUP;
        return vd_error(err, "gluster: write zeroes failed: %s", strerror(err));
    }
    return (flags & VD_REQ_FUA) ? gluster_flush(n) : 0;
}

/* Discard is advisory: a volume without it ignores the request. */
static int gluster_discard(vd_node *n, uint64_t off, uint64_t len)
{
    struct gl_state *s = n->state;

    if (len > SIZE_MAX || glfs_discard(s->fd, (off_t)off, (size_t)len) < 0) {
        int err = len > SIZE_MAX ? EINVAL : errno;
        if (err == ENOTSUP || err == EOPNOTSUPP || err == ENOSYS)
            return 0;
        return vd_error(err, "gluster: discard failed: %s", strerror(err));
    }
    return 0;
}

/* Data and holes from glfs_lseek; without SEEK_DATA all is data. */
static int gluster_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                                uint64_t *map, vd_node **file)
{
    struct gl_state *s = n->state;
    const int data = VD_BS_DATA | VD_BS_OFFSET_VALID;
    off_t d, h;

    *map = off;
    *file = n;
    *pnum = len;
    if (!s->seek_data)
        return data;
    d = glfs_lseek(s->fd, (off_t)off, SEEK_DATA);
    if (d < 0)
        return errno == ENXIO ? VD_BS_ZERO | VD_BS_OFFSET_VALID : data;
    if ((uint64_t)d > off) {
        *pnum = VD_MIN((uint64_t)d - off, len);
        return VD_BS_ZERO | VD_BS_OFFSET_VALID;
    }
    h = glfs_lseek(s->fd, (off_t)off, SEEK_HOLE);
    if (h > (off_t)off)
        *pnum = VD_MIN((uint64_t)h - off, len);
    return data;
}

/* Resize fd from cur to size with a preallocation mode (QEMU's: off,
 * falloc, full; growing only with preallocation). */
static int resize_fd(glfs_fd_t *fd, uint64_t cur, uint64_t size, int prealloc)
{
    if (size > INT64_MAX)
        return vd_error(EFBIG, "File size %llu is too large", (unsigned long long)size);
    if (prealloc != VD_PREALLOC_OFF && size < cur)
        return vd_error(ENOTSUP, "Cannot use preallocation for shrinking files");
    switch (prealloc) {
    case VD_PREALLOC_OFF:
        break;
    case VD_PREALLOC_FALLOC:
        if (size > cur && glfs_fallocate(fd, 0, (off_t)cur, (size_t)(size - cur)) < 0)
            return vd_error(errno, "Could not preallocate data for the new file: %s",
                            strerror(errno));
        break;
    case VD_PREALLOC_FULL:
        if (glfs_ftruncate(fd, (off_t)size, NULL, NULL) < 0)
            return vd_error(errno, "Could not resize file: %s", strerror(errno));
        if (size > cur && glfs_zerofill(fd, (off_t)cur, (off_t)(size - cur)) < 0)
            return vd_error(errno, "Could not zerofill the new area: %s", strerror(errno));
        return 0;
    default:
        return vd_error(ENOTSUP, "Unsupported preallocation mode: %s",
                        vd_prealloc_name(prealloc));
    }
    if (glfs_ftruncate(fd, (off_t)size, NULL, NULL) < 0)
        return vd_error(errno, "Could not resize file: %s", strerror(errno));
    return 0;
}

static int gluster_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct gl_state *s = n->state;
    int64_t cur = gluster_getlength(n);

    if (cur < 0)
        return (int)cur;
    return resize_fd(s->fd, (uint64_t)cur, size, prealloc);
}

/* Files made on a volume read as zeroes. */
static bool gluster_has_zero_init(vd_node *n)
{
    return true;
}

/* QEMU's gluster driver has no get_info: info shows no dirty flag. */
static int64_t gluster_cluster_size(vd_node *n)
{
    return -1;
}

/* ---- create ---- */

static int parse_prealloc(const char *v, int *out)
{
    if (!v || !strcmp(v, "off"))
        *out = VD_PREALLOC_OFF;
    else if (!strcmp(v, "falloc"))
        *out = VD_PREALLOC_FALLOC;
    else if (!strcmp(v, "full"))
        *out = VD_PREALLOC_FULL;
    else
        return vd_error(EINVAL, "Invalid parameter '%s'", v);
    return 0;
}

/* Create the file the URL names with size and preallocation. */
static int gluster_create(const char *filename, vd_opts *opts)
{
    struct gl_config c = { 0 };
    struct gl_conn *k = NULL;
    glfs_fd_t *fd = NULL;
    uint64_t size;
    int prealloc = VD_PREALLOC_OFF, r;
    vd_opts *o = vd_opts_dup(opts);

    if (!o)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_opts_get_size(opts, "size", 0, &size)) < 0 ||
        (r = parse_prealloc(vd_opts_get(opts, "preallocation"), &prealloc)) < 0)
        goto out;
    if (!round_up_checked(size, 512, &size) || size > INT64_MAX) {
        r = vd_error(EFBIG, "Image size is too large");
        goto out;
    }
    if (!vd_opts_has(o, "filename") && (r = vd_opts_set(o, "filename", filename)) < 0)
        goto out;
    if ((r = gl_parse_config(o, &c)) < 0)
        goto out;
    if (!(k = conn_get(&c))) {
        r = -EIO;
        goto out;
    }
    if (!(fd = glfs_creat(k->fs, c.path, O_WRONLY | O_CREAT | O_TRUNC, S_IRUSR | S_IWUSR))) {
        r = vd_error(errno, "Could not create '%s': %s", filename, strerror(errno));
        goto out;
    }
    r = resize_fd(fd, 0, size, prealloc);
    if (glfs_close(fd) < 0 && r >= 0)
        r = vd_error(errno, "Could not close the new file: %s", strerror(errno));
out:
    conn_put(k);
    gl_free_config(&c);
    vd_opts_free(o);
    return r;
}

static const struct vd_opt_desc gluster_open_opts[] = {
    { "filename", VD_OPT_STRING, "URL to the gluster image", NULL },
    { "volume", VD_OPT_STRING, "name of gluster volume where VM image resides", NULL },
    { "path", VD_OPT_STRING, "absolute path to image file in gluster volume", NULL },
    { "debug", VD_OPT_NUMBER, "Gluster log level, valid range is 0-9", NULL },
    { "logfile", VD_OPT_STRING, "Logfile path of libgfapi", NULL },
    { "x-timeout", VD_OPT_NUMBER, "Seconds a connection or a request may take", "30" },
    { NULL, 0, NULL, NULL },
};

static const struct vd_opt_desc gluster_create_opts[] = {
    { "debug", VD_OPT_NUMBER, "Gluster log level, valid range is 0-9", NULL },
    { "logfile", VD_OPT_STRING, "Logfile path of libgfapi", NULL },
    { "preallocation", VD_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", NULL },
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

static const char *const gluster_aliases[] = { "gluster+tcp", "gluster+unix", "gluster+rdma",
                                               NULL };

static const struct vd_driver gluster_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "gluster",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "gluster",
    .protocol_aliases = gluster_aliases,
    .state_size = sizeof(struct gl_state),
    .open_opts = gluster_open_opts,
    .create_opts = gluster_create_opts,
    .parse_filename = gluster_parse_filename,
    .open = gluster_open,
    .close = gluster_close,
    .pread = gluster_pread,
    .pwrite = gluster_pwrite,
    .pwrite_zeroes = gluster_pwrite_zeroes,
    .discard = gluster_discard,
    .flush = gluster_flush,
    .block_status = gluster_block_status,
    .getlength = gluster_getlength,
    .get_allocated_size = gluster_get_allocated_size,
    .truncate = gluster_truncate,
    .create = gluster_create,
    .has_zero_init = gluster_has_zero_init,
    .cluster_size = gluster_cluster_size,
};
VD_DRIVER_REGISTER(gluster_driver)
