/* SPDX-License-Identifier: BSD-3-Clause */
/* NBD wire protocol constants and structures, from the protocol
 * specification (NetworkBlockDevice/nbd doc/proto.md).  All fields on the
 * wire are big-endian; the structs are packed to the wire layout. */
#ifndef VD_NBD_PROTO_H
#define VD_NBD_PROTO_H

#include <stdint.h>

#define NBD_DEFAULT_PORT 10809
#define NBD_MAX_STRING 4096              /* names, descriptions, contexts */
#define NBD_MAX_PAYLOAD (32u << 20)      /* largest read/write we accept */

/* Handshake magics */
#define NBD_MAGIC            UINT64_C(0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC       UINT64_C(0x49484156454f5054) /* "IHAVEOPT" */
#define NBD_OLD_MAGIC        UINT64_C(0x00420281861253)
#define NBD_REP_MAGIC        UINT64_C(0x3e889045565a9)

/* Handshake flags (server) and client flags */
#define NBD_FLAG_FIXED_NEWSTYLE  (1u << 0)
#define NBD_FLAG_NO_ZEROES       (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Transmission flags */
#define NBD_FLAG_HAS_FLAGS          (1u << 0)
#define NBD_FLAG_READ_ONLY          (1u << 1)
#define NBD_FLAG_SEND_FLUSH         (1u << 2)
#define NBD_FLAG_SEND_FUA           (1u << 3)
#define NBD_FLAG_ROTATIONAL         (1u << 4)
#define NBD_FLAG_SEND_TRIM          (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES  (1u << 6)
#define NBD_FLAG_SEND_DF            (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN     (1u << 8)
#define NBD_FLAG_SEND_RESIZE        (1u << 9)
#define NBD_FLAG_SEND_CACHE         (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO     (1u << 11)
#define NBD_FLAG_BLOCK_STAT_PAYLOAD (1u << 12)

/* Options */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* Option replies */
#define NBD_REP_ACK            1
#define NBD_REP_SERVER         2
#define NBD_REP_INFO           3
#define NBD_REP_META_CONTEXT   4
#define NBD_REP_FLAG_ERROR     (1u << 31)
#define NBD_REP_ERR_UNSUP      (1u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_POLICY     (2u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_INVALID    (3u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_PLATFORM   (4u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_TLS_REQD   (5u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_UNKNOWN    (6u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_SHUTDOWN   (7u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (8u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_TOO_BIG    (9u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_EXT_HEADER_REQD (10u | NBD_REP_FLAG_ERROR)

/* NBD_REP_INFO types */
#define NBD_INFO_EXPORT      0
#define NBD_INFO_NAME        1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* Transmission: request and reply magics */
#define NBD_REQUEST_MAGIC          0x25609513u
#define NBD_EXTENDED_REQUEST_MAGIC 0x21e41c71u
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
#define NBD_EXTENDED_REPLY_MAGIC   0x6e8a278cu

/* Commands */
#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_CACHE        5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7
#define NBD_CMD_RESIZE       8

/* Command flags */
#define NBD_CMD_FLAG_FUA         (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE     (1u << 1)
#define NBD_CMD_FLAG_DF          (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE     (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO   (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN (1u << 5)

/* Structured reply flags and types */
#define NBD_REPLY_FLAG_DONE          (1u << 0)
#define NBD_REPLY_TYPE_NONE          0
#define NBD_REPLY_TYPE_OFFSET_DATA   1
#define NBD_REPLY_TYPE_OFFSET_HOLE   2
#define NBD_REPLY_TYPE_BLOCK_STATUS  5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6
#define NBD_REPLY_TYPE_ERROR         ((1u << 15) | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET  ((1u << 15) | 2)

/* base:allocation flags */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)
#define NBD_STATE_DIRTY (1u << 0)      /* qemu:dirty-bitmap:NAME */

/* Errors on the wire */
#define NBD_SUCCESS    0
#define NBD_EPERM      1
#define NBD_EIO        5
#define NBD_ENOMEM     12
#define NBD_EINVAL     22
#define NBD_ENOSPC     28
#define NBD_EOVERFLOW  75
#define NBD_ENOTSUP    95
#define NBD_ESHUTDOWN  108

#define NBD_META_BASE_ALLOCATION "base:allocation"
#define NBD_META_QEMU_DEPTH      "qemu:allocation-depth"
#define NBD_META_QEMU_BITMAP     "qemu:dirty-bitmap:"

struct nbd_new_option {            /* client option header */
    uint64_t magic;                /* NBD_OPTS_MAGIC */
    uint32_t option;
    uint32_t length;
} __attribute__((packed));

struct nbd_fixed_new_option_reply {
    uint64_t magic;                /* NBD_REP_MAGIC */
    uint32_t option;
    uint32_t reply;
    uint32_t length;
} __attribute__((packed));

struct nbd_request {
    uint32_t magic;                /* NBD_REQUEST_MAGIC */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t count;
} __attribute__((packed));

struct nbd_extended_request {
    uint32_t magic;                /* NBD_EXTENDED_REQUEST_MAGIC */
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint64_t count;
} __attribute__((packed));

struct nbd_simple_reply {
    uint32_t magic;
    uint32_t error;
    uint64_t cookie;
} __attribute__((packed));

struct nbd_structured_reply {
    uint32_t magic;
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint32_t length;
} __attribute__((packed));

struct nbd_extended_reply {
    uint32_t magic;
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint64_t length;
} __attribute__((packed));

_Static_assert(sizeof(struct nbd_new_option) == 16, "wire size");
_Static_assert(sizeof(struct nbd_fixed_new_option_reply) == 20, "wire size");
_Static_assert(sizeof(struct nbd_request) == 28, "wire size");
_Static_assert(sizeof(struct nbd_extended_request) == 32, "wire size");
_Static_assert(sizeof(struct nbd_simple_reply) == 16, "wire size");
_Static_assert(sizeof(struct nbd_structured_reply) == 20, "wire size");
_Static_assert(sizeof(struct nbd_extended_reply) == 32, "wire size");

#endif
