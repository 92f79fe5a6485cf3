/* SPDX-License-Identifier: BSD-3-Clause */
/* vd_compare: qemu-img compare's semantics.  Both nodes are walked by block
 * status; ranges that read as zero on both sides are never read, a range
 * that is zero on one side only needs the other side to be all zero, and
 * differences are reported at 512-byte sector granularity.  With -s the
 * sizes and the block status (data/zero/allocated) must match as well. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/copy.h"
#include "util/checked.h"

#define CMP_CHUNK (2u << 20)
#define CMP_SECTOR 512u

/* State of one comparison. */
struct cmp_state {
    const struct vd_compare_params *p;
    struct vd_compare_result *res;
    vd_node *n[2];
    uint64_t len[2];
    char *buf[2];
    uint64_t done, total;
};

/* One node's block status at an offset, reduced to what compare needs. */
struct cmp_status {
    uint64_t pnum;
    int flags;      /* every VD_BS_* flag: -s compares them all, as QEMU */
    bool zero;      /* reads as zero */
};

/* Record a verdict and return its code (1 differ, or err). */
static int verdict(struct cmp_state *st, enum vd_compare_kind kind, int node,
                   uint64_t off, int code)
{
    st->res->kind = kind;
    st->res->node = node;
    st->res->offset = off;
    return code;
}

/* Block status of node i at off within len; <0 on error (recorded). */
static int get_status(struct cmp_state *st, int i, uint64_t off, uint64_t len,
                      struct cmp_status *s)
{
    int depth = 0;
    int r = vd_block_status_above(st->n[i], off, len, &s->pnum, NULL, NULL, &depth);

    if (r < 0)
        return verdict(st, VD_CMP_ERR_STATUS, i, off, r);
    if (s->pnum == 0 || s->pnum > len) {   /* no answer: assume data */
        s->pnum = len;
        r = VD_BS_DATA | VD_BS_ALLOCATED;
    }
    s->flags = r;
    s->zero = (r & VD_BS_ZERO) || !(r & VD_BS_DATA);
    return 0;
}

/* Read len bytes of node i at off into its buffer; <0 on error (recorded). */
static int read_node(struct cmp_state *st, int i, uint64_t off, uint64_t len)
{
    int r = vd_pread(st->n[i], off, len, st->buf[i], 0);

    if (r < 0)
        return verdict(st, VD_CMP_ERR_READ, i, off, r);
    return 0;
}

/* Length of the leading run of identical sectors of the two buffers. */
static uint64_t same_prefix(const char *a, const char *b, uint64_t len)
{
    uint64_t i = 0;

    while (i < len) {
        uint64_t l = VD_MIN(CMP_SECTOR, len - i);
        if (memcmp(a + i, b + i, l))
            break;
        i += l;
    }
    return i;
}

/* Length of the leading run of all-zero sectors of a buffer. */
static uint64_t zero_prefix(const char *a, uint64_t len)
{
    uint64_t i = 0;

    while (i < len) {
        uint64_t l = VD_MIN(CMP_SECTOR, len - i);
        if (!buffer_is_zero(a + i, l))
            break;
        i += l;
    }
    return i;
}

/* Report bytes compared so far. */
static void progress(struct cmp_state *st, uint64_t n)
{
    st->done += n;
    if (st->p->progress)
        st->p->progress(st->p->opaque, st->done, st->total);
}

/* Check that node i reads as zero over [off, off+len) (already known to
 * hold data); 1 with the verdict set when it does not, <0 on error. */
static int check_zero(struct cmp_state *st, int i, uint64_t off, uint64_t len)
{
    uint64_t k;
    int r = read_node(st, i, off, len);

    if (r < 0)
        return r;
    k = zero_prefix(st->buf[i], len);
    return k < len ? verdict(st, VD_CMP_CONTENT, i, off + k, 1) : 0;
}

/* Compare [off, off+len) when both sides hold data. */
static int check_same(struct cmp_state *st, uint64_t off, uint64_t len)
{
    uint64_t k;
    int r;

    if ((r = read_node(st, 0, off, len)) < 0 || (r = read_node(st, 1, off, len)) < 0)
        return r;
    k = same_prefix(st->buf[0], st->buf[1], len);
    return k < len ? verdict(st, VD_CMP_CONTENT, 0, off + k, 1) : 0;
}

