/* SPDX-License-Identifier: BSD-3-Clause */
/* vdisk-pool: libvirt's storage pools and volumes without a daemon.  The
 * types shared by the command line (cli.c, cmd-*.c), the state store
 * (state.c), the XML reader and writer (xml.c) and the backends (dir.c). */
#ifndef VD_POOL_H
#define VD_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <sys/types.h>

#define POOL_PROG "vdisk-pool"

/* <permissions> of a pool target or volume: -1 where not given. */
struct pool_perms {
    long mode, owner, group;
    char *label;
};

/* One pool definition, as its XML says. */
struct pool_def {
    char *type;                    /* "dir", "fs", ... */
    char *name;
    char uuid[37];
    char *target_path;
    struct pool_perms perms;
    char *src_device, *src_dir, *src_host, *src_name, *src_format;
    char **src_devs;               /* every <device path>; src_device is the first */
    size_t n_src_devs;
    /* free extents of the first device (live disk pools), end exclusive */
    struct pool_extent {
        uint64_t start, end;
    } *free_ext;
    size_t n_free_ext;
    char *src_proto_ver;           /* netfs <protocol ver=> (nfsvers) */
    uint64_t capacity, allocation, available;
};

/* One pool known to the state store. */
struct pool_obj {
    struct pool_def *def;          /* live definition (or config when inactive) */
    struct pool_def *cfg;          /* persistent definition, NULL if transient */
    bool active, autostart;
};

/* One volume definition (input XML or what refresh found). */
struct vol_def {
    char *name, *key, *path, *format;
    const char *type;              /* "file", "dir", "block" */
    uint64_t capacity, allocation, physical;
    bool has_capacity, has_allocation;
    struct pool_perms perms;
    struct timespec atime, mtime, ctime_;
    char *backing_path, *backing_format;
    struct pool_perms backing_perms;
    struct timespec batime, bmtime, bctime;
    bool backing_stat;             /* backing file found: perms/times valid */
    bool lazy_refcounts, extended_l2;
    char *compat;
    uint64_t cluster_size;         /* probed qcow2 only; 0: not shown */
    /* <source> extents of block volumes (LVs, partitions): byte ranges
     * of devices, end exclusive */
    struct vol_extent {
        char *dev;
        uint64_t start, end;
    } *extents;
    size_t n_extents;
    char *enc_format;              /* <encryption format=...>, NULL if none */
    char *enc_secret;              /* its passphrase secret's uuid, or NULL */
    bool enc_secret_bad;           /* not one <secret type='passphrase'/> */
    /* <cipher name= size= mode= hash=/> and <ivgen name= hash=/>: NULL
     * where not given (simple tokens, checked when parsed) */
    char *enc_cipher[4], *enc_ivgen[2];
    /* a new encrypted partition: the LUKS header's room, which libvirt
     * leaves out of its capacity and allocation until a refresh */
    uint64_t luks_room;
};

/* The ids of the libvdisk secret objects a volume's passphrase and (for
 * a copy) its source's are given as. */
#define VOL_KEY_ID "vdisk-pool-key"
#define VOL_SRC_KEY_ID "vdisk-pool-input-key"

/* One secret definition (libvirt's secret XML). */
struct secret_def {
    char uuid[37];
    bool ephemeral, priv;
    char *description;
    char *usage_type, *usage_id;   /* NULL: no usage */
};

/* The connection: where state lives. */
struct pool_conn {
    char *cfg_dir, *run_dir, *autostart_dir;
    int lock_fd;
};

/* --stream (given by a vdisk+ssh client to the remote side): the file a
 * command reads (vol-upload's data, an XML file) is stdin, vol-download
 * writes stdout, and no blank line follows.  pool_stream_file: the XML
 * file name whose first read is stdin. */
extern bool pool_stream;
extern const char *pool_stream_file;

/* ---- errors (cli.c) ---- */
/* Print "error: <msg>" on stderr. */
void pool_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Record the detailed (second) error line for the current failure. */
void pool_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The full path of program prog in $PATH (malloc'd; prog itself when it
 * names a path), or NULL when no directory of $PATH has it. */
