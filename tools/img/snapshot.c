/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-img snapshot: list, create, apply and delete internal snapshots as
 * qemu-img snapshot does, and the snapshot list that info prints (the
 * "snapshots" JSON array and the "Snapshot list:" table). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "vdisk/driver.h"
#include "img.h"
#include "cli.h"
#include "util/size.h"

/* ---- the list, as JSON and as a table ---- */

/* One snapshot as QEMU's SnapshotInfo, keys in the order QEMU prints. */
static vd_json *snapshot_json(const struct vd_snapshot_info *sn)
{
    vd_json *o = vd_json_new_object();

    if (!o)
        return NULL;
    if (sn->icount != UINT64_MAX)
        vd_json_set_int(o, "icount", (int64_t)sn->icount);
    vd_json_set_int(o, "vm-clock-nsec", (int64_t)(sn->vm_clock_nsec % 1000000000u));
    vd_json_set_str(o, "name", sn->name);
    vd_json_set_int(o, "date-sec", sn->date_sec);
    vd_json_set_int(o, "date-nsec", sn->date_nsec);
    vd_json_set_int(o, "vm-clock-sec", (int64_t)(sn->vm_clock_nsec / 1000000000u));
    vd_json_set_str(o, "id", sn->id);
    vd_json_set_int(o, "vm-state-size", (int64_t)sn->vm_state_size);
    return o;
}

/* See img.h. */
int img_snapshots_json(vd_node *n, vd_json **out)
{
    struct vd_snapshot_info *l = NULL;
    int count = vd_snapshot_list(n, &l);

    *out = NULL;
    if (count <= 0)
        return count;
    if (!(*out = vd_json_new_array())) {
        vd_snapshot_list_free(l, count);
        return vd_error(ENOMEM, "out of memory");
    }
    for (int i = 0; i < count; i++)
        vd_json_append(*out, snapshot_json(&l[i]));
    vd_snapshot_list_free(l, count);
    return count;
}

/* One row of the table from a SnapshotInfo object. */
static void print_row(const vd_json *o)
{
    const vd_json *ic = vd_json_get(o, "icount");
    time_t date = (time_t)vd_json_int(vd_json_get(o, "date-sec"));
    uint64_t secs = (uint64_t)vd_json_int(vd_json_get(o, "vm-clock-sec"));
    uint64_t nsec = (uint64_t)vd_json_int(vd_json_get(o, "vm-clock-nsec"));
    char size[64], when[64] = "", clock[64], icount[32] = "";
    struct tm tm;

    vd_size_to_str((uint64_t)vd_json_int(vd_json_get(o, "vm-state-size")), size, sizeof(size));
    if (localtime_r(&date, &tm))
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60), (int)(nsec / 1000000));
    if (ic)
        snprintf(icount, sizeof(icount), "%" PRId64, vd_json_int(ic));
    printf("%-9s %-16s %8s%20s%13s%11s\n", vd_json_str(vd_json_get(o, "id")),
           vd_json_str(vd_json_get(o, "name")), size, when, clock, icount);
}

/* See img.h. */
void img_print_snapshots(const vd_json *list)
{
    if (!list || !vd_json_count(list))
        return;
    printf("Snapshot list:\n");
    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
           "ICOUNT");
    for (size_t i = 0; i < vd_json_count(list); i++)
        print_row(vd_json_at(list, i));
}

/* ---- the command ---- */

enum snapshot_action { SN_NONE, SN_LIST, SN_APPLY, SN_CREATE, SN_DELETE };

/* Parsed command line of snapshot. */
struct snapshot_args {
    enum snapshot_action action;
    const char *name;
    bool image_opts, force_share;
};

/* Record one of -l/-a/-c/-d; a second one is a usage error. */
static int snapshot_set(struct snapshot_args *sa, enum snapshot_action act)
{
    if (sa->action != SN_NONE) {
        img_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
        return -1;
    }
    sa->action = act;
    sa->name = optarg;
    return 0;
}

/* Parse snapshot's options (qemu-img 7.2 takes no -f here); -1 on error
 * (printed). */
