/* SPDX-License-Identifier: BSD-3-Clause */
/* The dispatch layer (lib/core/io.c) over an in-memory test driver that
 * records what it is asked: range checks, read-only refusal, alignment by
 * read-modify-write, splitting at the maximum transfer, zero fallback,
 * statistics, option checks and block status through a backing chain. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/driver.h"
#include "tap.h"

#define MEM_SIZE (1u << 20)

struct mem_state {
    uint8_t *data;
    uint64_t max_seen;
    int misaligned;
    bool allocated_half;     /* block status: first half allocated only */
};

static const struct vd_opt_desc mem_opts[] = {
    { "align", VD_OPT_NUMBER, "request alignment", NULL },
    { "max", VD_OPT_NUMBER, "max transfer", NULL },
    { "half", VD_OPT_BOOL, "allocate only the first half", NULL },
    { NULL, 0, NULL, NULL },
};

/* Open: allocate the buffer and apply the test limits. */
static int mem_open(vd_node *n, vd_opts *opts, int flags)
{
    struct mem_state *s = n->state;
    uint64_t align, max;
    int r;

    if ((r = vd_opts_get_u64(opts, "align", 1, &align)) < 0 ||
        (r = vd_opts_get_u64(opts, "max", 0, &max)) < 0 ||
        (r = vd_opts_get_bool(opts, "half", false, &s->allocated_half)) < 0)
        return r;
    n->request_alignment = (uint32_t)align;
    n->max_transfer = max;
    s->data = calloc(1, MEM_SIZE);
    return s->data ? 0 : -ENOMEM;
}

static void mem_close(vd_node *n) { free(((struct mem_state *)n->state)->data); }

/* Note the request shape a driver is given. */
static void note(vd_node *n, uint64_t off, uint64_t len)
{
    struct mem_state *s = n->state;
    if (len > s->max_seen)
        s->max_seen = len;
    if (off % n->request_alignment || len % n->request_alignment)
        s->misaligned++;
}

static int mem_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    note(n, off, len);
    memcpy(buf, ((struct mem_state *)n->state)->data + off, len);
    return 0;
}

static int mem_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    note(n, off, len);
    memcpy(((struct mem_state *)n->state)->data + off, buf, len);
    return 0;
}

static int64_t mem_getlength(vd_node *n) { return MEM_SIZE; }

/* First half allocated (data), second half not, when "half" is set. */
static int mem_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                            uint64_t *map, vd_node **file)
{
    struct mem_state *s = n->state;
    uint64_t half = MEM_SIZE / 2;
    if (!s->allocated_half) {
        *pnum = len;
        return VD_BS_DATA | VD_BS_ALLOCATED;
    }
    if (off < half) {
        *pnum = len < half - off ? len : half - off;
        return VD_BS_DATA | VD_BS_ALLOCATED;
    }
    *pnum = len;
    return 0;
}

static const struct vd_driver mem_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "memtest",
    .kind = VD_DRV_PROTOCOL,
    .state_size = sizeof(struct mem_state),
    .open_opts = mem_opts,
    .open = mem_open,
    .close = mem_close,
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .getlength = mem_getlength,
    .block_status = mem_block_status,
};
VD_DRIVER_REGISTER(mem_driver)

/* Open a memtest node with an option string. */
static vd_node *open_mem(const char *optstr, int flags)
{
    vd_opts *o = vd_opts_new();
    vd_node *n = NULL;
    if (vd_opts_parse(o, optstr, NULL) < 0 || vd_open(&n, NULL, "memtest", o, flags) < 0) {
        fprintf(stderr, "open failed: %s\n", vd_errmsg());
        return NULL;
    }
    return n;
}

/* Out-of-range and overflowing requests are refused before the driver. */
static void test_ranges(void)
{
    vd_node *n = open_mem("align=1", VD_O_RDWR);
    uint8_t buf[16];
    CHECK(n != NULL);
    if (!n)
        return;
    CHECK_EQ_INT(vd_getlength(n), MEM_SIZE);
    CHECK_EQ_INT(vd_pread(n, MEM_SIZE - 8, 16, buf, 0), -EIO);
    CHECK_EQ_INT(vd_pread(n, UINT64_MAX - 4, 16, buf, 0), -EIO);
    CHECK_EQ_INT(vd_pwrite(n, MEM_SIZE, 1, buf, 0), -EIO);
    CHECK_EQ_INT(vd_pread(n, MEM_SIZE - 16, 16, buf, 0), 0);
    CHECK_EQ_INT(vd_pread(n, MEM_SIZE, 0, buf, 0), 0);
    CHECK(strstr(vd_errmsg(), "beyond the end") != NULL);
    vd_close(n);
}

