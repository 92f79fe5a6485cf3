/* SPDX-License-Identifier: BSD-3-Clause */
/* I/O buffers a driver may keep past a request.
 *
 * A driver whose library may still use a request's memory after the
 * request returned (librbd reading a write's data or storing a read's, when
 * the request was given up on a timeout) must not be handed memory the
 * caller may free.  A buffer from vd_iobuf_alloc can be held: vd_iobuf_hold
 * finds the buffer that contains a range and takes a reference, and
 * vd_iobuf_free leaves the memory to the last holder.  Its owner promises
 * one more thing: after a request on the buffer failed, it does not use
 * the buffer again, but to free it.  Memory not from vd_iobuf_alloc is
 * never held (vd_iobuf_hold returns NULL); the driver then goes through a
 * buffer of its own.  A buffer never released stays listed, so it is not
 * a leak. */
#ifndef VD_UTIL_IOBUF_H
#define VD_UTIL_IOBUF_H

#include <stddef.h>

struct vd_iobuf;

/* len bytes aligned to 4096, or NULL. */
void *vd_iobuf_alloc(size_t len);
/* The owner is done with p (NULL is ignored); freed now or by the last
 * vd_iobuf_release. */
void vd_iobuf_free(void *p);
/* A reference to the buffer holding [p, p+len), or NULL when no buffer
 * from vd_iobuf_alloc holds all of it (or it was freed). */
struct vd_iobuf *vd_iobuf_hold(const void *p, size_t len);
/* Drop a reference from vd_iobuf_hold (NULL is ignored). */
void vd_iobuf_release(struct vd_iobuf *b);

#endif
