/* SPDX-License-Identifier: BSD-3-Clause */
/* A growable byte buffer with overflow-checked growth, used by the JSON
 * printer and parser and by option rendering.  Always NUL-terminated. */
#ifndef VD_UTIL_BUF_H
#define VD_UTIL_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct vd_buf {
    char *p;        /* NULL until the first append */
    size_t len;     /* bytes used, excluding the NUL */
    size_t cap;
    bool oom;       /* an append failed; contents are incomplete */
};

/* Append n bytes; on failure set b->oom and return -ENOMEM. */
int vd_buf_add(struct vd_buf *b, const void *data, size_t n);
int vd_buf_addc(struct vd_buf *b, char c);
int vd_buf_adds(struct vd_buf *b, const char *s);
int vd_buf_printf(struct vd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand the string over (never NULL unless out of memory); b is reset. */
char *vd_buf_steal(struct vd_buf *b);
void vd_buf_free(struct vd_buf *b);

#endif
