/* SPDX-License-Identifier: BSD-3-Clause */
/* The "iscsi" protocol driver over libiscsi: a LUN of an iSCSI target as a
 * node.  Each caller takes one session of a small pool (more are logged in
 * on demand, up to ISCSI_SESSIONS), so the copy engine's workers have
 * that many commands in flight.  Reads and writes are READ(16)/WRITE(16)
 * straight into the caller's buffer; WRITE SAME(16) zeroes, UNMAP
 * discards, GET LBA STATUS answers block status when the LUN is thin
 * provisioned, SYNCHRONIZE CACHE flushes.  Every command is bounded by the
 * session timeout, and a session whose connection failed is dropped (no
 * automatic reconnect that could wait for ever). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "crypto/crypto.h"
#include "util/checked.h"
#include "util/json.h"
#include "vdisk/driver.h"
#include "vdisk/object.h"

#define ISCSI_SESSIONS 8               /* commands in flight per node */
#define ISCSI_DEFAULT_TIMEOUT 30       /* seconds, when the option is 0/absent */
#define ISCSI_TIMEOUT_MAX 86400
/* Largest READ/WRITE issued: libiscsi's default Data-In PDU (256 KiB).
 * Against tgtd on loopback, eight sessions of 2 MiB commands converted a
 * 256 MiB LUN 3-4 times slower than of 256 KiB ones; 512 KiB was about as
 * fast, 128 KiB and 1 MiB slower. */
#define ISCSI_MAX_XFER (256u << 10)
#define ISCSI_LUN_MAX 16383
#define ISCSI_DEFAULT_INITIATOR "iqn.2008-11.org.linux-kvm"

enum sess_state { SESS_EMPTY, SESS_IDLE, SESS_BUSY };

struct isess {
    struct iscsi_context *ctx;
    enum sess_state state;
    bool broken;                       /* connection failed: drop it */
};

struct iscsi_state {
    char *portal, *target, *user, *password, *target_user, *target_password;
    char *initiator;
    enum iscsi_header_digest digest;
    int lun, timeout;
    uint32_t block_size;
    uint64_t num_blocks;
    bool lbpme, lbprz, lbpu, lbpws;
    atomic_bool write_same_failed;     /* the LUN refused WRITE SAME */
    uint32_t max_unmap;                /* blocks per UNMAP (0: unlimited) */
    uint64_t max_xfer;                 /* bytes per READ/WRITE */
    pthread_mutex_t lock;              /* guards sess[], no_more */
    pthread_cond_t cond;               /* a session became idle or empty */
    bool locks_init, no_more;          /* no_more: a login failed, stop adding */
    bool failed;                       /* a connection failed: no logouts */
    struct isess sess[ISCSI_SESSIONS];
};

/* ---- names and options ---- */

/* Set key to value unless the options already have it. */
static int set_default(vd_opts *o, const char *key, const char *value)
{
    if (vd_opts_has(o, key))
        return 0;
    return vd_opts_set(o, key, value) < 0 ? vd_error(ENOMEM, "out of memory") : 0;
}

/* An iscsi:// URL becomes transport, portal, target, lun (and user,
 * password): QEMU's split, options already given win. */
static int iscsi_parse_filename(const char *name, vd_opts *o)
{
    struct iscsi_url *u = iscsi_parse_full_url(NULL, name);
    char lun[16];
    int r;

    if (!u)
        return vd_error(EINVAL, "Failed to parse URL : %s", name);
    snprintf(lun, sizeof(lun), "%d", u->lun);
    if ((r = set_default(o, "transport", u->transport == ISER_TRANSPORT ? "iser" : "tcp")) < 0 ||
        (r = set_default(o, "portal", u->portal)) < 0 ||
        (r = set_default(o, "target", u->target)) < 0 ||
        (r = set_default(o, "lun", lun)) < 0)
        goto out;
    if (u->user[0] && ((r = set_default(o, "user", u->user)) < 0 ||
                       (r = set_default(o, "password", u->passwd)) < 0))
        goto out;
    /* Mutual CHAP (?target_user=&target_password=), as libiscsi's tools. */
    if (u->target_user[0] && ((r = set_default(o, "x-target-user", u->target_user)) < 0 ||
                              (r = set_default(o, "x-target-password", u->target_passwd)) < 0))
        goto out;
out:
    iscsi_destroy_url(u);
    return r;
}