char *pool_find_program(const char *prog);
/* The recorded detail ("" when none). */
const char *pool_error_text(void);
/* Print the recorded detail as "error: <detail>" (if any) and clear it. */
void pool_report(void);
/* Out of memory: print and exit 1. */
void pool_oom(void) __attribute__((noreturn));
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- XML (xml.c) ---- */
struct pool_def *pool_def_parse(const char *xml, size_t len);
struct pool_def *pool_def_parse_file(const char *path);
/* Text of the pool XML; inactive: leave out the live target permissions. */
char *pool_def_format(const struct pool_def *d, bool with_perms);
void pool_def_free(struct pool_def *d);
struct pool_def *pool_def_copy(const struct pool_def *d);
struct vol_def *vol_def_parse(const char *xml, size_t len);
char *vol_def_format(const struct vol_def *v);
void vol_def_free(struct vol_def *v);
struct secret_def *secret_def_parse(const char *xml, size_t len);
char *secret_def_format(const struct secret_def *s);
void secret_def_free(struct secret_def *s);
/* The element that names a secret usage type's object ("volume", "name",
 * ...), with the error when it is missing; NULL for an unknown type. */
const char *secret_usage_elem(const char *type, const char **missing);
/* Canonical form of a uuid string (hex digits, optional dashes): 0 or -1. */
int pool_uuid_parse(const char *s, char out[37]);
/* The base64 value of secret uuid (malloc'd); NULL with virsh's error. */
struct pool_conn;
char *secret_value_b64(struct pool_conn *c, const char *uuid);
struct vol_def;
/* Encrypted volumes without a secret get the one whose usage is their
 * path, as libvirt finds it. */
void secret_fill_vols(const struct pool_conn *c, struct vol_def **v, size_t n);
/* Check v's <encryption> and give its passphrase to libvdisk as the secret
 * object VOL_KEY_ID, and (a copy) that of its source from, when
 * encrypted, as VOL_SRC_KEY_ID; 0 when neither is encrypted; -1 (error
 * recorded). */
int secret_prepare_vol(struct pool_conn *c, const struct vol_def *v, const struct vol_def *from);
/* libvirt's scaled integer units ("KiB", "M", "bytes"...): 0 or -1. */
int pool_scale(const char *unit, uint64_t *val, uint64_t dflt_scale);
/* Read a whole file (capped); NULL with the error recorded. */
char *pool_read_file(const char *path, size_t *len);

/* ---- state (state.c) ---- */
int conn_open(struct pool_conn *c, const char *uri);
void conn_close(struct pool_conn *c);
/* Take the state lock, exclusive or shared. */
int conn_lock(struct pool_conn *c, bool exclusive);
/* Every pool, sorted by name; *n set.  NULL with n 0 when none. */
struct pool_obj **pools_load(struct pool_conn *c, size_t *n);
void pools_free(struct pool_obj **p, size_t n);
/* A pool by uuid or name; NULL and the virsh errors printed. */
struct pool_obj *pool_lookup(struct pool_conn *c, const char *id);
void pool_obj_free(struct pool_obj *o);
int state_save_config(struct pool_conn *c, const struct pool_def *d);
int state_remove_config(struct pool_conn *c, const char *name);
int state_save_live(struct pool_conn *c, const struct pool_def *d);
int state_remove_live(struct pool_conn *c, const char *name);
int state_set_autostart(struct pool_conn *c, const char *name, bool on);
/* Write data to path atomically: temporary file, fsync, rename, dir fsync. */
int atomic_write(const char *path, const char *data, size_t len);
void make_uuid(char out[37]);

/* Volumes created since the pool's last refresh keep the compat and
 * features of their definition (libvirt shows them so until a refresh). */
int state_mark_vol(struct pool_conn *c, const char *pool, const struct vol_def *v);
void state_unmark_vol(struct pool_conn *c, const char *pool, const char *vol);
void state_clear_vols(struct pool_conn *c, const char *pool);
/* Apply the marks to volumes just listed. */
void state_apply_marks(struct pool_conn *c, const char *pool, struct vol_def **v, size_t n);