static int snapshot_parse(int argc, char **argv, struct snapshot_args *sa)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'j' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c, r = 0;

    while (r == 0 && (c = getopt_long(argc, argv, ":la:c:d:hqU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': img_help();
        case 'l': r = snapshot_set(sa, SN_LIST); break;
        case 'a': r = snapshot_set(sa, SN_APPLY); break;
        case 'c': r = snapshot_set(sa, SN_CREATE); break;
        case 'd': r = snapshot_set(sa, SN_DELETE); break;
        case 'I': sa->image_opts = true; break;
        case 'U': sa->force_share = true; break;
        case 'q': case 'j': break;
        default: img_getopt_error(c, argv); return -1;
        }
    }
    if (r == 0 && optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return -1;
    }
    return r;
}

/* Open the image for the action; NULL on error (printed). */
static vd_node *snapshot_open(const char *name, const struct snapshot_args *sa,
                              bool writable)
{
    struct img_open_args a = {
        .name = name, .image_opts = sa->image_opts, .writable = writable,
        .force_share = sa->force_share,
    };
    return img_open(&a);
}

/* -l: the table, nothing when there are no snapshots. */
static int do_list(vd_node *n)
{
    vd_json *list;
    int r = img_snapshots_json(n, &list);

    if (r < 0) {
        img_error("%s", vd_errmsg());
        return 1;
    }
    img_print_snapshots(list);
    vd_json_free(list);
    return 0;
}

/* -c: a snapshot dated now, without VM state. */
static int do_create(vd_node *n, const char *name)
{
    struct vd_snapshot_info sn = { .name = (char *)name, .icount = 0 };
    struct timeval tv;
    int r;

    gettimeofday(&tv, NULL);
    sn.date_sec = (uint32_t)tv.tv_sec;
    sn.date_nsec = (uint32_t)tv.tv_usec * 1000;
    if ((r = vd_snapshot_create(n, &sn)) < 0) {
        img_error("Could not create snapshot '%s': %d (%s)", name, r, strerror(-r));
        return 1;
    }
    return 0;
}

/* -a: revert to the snapshot with that id, else that name. */
static int do_apply(vd_node *n, const char *name)
{
    int r = vd_snapshot_goto(n, name);

    if (r == -ENOTSUP) {
        img_error("Could not apply snapshot '%s': Block driver does not support "
                  "snapshots", name);
        return 1;
    }
    if (r == -ENOENT) {
        img_error("Could not apply snapshot '%s': Failed to load snapshot: %s", name,
                  strerror(ENOENT));
        return 1;
    }
    if (r == -EBUSY) {
        img_error("Could not apply snapshot '%s': %s", name, vd_errmsg());
        return 1;
    }
    if (r < 0) {
        img_error("Could not apply snapshot '%s': Failed to load snapshot: %s", name,
                  vd_errmsg());
        return 1;
    }
    return 0;
}

/* -d: delete the first snapshot with that name (qemu-img looks up names). */
static int do_delete(vd_node *n, const char *name)
{
    struct vd_snapshot_info *l = NULL;
    int count = vd_snapshot_list(n, &l), i, r;

    for (i = 0; i < count && strcmp(l[i].name, name); i++)
        ;
    if (count < 0 || i == count) {
        vd_snapshot_list_free(l, count);
        img_error("Could not delete snapshot '%s': snapshot not found", name);
        return 1;
    }
    r = vd_snapshot_delete(n, l[i].id, l[i].name);
    vd_snapshot_list_free(l, count);
    if (r < 0) {
        img_error("Could not delete snapshot '%s': %s", name, vd_errmsg());
        return 1;
    }
    return 0;
}

/* vdisk-img snapshot [-l | -a snap | -c snap | -d snap] filename */
int img_snapshot(int argc, char **argv)
{
    struct snapshot_args sa = { SN_NONE, NULL, false, false };
    vd_node *n;
    int ret = 0;

    if (snapshot_parse(argc, argv, &sa) < 0)
        return 1;
    n = snapshot_open(argv[optind], &sa, sa.action != SN_LIST);
    if (!n)
        return 1;
    if (sa.action == SN_APPLY) {
        /* QEMU reopens the image to apply a snapshot. */
        vd_close(n);
        sa.force_share = false;
        if (!(n = snapshot_open(argv[optind], &sa, true)))
            return 1;
    }
    switch (sa.action) {
    case SN_LIST: ret = do_list(n); break;
    case SN_CREATE: ret = do_create(n, sa.name); break;
    case SN_APPLY: ret = do_apply(n, sa.name); break;
    case SN_DELETE: ret = do_delete(n, sa.name); break;
    default: break;
    }
    vd_close(n);
    return ret;
}