/* *out = a copy of option key, or NULL. */
static int opt_str(const vd_opts *o, const char *key, char **out)
{
    const char *v = vd_opts_get(o, key);

    *out = NULL;
    if (v && !(*out = strdup(v)))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* CHAP: user with password or password-secret (QEMU's checks). */
static int parse_chap(struct iscsi_state *s, const vd_opts *o)
{
    const char *secret = vd_opts_get(o, "password-secret");
    const char *pw = vd_opts_get(o, "password");
    int r;

    if ((r = opt_str(o, "user", &s->user)) < 0 || !s->user)
        return r;
    if (secret && pw)
        return vd_error(EINVAL, "'password' and 'password-secret' properties are mutually "
                        "exclusive");
    if (secret)
        r = vd_secret_get_text(secret, &s->password);
    else if (!pw)
        return vd_error(EINVAL, "CHAP username specified but no password was given");
    else if (!(s->password = strdup(pw)))
        r = vd_error(ENOMEM, "out of memory");
    if (r < 0)
        return r;
    if ((r = opt_str(o, "x-target-user", &s->target_user)) < 0 ||
        (r = opt_str(o, "x-target-password", &s->target_password)) < 0)
        return r;
    return 0;
}

/* header-digest: QEMU's four lower-case values. */
static int parse_digest(struct iscsi_state *s, const char *d)
{
    static const struct { const char *name; enum iscsi_header_digest v; } tab[] = {
        { "crc32c", ISCSI_HEADER_DIGEST_CRC32C },
        { "none", ISCSI_HEADER_DIGEST_NONE },
        { "crc32c-none", ISCSI_HEADER_DIGEST_CRC32C_NONE },
        { "none-crc32c", ISCSI_HEADER_DIGEST_NONE_CRC32C },
    };

    s->digest = ISCSI_HEADER_DIGEST_NONE_CRC32C;
    if (!d)
        return 0;
    for (size_t i = 0; i < VD_ARRAY_SIZE(tab); i++)
        if (!strcmp(d, tab[i].name)) {
            s->digest = tab[i].v;
            return 0;
        }
    return vd_error(EINVAL, "Invalid header-digest setting : %s", d);
}

/* All options into s: transport, portal, target, lun, CHAP, initiator
 * name, header digest, timeout. */
static int parse_options(struct iscsi_state *s, const vd_opts *o)
{
    const char *transport = vd_opts_get(o, "transport");
    uint64_t lun, timeout;
    int r;

    if ((r = vd_opts_get_u64(o, "lun", 0, &lun)) < 0 ||
        (r = vd_opts_get_u64(o, "timeout", 0, &timeout)) < 0)
        return r;
    if (!transport || !vd_opts_has(o, "portal") || !vd_opts_has(o, "target"))
        return vd_error(EINVAL, "Need all of transport, portal and target options");
    if (!strcmp(transport, "iser"))
        return vd_error(ENOTSUP, "iSCSI: the iser transport is not supported");
    if (strcmp(transport, "tcp"))
        return vd_error(EINVAL, "Unknown transport: %s", transport);
    if (lun > ISCSI_LUN_MAX)
        return vd_error(EINVAL, "iSCSI: LUN %llu is out of range", (unsigned long long)lun);
    if (timeout > ISCSI_TIMEOUT_MAX)
        return vd_error(EINVAL, "iSCSI: timeout %llu is too large",
                        (unsigned long long)timeout);
    s->lun = (int)lun;
    s->timeout = timeout ? (int)timeout : ISCSI_DEFAULT_TIMEOUT;
    if ((r = opt_str(o, "portal", &s->portal)) < 0 ||
        (r = opt_str(o, "target", &s->target)) < 0 || (r = parse_chap(s, o)) < 0 ||
        (r = parse_digest(s, vd_opts_get(o, "header-digest"))) < 0 ||
        (r = opt_str(o, "initiator-name", &s->initiator)) < 0)
        return r;
    if (!s->initiator && !(s->initiator = strdup(ISCSI_DEFAULT_INITIATOR)))
        return vd_error(ENOMEM, "out of memory");
    return 0;
}

/* ---- sessions ---- */

/* Log in one session to the LUN; NULL with QEMU's message on failure. */
static struct iscsi_context *session_login(const struct iscsi_state *s)
{
    struct iscsi_context *c = iscsi_create_context(s->initiator);
    const char *msg = NULL;

    if (!c)
        return vd_error(ENOMEM, "iSCSI: Failed to create iSCSI context."), NULL;
    if (iscsi_init_transport(c, TCP_TRANSPORT))
        msg = "Error initializing transport.";
    else if (iscsi_set_targetname(c, s->target))
        msg = "iSCSI: Failed to set target name.";
    else if (s->user && iscsi_set_initiator_username_pwd(c, s->user, s->password))
        msg = "Failed to set initiator username and password";
    else if (s->target_user && s->target_password &&
             iscsi_set_target_username_pwd(c, s->target_user, s->target_password))
        msg = "Failed to set target username and password";
    else if (iscsi_set_session_type(c, ISCSI_SESSION_NORMAL))
        msg = "iSCSI: Failed to set session type in context.";
    if (msg) {
        iscsi_destroy_context(c);
        return vd_error(EINVAL, "%s", msg), NULL;
    }
    iscsi_set_header_digest(c, s->digest);
    iscsi_set_timeout(c, s->timeout);
    /* A lost connection fails the command (libiscsi would otherwise
     * reconnect for ever to a target that is gone). */
    iscsi_set_noautoreconnect(c, 1);
    if (iscsi_full_connect_sync(c, s->portal, s->lun)) {
        vd_error(EINVAL, "iSCSI: Failed to connect to LUN : %s", iscsi_get_error(c));
        iscsi_destroy_context(c);
        return NULL;
    }
    return c;
}

/* Is any session logged in (lock held)? */
static bool any_session(const struct iscsi_state *s)
{
    for (int i = 0; i < ISCSI_SESSIONS; i++)
        if (s->sess[i].state != SESS_EMPTY)
            return true;
    return false;
}

/* Take an idle session, log in a new one, or wait; NULL on failure.  A
 * login that fails while other sessions exist stops the pool growing and
 * the caller waits for one of them instead. */
static struct isess *session_get(struct iscsi_state *s)
{
    struct isess *e;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        e = NULL;
        for (int i = 0; i < ISCSI_SESSIONS; i++) {
            if (s->sess[i].state == SESS_IDLE) {
                s->sess[i].state = SESS_BUSY;
                pthread_mutex_unlock(&s->lock);
                return &s->sess[i];
            }
            if (s->sess[i].state == SESS_EMPTY && !e)
                e = &s->sess[i];
        }
        if (e && (!s->no_more || !any_session(s))) {
            e->state = SESS_BUSY;
            e->broken = false;
            pthread_mutex_unlock(&s->lock);
            struct iscsi_context *c = session_login(s);
            pthread_mutex_lock(&s->lock);
            e->ctx = c;
            if (c)
                break;
            e->state = SESS_EMPTY;
            s->no_more = true;
            pthread_cond_broadcast(&s->cond);
            if (!any_session(s)) {
                e = NULL;
                break;
            }
            continue;
        }
        pthread_cond_wait(&s->cond, &s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return e;
}

/* Give a session back; a broken one is logged out and dropped. */
static void session_put(struct iscsi_state *s, struct isess *e)
{
    struct iscsi_context *drop = NULL;

    pthread_mutex_lock(&s->lock);
    if (e->broken) {
        s->failed = true;
        drop = e->ctx;
        e->ctx = NULL;
        e->state = SESS_EMPTY;
    } else {
        e->state = SESS_IDLE;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (drop)
        iscsi_destroy_context(drop);
}

/* ---- commands ---- */

/* errno for a CHECK CONDITION's sense (QEMU's mapping, roughly). */
static int sense_errno(const struct scsi_task *t)
{
    switch (t->sense.key) {
    case SCSI_SENSE_NOT_READY:
        return EBUSY;
    case SCSI_SENSE_DATA_PROTECTION:
        return EACCES;
    case SCSI_SENSE_ILLEGAL_REQUEST:
        if (t->sense.ascq == SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE)
            return ENOSPC;
        return EINVAL;
    case SCSI_SENSE_COMMAND_ABORTED:
        return ECANCELED;
    default:
        return EIO;
    }
}

/* 0 when task t ended well, else -errno with a message; frees t.  A
 * failure without SCSI status marks the session broken. */
static int task_done(struct isess *e, struct scsi_task *t, const char *what)
{
    int r = 0;

    if (!t) {
        e->broken = true;
        return vd_error(EIO, "iSCSI: %s failed: %s", what, iscsi_get_error(e->ctx));
    }
    if (t->status == SCSI_STATUS_CHECK_CONDITION) {
        r = vd_error(sense_errno(t), "iSCSI: %s failed: %s", what, iscsi_get_error(e->ctx));
    } else if (t->status != SCSI_STATUS_GOOD) {
        e->broken = true;
        r = vd_error(EIO, "iSCSI: %s failed: %s", what, iscsi_get_error(e->ctx));
    }
    scsi_free_scsi_task(t);
    return r;
}

/* A VPD page's data (unmarshalled into *out, task in *tp), or NULL. */
static void *inquiry_page(struct isess *e, int lun, int page, struct scsi_task **tp)
{
    struct scsi_task *t = iscsi_inquiry_sync(e->ctx, lun, 1, page, 255);
    void *data;

    *tp = NULL;
    if (!t || t->status != SCSI_STATUS_GOOD || !(data = scsi_datain_unmarshall(t))) {
        if (t)
            scsi_free_scsi_task(t);
        return NULL;
    }
    *tp = t;
    return data;
}

/* Block limits and provisioning from the VPD pages, when the LUN has them. */
static void read_limits(struct iscsi_state *s, struct isess *e)
{
    struct scsi_task *t;
    struct scsi_inquiry_logical_block_provisioning *lbp;
    struct scsi_inquiry_block_limits *bl;

    if (s->lbpme && (lbp = inquiry_page(e, s->lun,
                                        SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING, &t))) {
        s->lbpu = lbp->lbpu;
        s->lbpws = lbp->lbpws;
        scsi_free_scsi_task(t);
    }
    if ((bl = inquiry_page(e, s->lun, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, &t))) {
        s->max_unmap = bl->max_unmap == 0xffffffffu ? 0 : bl->max_unmap;
        if (bl->max_xfer_len && (uint64_t)bl->max_xfer_len * s->block_size < s->max_xfer)
            s->max_xfer = VD_MAX((uint64_t)bl->max_xfer_len * s->block_size,
                                 (uint64_t)s->block_size);
        if (s->lbpu && !bl->max_unmap)
            s->lbpu = false;
        scsi_free_scsi_task(t);
    }
}

/* READ CAPACITY(16): block size, count, thin provisioning. */
static int read_capacity(struct iscsi_state *s, struct isess *e)
{
    struct scsi_task *t = iscsi_readcapacity16_sync(e->ctx, s->lun);
    struct scsi_readcapacity16 *rc;
    int r;

    if (!t || t->status != SCSI_STATUS_GOOD || !(rc = scsi_datain_unmarshall(t))) {
        if (t && t->status == SCSI_STATUS_GOOD)
            return scsi_free_scsi_task(t), vd_error(EINVAL, "iSCSI: Failed to unmarshall "
                                                     "readcapacity16 data.");
        r = task_done(e, t, "READ CAPACITY(16)");
        return r < 0 ? r : vd_error(EIO, "iSCSI: READ CAPACITY(16) failed");
    }
    uint64_t last = rc->returned_lba;
    s->block_size = rc->block_length;
    s->num_blocks = last + 1;
    s->lbpme = rc->lbpme;
    s->lbprz = rc->lbprz;
    scsi_free_scsi_task(t);
    if (s->block_size < 512 || s->block_size > 65536 || (s->block_size & (s->block_size - 1)))
        return vd_error(EINVAL, "iSCSI: unsupported block size %u", s->block_size);
    if (last == UINT64_MAX || s->num_blocks > (uint64_t)INT64_MAX / s->block_size)
        r = vd_error(EINVAL, "iSCSI: the LUN's capacity is out of range");
    else
        r = 0;
    return r;
}

/* Read or write [off, off+len) (block aligned, at most max_transfer). */
static int rw(vd_node *n, uint64_t off, uint64_t len, void *buf, bool write, int flags)
{
    struct iscsi_state *s = n->state;
    struct scsi_iovec iov = { .iov_base = buf, .iov_len = len };
    struct scsi_task *t;
    struct isess *e = session_get(s);

    if (!e)
        return -EIO;
    if (write)
        t = iscsi_write16_iov_sync(e->ctx, s->lun, off / s->block_size, NULL, (uint32_t)len,
                                   (int)s->block_size, 0, 0, (flags & VD_REQ_FUA) ? 1 : 0,
                                   0, 0, &iov, 1);
    else
        t = iscsi_read16_iov_sync(e->ctx, s->lun, off / s->block_size, (uint32_t)len,
                                  (int)s->block_size, 0, 0, 0, 0, 0, &iov, 1);
    int r = task_done(e, t, write ? "WRITE(16)" : "READ(16)");
    session_put(s, e);
    return r;
}

static int iscsi_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    return rw(n, off, len, buf, false, flags);
}

static int iscsi_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    return rw(n, off, len, (void *)buf, true, flags);
}

/* WRITE SAME(16) of a zero block, unmapping when allowed; -ENOTSUP (the
 * core writes zeroes) when the LUN has no WRITE SAME. */
static int iscsi_pwrite_zeroes(vd_node *n, uint64_t off, uint64_t len, int flags)
{
    struct iscsi_state *s = n->state;
    bool unmap = (flags & VD_REQ_MAY_UNMAP) && s->lbpws && s->lbprz;
    unsigned char *zero;
    struct isess *e;
    int r;

    if (atomic_load(&s->write_same_failed))
        return -ENOTSUP;
    if (!(zero = calloc(1, s->block_size)))
        return vd_error(ENOMEM, "out of memory");
    if (!(e = session_get(s))) {
        free(zero);
        return -EIO;
    }
    struct scsi_task *t = iscsi_writesame16_sync(e->ctx, s->lun, off / s->block_size, zero,
                                                 s->block_size,
                                                 (uint32_t)(len / s->block_size), 0,
                                                 unmap, 0, 0);
    if (t && t->status == SCSI_STATUS_CHECK_CONDITION &&
        t->sense.key == SCSI_SENSE_ILLEGAL_REQUEST) {
        scsi_free_scsi_task(t);
        atomic_store(&s->write_same_failed, true);
        r = -ENOTSUP;
    } else {
        r = task_done(e, t, "WRITE SAME(16)");
    }
    session_put(s, e);
    free(zero);
    return r;
}

/* UNMAP the blocks of [off, off+len); nothing when the LUN cannot. */
static int iscsi_discard(vd_node *n, uint64_t off, uint64_t len)
{
    struct iscsi_state *s = n->state;
    uint64_t lba = (off + s->block_size - 1) / s->block_size;
    uint64_t end = (off + len) / s->block_size;
    int r = 0;

    if (!s->lbpu || end <= lba)
        return 0;
    struct isess *e = session_get(s);
    if (!e)
        return -EIO;
    while (lba < end && !r) {
        uint64_t cnt = VD_MIN(end - lba, (uint64_t)UINT32_MAX);
        if (s->max_unmap)
            cnt = VD_MIN(cnt, (uint64_t)s->max_unmap);
        struct unmap_list l = { lba, (uint32_t)cnt };
        r = task_done(e, iscsi_unmap_sync(e->ctx, s->lun, 0, 0, &l, 1), "UNMAP");
        lba += cnt;
    }
    session_put(s, e);
    return r;
}

/* SYNCHRONIZE CACHE(10) of the whole LUN. */
static int iscsi_flush(vd_node *n)
{
    struct iscsi_state *s = n->state;
    struct isess *e = session_get(s);

    if (!e)
        return -EIO;
    int r = task_done(e, iscsi_synchronizecache10_sync(e->ctx, s->lun, 0, 0, 0, 0),
                      "SYNCHRONIZE CACHE");
    session_put(s, e);
    return r;
}

/* GET LBA STATUS at off: mapped blocks are data, others holes (zero when
 * the LUN reads them as zeroes).  Without thin provisioning all is data. */
static int iscsi_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                              uint64_t *map, vd_node **file)
{
    struct iscsi_state *s = n->state;
    int ret = VD_BS_DATA | VD_BS_OFFSET_VALID;

    *pnum = len;
    *map = off;
    *file = n;
    if (!s->lbpme)
        return ret;
    struct isess *e = session_get(s);
    if (!e)
        return -EIO;
    uint64_t lba = off / s->block_size;
    struct scsi_task *t = iscsi_get_lba_status_sync(e->ctx, s->lun, lba, 8 + 16);
    struct scsi_get_lba_status *st;
    int r = 0;

    if (t && t->status == SCSI_STATUS_GOOD && (st = scsi_datain_unmarshall(t)) &&
        st->num_descriptors >= 1 && st->descriptors[0].lba == lba &&
        st->descriptors[0].num_blocks) {
        struct scsi_lba_status_descriptor *d = &st->descriptors[0];
        *pnum = VD_MIN(len, (uint64_t)d->num_blocks * s->block_size);
        if (d->provisioning == SCSI_PROVISIONING_TYPE_DEALLOCATED ||
            d->provisioning == SCSI_PROVISIONING_TYPE_ANCHORED)
            ret = s->lbprz ? (VD_BS_ZERO | VD_BS_OFFSET_VALID) : VD_BS_OFFSET_VALID;
        scsi_free_scsi_task(t);
    } else if (t && t->status == SCSI_STATUS_GOOD) {
        scsi_free_scsi_task(t);
        r = vd_error(EIO, "iSCSI: bad GET LBA STATUS answer at LBA %llu",
                     (unsigned long long)lba);
    } else if (t && t->status == SCSI_STATUS_CHECK_CONDITION) {
        scsi_free_scsi_task(t);     /* not supported or busy: all data, as QEMU */
    } else {
        r = task_done(e, t, "GET LBA STATUS");
    }
    session_put(s, e);
    return r < 0 ? r : ret;
}

/* ---- the node's name ---- */

/* The options QEMU keeps in the node's json: name. */
static const char *const strong_opts[] = {
    "transport", "portal", "target", "user", "password", "password-secret", "lun",
    "initiator-name", "header-digest",
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

/* QEMU's json: name of the node (it always has one: no URL is kept). */
static int set_name(vd_node *n, const vd_opts *o)
{
    const char *keys[VD_ARRAY_SIZE(strong_opts) + 1] = { "driver" };
    size_t nk = 1;
    vd_json *j;
    char *text, *name = NULL;

    for (size_t i = 0; i < VD_ARRAY_SIZE(strong_opts); i++)
        if (vd_opts_has(o, strong_opts[i]))
            keys[nk++] = strong_opts[i];
    for (size_t i = 1; i < nk; i++)          /* insertion sort by bucket */
        for (size_t k = i; k > 0 && key_bucket(keys[k]) < key_bucket(keys[k - 1]); k--) {
            const char *t = keys[k];
            keys[k] = keys[k - 1];
            keys[k - 1] = t;
        }
    if (!(j = vd_json_new_object()))
        return vd_error(ENOMEM, "out of memory");
    for (size_t i = 0; i < nk; i++)
        vd_json_set_str(j, keys[i], !strcmp(keys[i], "driver") ? n->drv->name
                        : vd_opts_get(o, keys[i]));
    if ((text = vd_json_to_compact(j)) && asprintf(&name, "json:%s", text) < 0)
        name = NULL;
    free(text);
    vd_json_free(j);
    if (!name)
        return vd_error(ENOMEM, "out of memory");
    free(n->filename);
    n->filename = name;
    return 0;
}

/* ---- open / close ---- */

/* Log in the first session and learn the LUN's geometry. */
static int first_session(struct iscsi_state *s, bool writable)
{
    struct isess *e = session_get(s);
    int r;

    if (!e)
        return -EINVAL;
    s->max_xfer = ISCSI_MAX_XFER;
    if ((r = read_capacity(s, e)) == 0)
        read_limits(s, e);
    e->broken = e->broken || r < 0;
    session_put(s, e);
    (void)writable;
    return r;
}

/* Open: parse the options, log in, read the capacity and limits. */
static int iscsi_open(vd_node *n, vd_opts *opts, int flags)
{
    struct iscsi_state *s = n->state;
    int r;

    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->locks_init = true;
    if ((r = parse_options(s, opts)) < 0 || (r = first_session(s, !n->read_only)) < 0)
        return r;
    s->no_more = false;
    n->request_alignment = s->block_size;
    n->max_transfer = s->max_xfer;
    if ((r = set_name(n, opts)) < 0)
        return r;
    static const char *const ours[] = {
        "transport", "portal", "target", "user", "password", "password-secret", "lun",
        "initiator-name", "header-digest", "timeout", "x-target-user", "x-target-password",
        "filename",
    };
    for (size_t i = 0; i < VD_ARRAY_SIZE(ours); i++)
        vd_opts_del(opts, ours[i]);
    return 0;
}

/* Log out every session and free the state. */
static void iscsi_close(vd_node *n)
{
    struct iscsi_state *s = n->state;

    for (int i = 0; i < ISCSI_SESSIONS; i++)
        if (s->sess[i].ctx) {
            if (!s->failed)
                iscsi_logout_sync(s->sess[i].ctx);
            iscsi_destroy_context(s->sess[i].ctx);
            s->sess[i].ctx = NULL;
        }
    free(s->portal);
    free(s->target);
    free(s->user);
    vd_secret_free_text(s->password);
    free(s->target_user);
    vd_secret_free_text(s->target_password);
    free(s->initiator);
    if (s->locks_init) {
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
    }
}

static int64_t iscsi_getlength(vd_node *n)
{
    struct iscsi_state *s = n->state;
    return (int64_t)(s->num_blocks * s->block_size);
}

/* A LUN cannot change size: an exact other size is refused, a smaller
 * one accepted when not exact (QEMU's rules). */
static int iscsi_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    uint64_t cur = (uint64_t)iscsi_getlength(n);

    if (prealloc)
        return vd_error(ENOTSUP, "Unsupported preallocation mode");
    if (size != cur && exact)
        return vd_error(ENOTSUP, "Cannot resize iSCSI devices");
    if (size > cur)
        return vd_error(EINVAL, "Cannot grow iSCSI devices");
    return 0;
}

/* "Create" on a LUN: it must be large enough. */
static int iscsi_create(const char *filename, vd_opts *opts)
{
    struct iscsi_state *s = calloc(1, sizeof(*s));
    vd_opts *o = vd_opts_new();
    vd_node n = { .state = s };
    uint64_t size = 0;
    int r;

    if (!s || !o) {
        r = vd_error(ENOMEM, "out of memory");
        goto out;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->locks_init = true;
    if ((r = vd_opts_get_size(opts, "size", 0, &size)) < 0 ||
        (r = iscsi_parse_filename(filename, o)) < 0 || (r = parse_options(s, o)) < 0 ||
        (r = first_session(s, true)) < 0)
        goto out;
    if (size > (uint64_t)iscsi_getlength(&n))
        r = vd_error(ENOSPC, "Cannot grow iSCSI devices");
out:
    if (s)
        iscsi_close(&n);
    free(s);
    vd_opts_free(o);
    return r;
}

static const struct vd_opt_desc iscsi_open_opts[] = {
    { "transport", VD_OPT_STRING, "Transport (tcp)", NULL },
    { "portal", VD_OPT_STRING, "Portal address host[:port]", NULL },
    { "target", VD_OPT_STRING, "Target IQN", NULL },
    { "lun", VD_OPT_NUMBER, "LUN number", "0" },
    { "user", VD_OPT_STRING, "CHAP user name", NULL },
    { "password", VD_OPT_STRING, "CHAP password", NULL },
    { "password-secret", VD_OPT_STRING, "ID of a secret holding the CHAP password", NULL },
    { "initiator-name", VD_OPT_STRING, "Initiator IQN", NULL },
    { "header-digest", VD_OPT_STRING, "crc32c, none, crc32c-none or none-crc32c", NULL },
    { "timeout", VD_OPT_NUMBER, "Seconds a command may take (0: 30)", "0" },
    { "x-target-user", VD_OPT_STRING, "Mutual CHAP: the target's user name", NULL },
    { "x-target-password", VD_OPT_STRING, "Mutual CHAP: the target's password", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_opt_desc iscsi_create_opts[] = {
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver iscsi_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "iscsi",
    .kind = VD_DRV_PROTOCOL,
    .protocol = "iscsi",
    .state_size = sizeof(struct iscsi_state),
    .open_opts = iscsi_open_opts,
    .create_opts = iscsi_create_opts,
    .parse_filename = iscsi_parse_filename,
    .open = iscsi_open,
    .close = iscsi_close,
    .pread = iscsi_pread,
    .pwrite = iscsi_pwrite,
    .pwrite_zeroes = iscsi_pwrite_zeroes,
    .discard = iscsi_discard,
    .flush = iscsi_flush,
    .block_status = iscsi_block_status,
    .getlength = iscsi_getlength,
    .truncate = iscsi_truncate,
    .create = iscsi_create,
};
VD_DRIVER_REGISTER(iscsi_driver)