/* Writes to a read-only node fail with EPERM. */
static void test_read_only(void)
{
    vd_node *n = open_mem("align=1", 0);
    uint8_t buf[16] = { 1 };
    CHECK(n && vd_node_read_only(n));
    if (!n)
        return;
    CHECK_EQ_INT(vd_pwrite(n, 0, 16, buf, 0), -EPERM);
    CHECK_EQ_INT(vd_pwrite_zeroes(n, 0, 16, 0), -EPERM);
    CHECK_EQ_INT(vd_truncate(n, 4096, false, VD_PREALLOC_OFF), -EPERM);
    vd_close(n);
}

/* Unaligned I/O reaches the driver aligned, with the right bytes. */
static void test_alignment(void)
{
    vd_node *n = open_mem("align=512", VD_O_RDWR);
    struct mem_state *s;
    uint8_t in[1000], out[1000];
    CHECK(n != NULL);
    if (!n)
        return;
    s = n->state;
    memset(s->data, 0xaa, MEM_SIZE);
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)i;
    CHECK_EQ_INT(vd_pwrite(n, 100, sizeof(in), in, 0), 0);
    CHECK_EQ_INT(vd_pread(n, 100, sizeof(out), out, 0), 0);
    CHECK(memcmp(in, out, sizeof(in)) == 0);
    CHECK_EQ_INT(s->data[99], 0xaa);
    CHECK_EQ_INT(s->data[1100], 0xaa);
    CHECK_EQ_INT(s->misaligned, 0);
    CHECK_EQ_INT(vd_pwrite_zeroes(n, 1, 10, 0), 0);
    CHECK_EQ_INT(s->data[0], 0xaa);
    CHECK_EQ_INT(s->data[5], 0);
    CHECK_EQ_INT(s->data[11], 0xaa);
    CHECK_EQ_INT(s->misaligned, 0);
    vd_close(n);
}

/* Requests are split at the maximum transfer; statistics count them. */
static void test_split_and_stats(void)
{
    vd_node *n = open_mem("align=1,max=4096", VD_O_RDWR);
    struct vd_stats st;
    uint8_t *buf = calloc(1, 65536);
    CHECK(n != NULL && buf != NULL);
    if (!n || !buf)
        goto out;
    CHECK_EQ_INT(vd_pwrite(n, 0, 65536, buf, 0), 0);
    CHECK_EQ_INT(vd_pread(n, 0, 65536, buf, 0), 0);
    CHECK_EQ_INT(((struct mem_state *)n->state)->max_seen, 4096);
    vd_node_stats(n, &st);
    CHECK_EQ_INT(st.wr_ops, 1);
    CHECK_EQ_INT(st.rd_ops, 1);
    CHECK_EQ_INT(st.rd_bytes, 65536);
out:
    free(buf);
    vd_close(n);
}

/* Unknown and ill-typed options are errors that name the option. */
static void test_bad_options(void)
{
    vd_opts *o = vd_opts_new();
    vd_node *n = NULL;
    vd_opts_parse(o, "align=512,bogus=1", NULL);
    CHECK(vd_open(&n, NULL, "memtest", o, 0) < 0);
    CHECK(strstr(vd_errmsg(), "bogus") != NULL);
    o = vd_opts_new();
    vd_opts_parse(o, "align=3", NULL);
    CHECK(vd_open(&n, NULL, "memtest", o, 0) < 0);
    o = vd_opts_new();
    vd_opts_parse(o, "align=x", NULL);
    CHECK(vd_open(&n, NULL, "memtest", o, 0) < 0);
    CHECK(vd_open(&n, NULL, "no-such-driver", NULL, 0) < 0);
    CHECK(strstr(vd_errmsg(), "no-such-driver") != NULL);
}

/* Block status is clamped to the node and reports EOF. */
static void test_block_status(void)
{
    vd_node *n = open_mem("half=on", 0);
    uint64_t pnum = 0, map = 0;
    vd_node *f = NULL;
    int depth = -1, r;
    CHECK(n != NULL);
    if (!n)
        return;
    r = vd_block_status(n, 0, UINT64_MAX, &pnum, &map, &f);
    CHECK(r >= 0 && (r & VD_BS_ALLOCATED));
    CHECK_EQ_INT(pnum, MEM_SIZE / 2);
    r = vd_block_status_above(n, MEM_SIZE / 2, MEM_SIZE, &pnum, &map, &f, &depth);
    /* No backing support: unallocated is not claimed to read as zero. */
    CHECK(r >= 0 && !(r & VD_BS_ALLOCATED) && !(r & VD_BS_ZERO) && (r & VD_BS_EOF));
    CHECK_EQ_INT(pnum, MEM_SIZE / 2);
    CHECK_EQ_INT(depth, 0);
    r = vd_block_status(n, MEM_SIZE, 1, &pnum, &map, &f);
    CHECK(r == VD_BS_EOF && pnum == 0);
    vd_close(n);
}

int main(void)
{
    test_ranges();
    test_read_only();
    test_alignment();
    test_split_and_stats();
    test_bad_options();
    test_block_status();
    return TAP_DONE();
}