/* ---- dir backend (dir.c) ---- */
int dir_build(struct pool_def *d, bool overwrite, bool no_overwrite);
int dir_start(struct pool_def *d);
int dir_stop(struct pool_def *d);
int dir_delete(struct pool_def *d);
int dir_refresh(struct pool_def *d);
/* Volumes of an active pool, sorted by name. */
struct vol_def **dir_vols(const struct pool_def *d, size_t *n);
void vols_free(struct vol_def **v, size_t n);
/* Fill v from the file at v->path; -1 when it cannot be read. */
int vol_probe(struct vol_def *v);
int dir_vol_create(const struct pool_def *d, struct vol_def *v, bool prealloc_meta,
                   const struct vol_def *from);
int dir_vol_delete(const struct vol_def *v);
/* The LUKS options of v's <encryption> (prefix "encrypt." inside qcow2),
 * as libvirt passes them to qemu-img, its key the secret VOL_KEY_ID. */
struct vd_opts;
void vol_luks_opts(struct vd_opts *o, const struct vol_def *v, const char *prefix);
/* Copy the guest data of volume from into the volume v just made (its
 * path and type set), as raw where either is a block volume; -1 with the
 * error recorded. */
int vol_copy_data(const struct vol_def *from, const struct vol_def *v);
int dir_vol_wipe(const struct vol_def *v, const char *algorithm);
int dir_vol_resize(const struct pool_def *d, struct vol_def *v, uint64_t cap,
                   bool allocate, bool shrink);
/* Upload and download: file NULL is stdin / stdout (a pipe, in --stream
 * mode); -3 from upload when the file has more than len bytes. */
int dir_vol_upload(const struct vol_def *v, const char *file, uint64_t off,
                   uint64_t len, bool sparse);
int dir_vol_download(const struct vol_def *v, const char *file, uint64_t off,
                     uint64_t len, bool sparse);
/* Read until n bytes or the end of fd: the count, -1 on error. */
ssize_t read_full(int fd, void *buf, size_t n);
bool is_zero(const void *buf, size_t n);
#define STREAM_BLOCK (64 * 1024)

/* ---- fs backend (fs.c): mkfs, mount, umount around a dir pool ---- */
/* Run argv; its stdout (first 4095 bytes) into out if given, stderr into
 * the error message on failure.  Returns the exit status or -1. */
int run_cmd(char *const argv[], char *out);
/* Is target a mount point (in /proc/self/mounts)? */
bool is_mounted(const char *target);
int fs_build(struct pool_def *d, bool overwrite, bool no_overwrite);
int fs_start(struct pool_def *d);
int fs_stop(struct pool_def *d);
/* ---- netfs backend (netfs.c): nfs, glusterfs, cifs mounted on the target ---- */
int netfs_start(struct pool_def *d);
int netfs_stop(struct pool_def *d);

/* Is fmt a volume format libvirt knows for file pools? */
bool vol_format_known(const char *fmt);
/* Is fmt a volume format of any pool type (file formats, partition types)? */
bool vol_format_any(const char *fmt);

