/* SPDX-License-Identifier: BSD-3-Clause */
/* The LUKS1 header (LUKS On-Disk Format Specification 1.2.3): decoding,
 * QEMU's checks, the algorithm names, key slots (unlock and store) and the
 * layout QEMU gives new images.  Shared by the luks format driver and
 * qcow2's encrypt.format=luks. */
#ifndef VD_FORMAT_LUKS_H
#define VD_FORMAT_LUKS_H

#include <stdbool.h>
#include <stdint.h>

#include "crypto/crypto.h"
#include "vdisk/driver.h"

#define LUKS_MAGIC          "LUKS\xba\xbe"
#define LUKS_MAGIC_LEN      6
#define LUKS_HDR_LEN        592u
#define LUKS_SLOTS          8
#define LUKS_STRIPES        4000u
#define LUKS_SECTOR         512u
#define LUKS_HEADER_SECTORS 8u          /* key material starts at 4 KiB */
#define LUKS_SALT_LEN       32u
#define LUKS_DIGEST_LEN     20u
#define LUKS_SLOT_ENABLED   0x00ac71f3u
#define LUKS_SLOT_DISABLED  0x0000deadu
#define LUKS_MIN_ITERS      1000u
/* Default cap on one PBKDF2 iteration count read from an image: more
 * than any cryptsetup or QEMU makes in practice (a few seconds of a fast
 * CPU), so that a hostile header cannot keep an open busy for minutes. */
#define LUKS_MAX_ITERS_DEFAULT (1u << 26)

struct luks_slot {
    uint32_t active, iters, key_offset, stripes;
    uint8_t salt[LUKS_SALT_LEN];
};

struct luks_header {
    char cipher_name[33], cipher_mode[33], hash_spec[33], uuid[41];
    uint32_t payload, key_bytes, mk_iters;
    uint8_t mk_digest[LUKS_DIGEST_LEN], mk_salt[LUKS_SALT_LEN];
    struct luks_slot slots[LUKS_SLOTS];
};

/* The algorithms a header names. */
struct luks_algs {
    struct vd_blockcrypt_params bc;
    enum vd_hash_alg hash;
    bool has_ivhash;
};

/* The largest iteration count accepted from an image (fuzzing lowers it). */
extern uint32_t luks_max_iters;

/* Encode h into 592 bytes. */
void luks_encode(const struct luks_header *h, uint8_t *buf);
/* Decode the 592 header bytes in buf into h with QEMU's checks and
 * messages, then the algorithm names into a; plus a cap on iteration
 * counts.  0 or -errno. */
int luks_parse(const uint8_t *buf, struct luks_header *h, struct luks_algs *a);
/* Sectors of key material of one slot for key_bytes (rounded up to 4 KiB). */
uint32_t luks_split_sectors(uint32_t key_bytes);
/* Find the master key (h->key_bytes into mk) with pass by trying every
 * active slot; read(opaque, off, len, buf) reads the container.  QEMU's
 * "Invalid password" error when none opens. */
int luks_unlock(const struct luks_header *h, const struct luks_algs *a, const uint8_t *pass,
                size_t pass_len, uint8_t *mk,
                int (*read)(void *opaque, uint64_t off, uint64_t len, void *buf),
                void *opaque);
/* Store mk in slot i of h protected by pass (salt, iterations from
 * iter_time ms, split key written with write); the slot is made active in
 * h (the caller writes the header). */
int luks_store_slot(struct luks_header *h, const struct luks_algs *a, int i,
                    const uint8_t *pass, size_t pass_len, const uint8_t *mk, uint64_t iter_time,
                    int (*write)(void *opaque, uint64_t off, uint64_t len, const void *buf),
                    void *opaque);
/* Creation parameters (the create options, parsed). */
struct luks_create_params {
    struct luks_algs a;
    uint64_t iter_time;
};
/* Parse cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg, hash-alg and
 * iter-time from opts (keys prefixed by prefix) as QEMU does. */
int luks_parse_create_opts(vd_opts *opts, const char *prefix, struct luks_create_params *p);
/* A LUKS header being amended and where it lives: at base in file,
 * header and key material within len bytes. */
struct luks_container {
    struct luks_header *h;
    const struct luks_algs *a;
    const uint8_t *mk;             /* the master key (h->key_bytes) */
    vd_node *file;
    uint64_t base, len;
};
/* Change key slots as qemu-img amend does with the luks options of opts
 * (state, keyslot, old-secret, new-secret, iter-time; force allows
 * erasing the last active slot).  The header in c->h is kept current. */
int luks_amend_keyslots(struct luks_container *c, vd_opts *opts, bool force);
/* QEMU's checks of the algorithms of a new image (completes the essiv
 * cipher of p). */
int luks_check_create(struct luks_create_params *p);
/* A new header for p (master key in mk, random), slots laid out as QEMU
 * lays them out; payload offset in sectors in h->payload.  Checks the
 * algorithms and completes p (the essiv cipher). */
int luks_new_header(struct luks_header *h, struct luks_create_params *p, uint8_t *mk);
/* Fill QEMU's format-specific luks info object (with "format": fmt when
 * fmt is not NULL, where qcow2's "encrypt" object has it). */
void luks_info(const struct luks_header *h, const struct luks_algs *a, struct vd_json *d,
               const char *fmt);
/* The payload offset in bytes QEMU gives an image created with p. */
uint64_t luks_payload_bytes(const struct luks_create_params *p);

#endif
