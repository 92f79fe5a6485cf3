/* SPDX-License-Identifier: BSD-3-Clause */
/* Growable NUL-terminated byte buffer (see buf.h).  Capacity doubles; every
 * size computation is overflow-checked. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/checked.h"

/* Make room for n more bytes plus the NUL. */
static int buf_reserve(struct vd_buf *b, size_t n)
{
    size_t need, cap;
    char *p;

    if (b->oom)
        return -ENOMEM;
    if (ADD_OVERFLOW(b->len, n, &need) || ADD_OVERFLOW(need, 1, &need))
        goto fail;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need)
        if (MUL_OVERFLOW(cap, 2, &cap))
            goto fail;
    p = realloc(b->p, cap);
    if (!p)
        goto fail;
    b->p = p;
    b->cap = cap;
    return 0;
fail:
    b->oom = true;
    return -ENOMEM;
}

/* See buf.h. */
int vd_buf_add(struct vd_buf *b, const void *data, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -ENOMEM;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Append one character. */
int vd_buf_addc(struct vd_buf *b, char c)
{
    return vd_buf_add(b, &c, 1);
}

/* Append a C string. */
int vd_buf_adds(struct vd_buf *b, const char *s)
{
    return vd_buf_add(b, s, strlen(s));
}

/* Append printf-style text. */
int vd_buf_printf(struct vd_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) < 0)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* See buf.h. */
char *vd_buf_steal(struct vd_buf *b)
{
    char *s;

    if (b->oom) {
        vd_buf_free(b);
        return NULL;
    }
    s = b->p ? b->p : strdup("");
    b->p = NULL;
    b->len = b->cap = 0;
    return s;
}

/* Release the memory; b can be reused. */
void vd_buf_free(struct vd_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}
