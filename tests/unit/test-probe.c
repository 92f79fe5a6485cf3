/* SPDX-License-Identifier: BSD-3-Clause */
/* Format probing by score and the sector-0 protection of probed raw
 * images, with a fake format driver that claims files starting "FAKEIMG!". */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "tap.h"

static const char magic[] = "FAKEIMG!";
#define MAGIC_LEN (sizeof(magic) - 1)

/* Score 100 for our magic, nothing otherwise. */
static int fake_probe(const uint8_t *buf, size_t len, const char *filename)
{
    return len >= MAGIC_LEN && !memcmp(buf, magic, MAGIC_LEN) ? 100 : 0;
}

static int fake_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    return vd_pread(n->file, off, len, buf, flags);
}

static const struct vd_driver fake_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "fakefmt",
    .kind = VD_DRV_FORMAT,
    .probe = fake_probe,
    .pread = fake_pread,
};
VD_DRIVER_REGISTER(fake_driver)

/* Make a 64 KiB file whose first bytes are head. */
static void make_file(const char *path, const char *head)
{
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    CHECK(ftruncate(fd, 65536) == 0);
    CHECK(pwrite(fd, head, strlen(head), 0) == (ssize_t)strlen(head));
    close(fd);
}

/* A probed raw image refuses writes that would change its format. */
static void test_sector0(const char *path)
{
    vd_node *n = NULL;
    make_file(path, "plain data");
    CHECK_EQ_INT(vd_open(&n, path, NULL, NULL, VD_O_RDWR), 0);
    if (!n)
        return;
    CHECK_EQ_STR(vd_node_format(n), "raw");
    CHECK(vd_node_probed_raw(n));
    CHECK_EQ_INT(vd_pwrite(n, 0, MAGIC_LEN, magic, 0), -EPERM);
    CHECK(strstr(vd_errmsg(), "sector 0") != NULL);
    CHECK_EQ_INT(vd_pwrite(n, 0, 5, "other", 0), 0);
    CHECK_EQ_INT(vd_pwrite(n, 4096, MAGIC_LEN, magic, 0), 0);
    vd_close(n);
    /* With the format given, the same write is allowed. */
    CHECK_EQ_INT(vd_open(&n, path, "raw", NULL, VD_O_RDWR), 0);
    if (!n)
        return;
    CHECK(!vd_node_probed_raw(n));
    CHECK_EQ_INT(vd_pwrite(n, 0, MAGIC_LEN, magic, 0), 0);
    vd_close(n);
}

/* The highest score wins; raw (score 1) only when nothing else claims it. */
static void test_scores(const char *path)
{
    vd_node *n = NULL;
    make_file(path, magic);
    CHECK_EQ_INT(vd_open(&n, path, NULL, NULL, 0), 0);
    if (n)
        CHECK_EQ_STR(vd_node_format(n), "fakefmt");
    vd_close(n);
    n = NULL;
    CHECK(vd_open(&n, "/nonexistent/dir/x", NULL, NULL, 0) < 0);
    CHECK(strstr(vd_errmsg(), "No such file") != NULL);
}

int main(void)
{
    char path[] = "/tmp/vdisk-test-probe-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    test_sector0(path);
    test_scores(path);
    unlink(path);
    return TAP_DONE();
}