/* Compare one extent at off of the common part; sets *n to its length.
 * 0 equal so far, 1 differ, <0 error. */
static int compare_step(struct cmp_state *st, uint64_t off, uint64_t end, uint64_t *n)
{
    struct cmp_status s[2];
    int r;

    for (int i = 0; i < 2; i++)
        if ((r = get_status(st, i, off, end - off, &s[i])) < 0)
            return r;
    *n = VD_MIN(s[0].pnum, s[1].pnum);
    if (st->p->strict && s[0].flags != s[1].flags)
        return verdict(st, VD_CMP_STATUS, 0, off, 1);
    if (s[0].zero && s[1].zero)
        return 0;
    *n = VD_MIN(*n, CMP_CHUNK);
    if (!s[0].zero && !s[1].zero)
        return check_same(st, off, *n);
    return check_zero(st, s[0].zero ? 1 : 0, off, *n);
}

/* Compare the part both images have. */
static int compare_common(struct cmp_state *st, uint64_t end)
{
    uint64_t off = 0, n = 0;
    int r;

    while (off < end) {
        if ((r = compare_step(st, off, end, &n)) != 0)
            return r;
        off += n;
        progress(st, n);
    }
    return 0;
}

/* The longer image's tail past the shorter one's end must read as zero. */
static int compare_tail(struct cmp_state *st, int i, uint64_t off)
{
    struct cmp_status s;
    int r;

    while (off < st->len[i]) {
        if ((r = get_status(st, i, off, st->len[i] - off, &s)) < 0)
            return r;
        if (!s.zero) {
            s.pnum = VD_MIN(s.pnum, CMP_CHUNK);
            if ((r = check_zero(st, i, off, s.pnum)) != 0) {
                st->res->in_tail = true;
                return r;
            }
        }
        off += s.pnum;
        progress(st, s.pnum);
    }
    return 0;
}

/* Run the comparison once the state is set up. */
static int compare_run(struct cmp_state *st)
{
    uint64_t minlen = VD_MIN(st->len[0], st->len[1]);
    int r;

    st->res->size_differs = st->len[0] != st->len[1];
    st->total = VD_MAX(st->len[0], st->len[1]);
    if (st->p->strict && st->res->size_differs)
        return verdict(st, VD_CMP_SIZE, st->len[1] > st->len[0], minlen, 1);
    if ((r = compare_common(st, minlen)) != 0)
        return r;
    if (st->res->size_differs)
        return compare_tail(st, st->len[1] > st->len[0], minlen);
    return 0;
}

/* Lengths and buffers; <0 on error (message set). */
static int compare_setup(struct cmp_state *st)
{
    for (int i = 0; i < 2; i++) {
        int64_t l = vd_getlength(st->n[i]);
        if (l < 0)
            return vd_error_prefix((int)-l, "Can't get size of %s",
                                   vd_node_filename(st->n[i]));
        st->len[i] = (uint64_t)l;
        if (posix_memalign((void **)&st->buf[i], 4096, CMP_CHUNK))
            return vd_error(ENOMEM, "out of memory");
    }
    return 0;
}

/* 0 identical, 1 differ (*first_diff set), -errno on error. */
int vd_compare(const struct vd_compare_params *p, uint64_t *first_diff)
{
    struct vd_compare_result local;
    struct cmp_state st = { .p = p };
    int r;

    if (!p || !p->a || !p->b)
        return vd_error(EINVAL, "invalid compare parameters");
    st.res = p->result ? p->result : &local;
    memset(st.res, 0, sizeof(*st.res));
    st.n[0] = p->a;
    st.n[1] = p->b;
    r = compare_setup(&st);
    if (r == 0)
        r = compare_run(&st);
    if (r == 1 && first_diff)
        *first_diff = st.res->offset;
    free(st.buf[0]);
    free(st.buf[1]);
    return r;
}
