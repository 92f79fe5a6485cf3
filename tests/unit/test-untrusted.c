/* SPDX-License-Identifier: BSD-3-Clause */
/* Untrusted mode is enforced by the core, not by each driver: fake format
 * drivers that reach for another file in every way a driver can (a child
 * through vd_open_child, a plain vd_open, a recorded backing name) open it
 * by default and are refused with VD_O_UNTRUSTED; the flag reaches every
 * child; the table cap and the environment variable. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk/driver.h"
#include "tap.h"

static char other_path[64];        /* the "host file" the images name */

/* Read through the node's own file. */
static int pass_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    return vd_pread(n->file, off, len, buf, flags);
}

/* A driver that opens a data file with vd_open_child, as qcow2 does. */
static int child_open(vd_node *n, vd_opts *opts, int flags)
{
    vd_node *c = NULL;
    int r = vd_open_child(&c, n, other_path, "raw", NULL, flags & VD_O_RDWR);
    vd_close(c);
    return r;
}

/* A driver that forgets vd_open_child and calls vd_open itself. */
static int plain_open(vd_node *n, vd_opts *opts, int flags)
{
    vd_node *c = NULL;
    int r = vd_open(&c, other_path, NULL, NULL, 0);
    vd_close(c);
    return r;
}

/* A driver whose image names a backing file. */
static int backing_open(vd_node *n, vd_opts *opts, int flags)
{
    return vd_node_set_backing_name(n, other_path, "raw");
}

#define FAKE(var, nm, fn) \
    static const struct vd_driver var = { .struct_size = sizeof(struct vd_driver), \
        .name = nm, .kind = VD_DRV_FORMAT, .open = fn, .pread = pass_pread, \
        .supports_backing = true };
FAKE(child_driver, "ut-child", child_open)
FAKE(plain_driver, "ut-plain", plain_open)
FAKE(backing_driver, "ut-backing", backing_open)
VD_DRIVER_REGISTER(child_driver)
VD_DRIVER_REGISTER(plain_driver)
VD_DRIVER_REGISTER(backing_driver)

/* Make a 64 KiB file of zeroes but for head. */
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

/* fmt opens by default and is refused, naming the other file, when untrusted;
 * also with VD_O_NO_BACKING (the reference is refused, followed or not). */
static void test_driver(const char *path, const char *fmt)
{
    vd_node *n = NULL;

    CHECK_EQ_INT(vd_open(&n, path, fmt, NULL, 0), 0);
    vd_close(n);
    n = NULL;
    for (int extra = 0; extra <= VD_O_NO_BACKING; extra += VD_O_NO_BACKING) {
        CHECK_EQ_INT(vd_open(&n, path, fmt, NULL, VD_O_UNTRUSTED | extra), -EPERM);
        CHECK(n == NULL);
        CHECK(strstr(vd_errmsg(), "refused in untrusted mode") != NULL);
        CHECK(strstr(vd_errmsg(), other_path) != NULL);
    }
}

/* Children inherit the flag; plain images open; the cap applies only then. */
static void test_flag_and_cap(const char *path)
{
    vd_node *n = NULL;

    CHECK_EQ_INT(vd_open(&n, path, "raw", NULL, VD_O_UNTRUSTED), 0);
    if (!n)
        return;
    CHECK(vd_node_untrusted(n) && vd_node_untrusted(vd_node_file(n)));
    CHECK_EQ_INT(vd_untrusted_table_check(n, VD_UNTRUSTED_TABLE_MAX, "t"), 0);
    CHECK_EQ_INT(vd_untrusted_table_check(n, VD_UNTRUSTED_TABLE_MAX + 1ull, "t"), -EFBIG);
    CHECK(strstr(vd_errmsg(), "t needs") != NULL);
    vd_close(n);
    CHECK_EQ_INT(vd_open(&n, path, "raw", NULL, 0), 0);
    if (!n)
        return;
    CHECK(!vd_node_untrusted(n));
    CHECK_EQ_INT(vd_untrusted_table_check(n, UINT64_MAX, "t"), 0);
    vd_close(n);
}

/* VDISK_UNTRUSTED: any non-empty value but "0". */
static void test_env(void)
{
    unsetenv("VDISK_UNTRUSTED");
    CHECK(!vd_untrusted_env());
    setenv("VDISK_UNTRUSTED", "", 1);
    CHECK(!vd_untrusted_env());
    setenv("VDISK_UNTRUSTED", "0", 1);
    CHECK(!vd_untrusted_env());
    setenv("VDISK_UNTRUSTED", "1", 1);
    CHECK(vd_untrusted_env());
    setenv("VDISK_UNTRUSTED", "yes", 1);
    CHECK(vd_untrusted_env());
    unsetenv("VDISK_UNTRUSTED");
}

int main(void)
{
    char path[] = "/tmp/vdisk-test-untrusted-XXXXXX";
    int fd = mkstemp(path);

    CHECK(fd >= 0);
    if (fd < 0)
        return TAP_DONE();
    close(fd);
    snprintf(other_path, sizeof(other_path), "%s.other", path);
    make_file(path, "image");
    make_file(other_path, "secret");
    test_driver(path, "ut-child");
    test_driver(path, "ut-plain");
    test_driver(path, "ut-backing");
    test_flag_and_cap(path);
    test_env();
    unlink(path);
    unlink(other_path);
    return TAP_DONE();
}