/* ---- the pool types (backend.c): one table entry per type ---- */
struct pool_backend {
    const char *type;
    int (*build)(struct pool_def *d, bool overwrite, bool no_overwrite);
    int (*start)(struct pool_def *d);
    int (*stop)(struct pool_def *d);
    int (*delete_)(struct pool_def *d);
    int (*refresh)(struct pool_def *d);
    /* The volumes of the active pool, sorted as libvirt lists them. */
    struct vol_def **(*vols)(const struct pool_def *d, size_t *n);
    /* Checks of a new volume before its secrets are looked up (NULL: none). */
    int (*vol_check)(const struct vol_def *v, bool prealloc_meta, const struct vol_def *from);
    int (*vol_create)(const struct pool_def *d, struct vol_def *v, bool prealloc_meta,
                      const struct vol_def *from);
    int (*vol_delete)(const struct pool_def *d, const struct vol_def *v);
    int (*vol_resize)(const struct pool_def *d, struct vol_def *v, uint64_t cap,
                      bool allocate, bool shrink);
    int (*vol_wipe)(const struct vol_def *v, const char *algorithm);
    int (*vol_upload)(const struct vol_def *v, const char *file, uint64_t off,
                      uint64_t len, bool sparse);
    int (*vol_download)(const struct vol_def *v, const char *file, uint64_t off,
                        uint64_t len, bool sparse);
    /* Volume formats (NULL-ended) and the default; NULL: no <format>. */
    const char *const *vol_formats;
    const char *vol_default_format;
    /* Source formats of pool-capabilities' <poolOptions> (NULL: none). */
    const char *const *src_formats;
    const char *src_default_format;
};

/* The backend of pool type type; NULL with libvirt's error recorded. */
const struct pool_backend *pool_backend_of(const char *type);
/* Every backend, ended by a NULL type. */
extern const struct pool_backend pool_backends[];
/* Run argv (argv[0] looked up in PATH); its stdout (up to 1 MiB, NUL
 * ended, malloc'd) into *out if out is given.  Returns the exit status,
 * -1 when it could not run; on a nonzero status the error is recorded as
 * libvirt words a failed child process. */
int pool_run(char *const argv[], char **out);

/* ---- logical backend (logical.c): LVM volume groups ---- */
int lvm_build(struct pool_def *d, bool overwrite, bool no_overwrite);
int lvm_start(struct pool_def *d);
int lvm_stop(struct pool_def *d);
int lvm_delete(struct pool_def *d);
int lvm_refresh(struct pool_def *d);
struct vol_def **lvm_vols(const struct pool_def *d, size_t *n);
int lvm_vol_create(const struct pool_def *d, struct vol_def *v, bool prealloc_meta,
                   const struct vol_def *from);
int lvm_vol_delete(const struct pool_def *d, const struct vol_def *v);
/* find-storage-pool-sources for logical: the <sources> XML (malloc'd). */
char *lvm_find_sources(void);

/* ---- disk backend (disk.c): partition tables through parted ---- */
int disk_build(struct pool_def *d, bool overwrite, bool no_overwrite);
int disk_start(struct pool_def *d);
int disk_stop(struct pool_def *d);
int disk_delete(struct pool_def *d);
int disk_refresh(struct pool_def *d);
struct vol_def **disk_vols(const struct pool_def *d, size_t *n);
int disk_vol_create(const struct pool_def *d, struct vol_def *v, bool prealloc_meta,
                    const struct vol_def *from);
int disk_vol_delete(const struct pool_def *d, const struct vol_def *v);

/* ---- block volumes (block.c): what logical.c and disk.c share ---- */
/* The room libvirt adds to an encrypted LV or partition for its LUKS
 * header. */
#define LUKS_ROOM (2 * 1024 * 1024)
/* libvirt's refusals of a new LV or partition: an encryption other than
 * LUKS, metadata preallocation of a copy; 0 or -1 (recorded). */
int block_vol_check(const struct vol_def *v, bool prealloc_meta, const struct vol_def *from);
/* Write a LUKS header of payload size (rounded up to KiB) over the new
 * device v->path, with v's cipher choices and the key VOL_KEY_ID that
 * secret_prepare_vol gave; 0 or -1 (recorded). */
int block_vol_luks(const struct vol_def *v, uint64_t size);
/* After a failure: undo(d, v) (remove the new device) with the
 * failure's message kept, not the undo's. */
void block_vol_undo(int (*undo)(const struct pool_def *d, const struct vol_def *v),
                    const struct pool_def *d, const struct vol_def *v);

/* Append an extent (dev, start, end) to v's <source>. */
void vol_add_extent(struct vol_def *v, const char *dev, uint64_t start, uint64_t end);
/* Fill a block volume's permissions and timestamps from its node. */
void vol_stat_block(struct vol_def *v);

#endif
