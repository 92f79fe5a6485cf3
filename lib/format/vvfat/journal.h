/* SPDX-License-Identifier: BSD-3-Clause */
/* vvfat rw: the journal file a commit keeps in the directory (journal.c). */
#ifndef VD_FORMAT_VVFAT_JOURNAL_H
#define VD_FORMAT_VVFAT_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format/vvfat/vvfat.h"

enum vv_jkind {
    VV_J_RENAME = 'R',             /* from -> path, written before the rename */
    VV_J_STAGED = 'S',             /* a new file of staged contents */
    VV_J_MKDIR = 'M',              /* a new directory */
    VV_J_COMMIT = 'C',             /* every new object is in place */
};

/* A record read back: paths relative to the directory. */
struct vv_jrec {
    uint8_t kind;
    char *from, *path;
};

/* The open journal of a commit in progress. */
struct vv_journal {
    int fd, dfd;
    const char *dir;
    size_t dirlen;
    uint64_t off;
};

/* Take the directory's journal (EBUSY when a live program holds it),
 * first recovering what a dead one left, and start it empty. */
int vv_journal_begin(struct vv_journal *jf, const char *dir);
/* Append a record; from and path are full paths under the directory. */
int vv_journal_log(struct vv_journal *jf, enum vv_jkind kind, const char *from,
                   const char *path);
/* The commit is over (done or undone): remove the file, drop the lock. */
void vv_journal_end(struct vv_journal *jf);
/* At an rw open: recover an interrupted commit, if any. */
int vv_journal_recover(const char *dir);
/* Is there a journal file in dir (an interrupted or running commit)? */
bool vv_journal_pending(const char *dir);
/* Is this directory entry name the journal file? */
bool vv_journal_name(const char *name);

/* Parse a journal file's bytes into records (validated); the fuzz
 * harness's entry point. */
int vv_journal_parse(const uint8_t *buf, size_t len, struct vv_jrec **out, size_t *n);
void vv_jrec_free(struct vv_jrec *rec, size_t n);

#endif
