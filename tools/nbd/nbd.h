/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-nbd: declarations shared by the files of the program. */
#ifndef VDISK_NBD_TOOL_H
#define VDISK_NBD_TOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "nbd/server.h"
#include "nbd/tls.h"
#include "vdisk/vdisk.h"

#define NBD_PROG "vdisk-nbd"

/* The command line. */
struct nbd_cli {
    const char *port, *bind, *sockpath;
    const char *fmt, *cache, *aio, *discard, *detect_zeroes;
    const char *export_name, *description, *snapshot_param;
    const char **bitmaps;          /* -B, in command-line order */
    int nbitmaps;
    const char *device, *tls_creds, *tls_authz, *tls_hostname;
    const char *pid_file, *partition, *selinux_label;
    const char *filename;
    uint64_t offset;
    bool has_offset;
    bool image_opts, read_only, snapshot, nocache, persistent, verbose;
    bool fork, list, disconnect, alloc_depth;
    bool untrusted;                /* --untrusted or VDISK_UNTRUSTED */
    int shared;
};

/* Print "vdisk-nbd: <message>" on stderr. */
void nbd_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --object (object.c). */
int nbd_object_add(const char *def);
/* The TLS credentials of object id for the endpoint, with the authz
 * object authz_id (may be NULL) applied: NULL with the error printed. */
struct vd_nbd_tls *nbd_object_tls(const char *id, bool server, const char *authz_id);

/* -B (bitmap.c): add one to the command line (0, or -1 printed); the
 * bitmaps of the export for n, last -B first (*out NULL when none; free
 * it), or -1 with the error printed. */
int nbd_cli_add_bitmap(struct nbd_cli *cli, const char *name);
int nbd_export_bitmaps(const struct nbd_cli *cli, vd_node *n, struct vd_nbd_bitmap **out);

/* -P (partition.c): the window of partition number part of n. */
int nbd_find_partition(vd_node *n, int part, uint64_t *offset, uint64_t *size);

/* -L (list.c): list the exports of the server named by the CLI. */
int nbd_list(const struct nbd_cli *cli, struct vd_nbd_tls *tls);

/* Background (daemon.c).  nbd_detach: fork; returns in the child (0),
 * whose stderr goes to the waiting parent; -1 when fork fails.
 * keep_stderr (-v): the child's messages go to the original stderr again
 * once it lets the parent go.  Calling nbd_release_parent() without a
 * detach makes stderr a copy of stdout. */
int nbd_detach(bool keep_stderr);
/* The child is serving: the parent exits 0 (unless messages came). */
void nbd_release_parent(void);

/* Listening and serving (serve.c). */
int nbd_serve(const struct nbd_cli *cli, struct vd_nbd_server *srv, vd_node *node);
/* Write our pid into path, as qemu-nbd --pid-file: 0, or -1 with the
 * error printed. */
int nbd_write_pid_file(const char *path);

/* Kernel client (kernel.c): -c and -d. */
int nbd_kernel_connect(const struct nbd_cli *cli, struct vd_nbd_server *srv,
                       const struct vd_nbd_export *exp, vd_node *node);
int nbd_kernel_disconnect(const char *device);

#endif
