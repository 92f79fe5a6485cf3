/* SPDX-License-Identifier: BSD-3-Clause */
/* The LUKS1 header: layout (LUKS On-Disk Format Specification 1.2.3,
 * big-endian fields), the checks QEMU 7.2 makes with its messages, the
 * algorithm names, key slot unlock and store, and the layout of new
 * images (key material 4 KiB aligned after a 4 KiB header, the payload
 * after the eighth slot), as QEMU lays them out.
 *
 * Hostile headers: every slot must have QEMU's 4000 stripes and a key
 * length the cipher knows (at most 64 bytes), so a slot's key material is
 * at most 256000 bytes; iteration counts above luks_max_iters are refused
 * before any PBKDF2 runs. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/luks/luks.h"
#include "util/checked.h"
#include "util/json.h"

uint32_t luks_max_iters = LUKS_MAX_ITERS_DEFAULT;

/* Field offsets. */
enum {
    LH_VERSION = 6, LH_CIPHER_NAME = 8, LH_CIPHER_MODE = 40, LH_HASH = 72, LH_PAYLOAD = 104,
    LH_KEY_BYTES = 108, LH_MK_DIGEST = 112, LH_MK_SALT = 132, LH_MK_ITERS = 164, LH_UUID = 168,
    LH_SLOTS = 208, LH_SLOT_LEN = 48,
    LS_ACTIVE = 0, LS_ITERS = 4, LS_SALT = 8, LS_OFFSET = 40, LS_STRIPES = 44,
};

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* Copy a fixed-size string field (NUL added). */
static void get_str(char *dst, const uint8_t *src, size_t len)
{
    memcpy(dst, src, len);
    dst[len] = 0;
}

/* Decode buf into h (no checks). */
static void decode(const uint8_t *buf, struct luks_header *h)
{
    memset(h, 0, sizeof(*h));
    get_str(h->cipher_name, buf + LH_CIPHER_NAME, 32);
    get_str(h->cipher_mode, buf + LH_CIPHER_MODE, 32);
    get_str(h->hash_spec, buf + LH_HASH, 32);
    get_str(h->uuid, buf + LH_UUID, 40);
    h->payload = be32(buf + LH_PAYLOAD);
    h->key_bytes = be32(buf + LH_KEY_BYTES);
    memcpy(h->mk_digest, buf + LH_MK_DIGEST, LUKS_DIGEST_LEN);
    memcpy(h->mk_salt, buf + LH_MK_SALT, LUKS_SALT_LEN);
    h->mk_iters = be32(buf + LH_MK_ITERS);
    for (int i = 0; i < LUKS_SLOTS; i++) {
        const uint8_t *s = buf + LH_SLOTS + i * LH_SLOT_LEN;
        h->slots[i].active = be32(s + LS_ACTIVE);
        h->slots[i].iters = be32(s + LS_ITERS);
        memcpy(h->slots[i].salt, s + LS_SALT, LUKS_SALT_LEN);
        h->slots[i].key_offset = be32(s + LS_OFFSET);
        h->slots[i].stripes = be32(s + LS_STRIPES);
    }
}

void luks_encode(const struct luks_header *h, uint8_t *buf)
{
    memset(buf, 0, LUKS_HDR_LEN);
    memcpy(buf, LUKS_MAGIC, LUKS_MAGIC_LEN);
    buf[LH_VERSION + 1] = 1;
    memcpy(buf + LH_CIPHER_NAME, h->cipher_name, strnlen(h->cipher_name, 31));
    memcpy(buf + LH_CIPHER_MODE, h->cipher_mode, strnlen(h->cipher_mode, 31));
    memcpy(buf + LH_HASH, h->hash_spec, strnlen(h->hash_spec, 31));
    memcpy(buf + LH_UUID, h->uuid, strnlen(h->uuid, 39));
    put_be32(buf + LH_PAYLOAD, h->payload);
    put_be32(buf + LH_KEY_BYTES, h->key_bytes);
    memcpy(buf + LH_MK_DIGEST, h->mk_digest, LUKS_DIGEST_LEN);
    memcpy(buf + LH_MK_SALT, h->mk_salt, LUKS_SALT_LEN);
    put_be32(buf + LH_MK_ITERS, h->mk_iters);
    for (int i = 0; i < LUKS_SLOTS; i++) {
        uint8_t *s = buf + LH_SLOTS + i * LH_SLOT_LEN;
        put_be32(s + LS_ACTIVE, h->slots[i].active);
        put_be32(s + LS_ITERS, h->slots[i].iters);
        memcpy(s + LS_SALT, h->slots[i].salt, LUKS_SALT_LEN);
        put_be32(s + LS_OFFSET, h->slots[i].key_offset);
        put_be32(s + LS_STRIPES, h->slots[i].stripes);
    }
}

/* Sectors of key material for key_bytes and stripes, rounded up to the
 * header's 4 KiB (64-bit: hostile values cannot wrap). */
static uint64_t split_sectors(uint64_t key_bytes, uint64_t stripes)
{
    uint64_t s = div_round_up(key_bytes * stripes, LUKS_SECTOR);
    return div_round_up(s, LUKS_HEADER_SECTORS) * LUKS_HEADER_SECTORS;
}

uint32_t luks_split_sectors(uint32_t key_bytes)
{
    return (uint32_t)split_sectors(key_bytes, LUKS_STRIPES);
}

/* The NUL and fixed-field checks QEMU makes before the key slots. */
static int check_fields(const uint8_t *buf, const struct luks_header *h)
{
    if (memcmp(buf, LUKS_MAGIC, LUKS_MAGIC_LEN))
        return vd_error(EINVAL, "Volume is not in LUKS format");
    if ((buf[LH_VERSION] << 8 | buf[LH_VERSION + 1]) != 1)
        return vd_error(ENOTSUP, "LUKS version %u is not supported",
                        buf[LH_VERSION] << 8 | buf[LH_VERSION + 1]);
    if (!memchr(buf + LH_CIPHER_NAME, 0, 32))
        return vd_error(EINVAL, "LUKS header cipher name is not NUL terminated");
    if (!memchr(buf + LH_CIPHER_MODE, 0, 32))
        return vd_error(EINVAL, "LUKS header cipher mode is not NUL terminated");
    if (!memchr(buf + LH_HASH, 0, 32))
        return vd_error(EINVAL, "LUKS header hash spec is not NUL terminated");
    if (h->payload < LUKS_HEADER_SECTORS)
        return vd_error(EINVAL, "LUKS payload is overlapping with the header");
    if (!h->mk_iters)
        return vd_error(EINVAL, "LUKS key iteration count is zero");
    return 0;
}

/* QEMU's checks of slot i. */
static int check_slot(const struct luks_header *h, int i)
{
    const struct luks_slot *s = &h->slots[i];
    uint64_t len = split_sectors(h->key_bytes, s->stripes);

    if (s->stripes != LUKS_STRIPES)
        return vd_error(EINVAL, "Keyslot %d is corrupted (stripes %d != %d)", i,
                        (int)s->stripes, LUKS_STRIPES);
    if (s->active != LUKS_SLOT_DISABLED && s->active != LUKS_SLOT_ENABLED)
        return vd_error(EINVAL, "Keyslot %d state (active/disable) is corrupted", i);
    if (s->active == LUKS_SLOT_ENABLED && !s->iters)
        return vd_error(EINVAL, "Keyslot %d iteration count is zero", i);
    if (s->key_offset < LUKS_HEADER_SECTORS)
        return vd_error(EINVAL, "Keyslot %d is overlapping with the LUKS header", i);
    if (s->key_offset + len > h->payload)
        return vd_error(EINVAL, "Keyslot %d is overlapping with the encrypted payload", i);
    for (int j = i + 1; j < LUKS_SLOTS; j++) {
        uint64_t a = s->key_offset, b = h->slots[j].key_offset;
        uint64_t lb = split_sectors(h->key_bytes, h->slots[j].stripes);
        if (a < b + lb && b < a + len)
            return vd_error(EINVAL, "Keyslots %d and %d are overlapping in the header", i, j);
    }
    return 0;
}

/* Our cap on the PBKDF2 work a header may ask for. */
static int check_iters(const struct luks_header *h)
{
    if (h->mk_iters > luks_max_iters)
        return vd_error(EINVAL, "LUKS key iteration count %" PRIu32 " is larger than %" PRIu32,
                        h->mk_iters, luks_max_iters);
    for (int i = 0; i < LUKS_SLOTS; i++)
        if (h->slots[i].active == LUKS_SLOT_ENABLED && h->slots[i].iters > luks_max_iters)
            return vd_error(EINVAL, "Keyslot %d iteration count %" PRIu32 " is larger than %"
                            PRIu32, i, h->slots[i].iters, luks_max_iters);
    return 0;
}

/* The ESSIV cipher for cipher and hash (dm-crypt keys it with the whole
 * digest, so the key size follows the hash). */
static int essiv_cipher(enum vd_cipher_alg c, enum vd_hash_alg hash, enum vd_cipher_alg *out)
{
    size_t dl = vd_hash_len(hash);
    const char *fam = vd_cipher_family(c);
    int a;

    if (dl == vd_cipher_key_len(c)) {
        *out = c;
        return 0;
    }
    if (!strcmp(fam, "cast5"))
        return vd_error(EINVAL, "Cipher %s not supported with essiv", vd_cipher_alg_name(c));
    if ((a = vd_cipher_alg_by_family(fam, dl)) < 0)
        return vd_error(EINVAL, "No %s cipher with key size %zu available",
                        !strcmp(fam, "aes") ? "AES" : !strcmp(fam, "serpent") ? "Serpent"
                        : "Twofish", dl);
    *out = a;
    return 0;
}

/* A name lookup failure as QEMU words it. */
static int not_supported(const char *what, const char *name)
{
    return vd_error(ENOTSUP, "%s '%s' not supported", what, name);
}

/* QEMU's parse of the algorithm names (cipher-mode string
 * "mode-ivgen[:hash]"). */
static int parse_algs(const struct luks_header *h, struct luks_algs *a)
{
    char mode[33], *iv, *ivhash;
    uint32_t kb = h->key_bytes;
    int m, c, hs, g, ih = 0;

    memcpy(mode, h->cipher_mode, sizeof(mode));
    if (!(iv = strchr(mode, '-')))
        return vd_error(EINVAL, "Unexpected cipher mode string format '%s'", h->cipher_mode);
    *iv++ = 0;
    if ((ivhash = strchr(iv, ':'))) {
        *ivhash++ = 0;
        if ((ih = vd_hash_parse(ivhash)) < 0)
            return not_supported("Hash algorithm", ivhash);
    }
    if ((m = vd_cipher_mode_parse(mode)) < 0)
        return not_supported("Cipher mode", mode);
    if (m == VD_MODE_XTS)
        kb /= 2;
    if ((c = vd_cipher_alg_by_family(h->cipher_name, kb)) < 0)
        return vd_error(ENOTSUP, "Algorithm '%s' with key size %d bytes not supported",
                        h->cipher_name, (int)kb);
    if ((hs = vd_hash_parse(h->hash_spec)) < 0)
        return not_supported("Hash algorithm", h->hash_spec);
    if ((g = vd_ivgen_parse(iv)) < 0)
        return not_supported("IV generator", iv);
    a->bc = (struct vd_blockcrypt_params){ c, m, g, c, ih };
    a->hash = hs;
    a->has_ivhash = ivhash != NULL;
    if (g == VD_IVGEN_ESSIV && !ivhash)
        return vd_error(EINVAL, "Missing IV generator hash specification");
    return g == VD_IVGEN_ESSIV ? essiv_cipher(c, ih, &a->bc.ivgen_cipher) : 0;
}

int luks_parse(const uint8_t *buf, struct luks_header *h, struct luks_algs *a)
{
    int r;

    decode(buf, h);
    if ((r = check_fields(buf, h)) < 0)
        return r;
    for (int i = 0; i < LUKS_SLOTS; i++)
        if ((r = check_slot(h, i)) < 0)
            return r;
    if ((r = parse_algs(h, a)) < 0)
        return r;
    if (a->bc.mode == VD_MODE_XTS && vd_cipher_block_len(a->bc.cipher) != 16)
        return vd_error(ENOTSUP, "Unsupported cipher mode xts");
    return check_iters(h);
}

/* Try slot i: 1 when pass opens it (mk filled), 0 when not, or -errno. */
static int try_slot(const struct luks_header *h, const struct luks_algs *a, int i,
                    const uint8_t *pass, size_t pass_len, uint8_t *mk,
                    int (*read)(void *, uint64_t, uint64_t, void *), void *opaque)
{
    const struct luks_slot *s = &h->slots[i];
    size_t kb = h->key_bytes, split_len = kb * s->stripes;
    uint8_t key[VD_CIPHER_MAX_KEY], digest[LUKS_DIGEST_LEN], *split = malloc(split_len);
    struct vd_blockcrypt *bc = NULL;
    int r;

    if (!split)
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_pbkdf2(a->hash, pass, pass_len, s->salt, LUKS_SALT_LEN, s->iters, key, kb)) >= 0 &&
        (r = read(opaque, (uint64_t)s->key_offset * LUKS_SECTOR, split_len, split)) >= 0 &&
        (r = vd_blockcrypt_new(&bc, &a->bc, key, kb)) >= 0 &&
        (r = vd_blockcrypt_decrypt(bc, 0, split, split_len)) >= 0 &&
        (r = vd_af_merge(a->hash, kb, s->stripes, split, mk)) >= 0 &&
        (r = vd_pbkdf2(a->hash, mk, kb, h->mk_salt, LUKS_SALT_LEN, h->mk_iters, digest,
                       LUKS_DIGEST_LEN)) >= 0)
        r = !memcmp(digest, h->mk_digest, LUKS_DIGEST_LEN);
    vd_blockcrypt_free(bc);
    vd_wipe(split, split_len);
    free(split);
    vd_wipe(key, sizeof(key));
    return r;
}

int luks_unlock(const struct luks_header *h, const struct luks_algs *a, const uint8_t *pass,
                size_t pass_len, uint8_t *mk,
                int (*read)(void *opaque, uint64_t off, uint64_t len, void *buf), void *opaque)
{
    for (int i = 0; i < LUKS_SLOTS; i++) {
        int r;
        if (h->slots[i].active != LUKS_SLOT_ENABLED)
            continue;
        r = try_slot(h, a, i, pass, pass_len, mk, read, opaque);
        if (r != 0) {
            if (r < 0)
                vd_wipe(mk, h->key_bytes);
            return r < 0 ? r : 0;
        }
    }
    vd_wipe(mk, h->key_bytes);
    return vd_error(EPERM, "Invalid password, cannot unlock any keyslot");
}

/* PBKDF2 iterations for iter_time ms deriving out_len bytes (QEMU's
 * arithmetic and messages), divided by div, at least LUKS_MIN_ITERS.  A
 * longer output costs a run of the iterations per hash length: the rate
 * is divided by that count, so a 64-byte key from sha256 takes iter_time,
 * not twice that. */
static int count_iters(enum vd_hash_alg hash, uint64_t iter_time, size_t out_len, unsigned div,
                       uint32_t *out)
{
    int64_t rate = vd_pbkdf2_rate(hash);
    uint64_t it, blocks = (out_len + vd_hash_len(hash) - 1) / vd_hash_len(hash);

    if (rate < 0)
        return (int)rate;
    rate /= (int64_t)VD_MAX(blocks, 1u);
    if (iter_time && (uint64_t)rate > UINT64_MAX / iter_time)
        return vd_error(ERANGE, "PBKDF iterations %" PRIu64 " too large to scale",
                        (uint64_t)rate);
    it = (uint64_t)rate * iter_time / 1000;
    if (it > UINT32_MAX)
        return vd_error(ERANGE, "PBKDF iterations %" PRIu64 " larger than %u", it, UINT32_MAX);
    it /= div;
    *out = (uint32_t)VD_MAX(it, (uint64_t)LUKS_MIN_ITERS);
    return 0;
}

int luks_store_slot(struct luks_header *h, const struct luks_algs *a, int i,
                    const uint8_t *pass, size_t pass_len, const uint8_t *mk, uint64_t iter_time,
                    int (*write)(void *opaque, uint64_t off, uint64_t len, const void *buf),
                    void *opaque)
{
    struct luks_slot *s = &h->slots[i];
    size_t kb = h->key_bytes, split_len = kb * LUKS_STRIPES;
    uint8_t key[VD_CIPHER_MAX_KEY], *split = malloc(split_len);
    struct vd_blockcrypt *bc = NULL;
    int r;

    if (!split)
        return vd_error(ENOMEM, "out of memory");
    s->stripes = LUKS_STRIPES;
    if ((r = vd_random(s->salt, LUKS_SALT_LEN)) >= 0 &&
        (r = count_iters(a->hash, iter_time, kb, 1, &s->iters)) >= 0 &&
        (r = vd_pbkdf2(a->hash, pass, pass_len, s->salt, LUKS_SALT_LEN, s->iters, key, kb)) >= 0 &&
        (r = vd_blockcrypt_new(&bc, &a->bc, key, kb)) >= 0 &&
        (r = vd_af_split(a->hash, kb, LUKS_STRIPES, mk, split)) >= 0 &&
        (r = vd_blockcrypt_encrypt(bc, 0, split, split_len)) >= 0 &&
        (r = write(opaque, (uint64_t)s->key_offset * LUKS_SECTOR, split_len, split)) >= 0)
        s->active = LUKS_SLOT_ENABLED;
    vd_blockcrypt_free(bc);
    vd_wipe(split, split_len);
    free(split);
    vd_wipe(key, sizeof(key));
    return r;
}

/* One enum create option: the table's index of its value, or QEMU's
 * message. */
static int enum_opt(vd_opts *opts, const char *prefix, const char *name, const char *def,
                    int (*parse)(const char *), int *out)
{
    char key[64];
    const char *v;

    snprintf(key, sizeof(key), "%s%s", prefix, name);
    v = vd_opts_get(opts, key);
    if (!v)
        v = def;
    if ((*out = parse(v)) < 0)        /* QEMU names the option without its prefix */
        return vd_error(EINVAL, "Parameter '%s' does not accept value '%s'", name, v);
    return 0;
}

int luks_parse_create_opts(vd_opts *opts, const char *prefix, struct luks_create_params *p)
{
    int c, m, g, ih, h, r;
    char key[64];

    if ((r = enum_opt(opts, prefix, "cipher-alg", "aes-256", vd_cipher_alg_parse, &c)) < 0 ||
        (r = enum_opt(opts, prefix, "cipher-mode", "xts", vd_cipher_mode_parse, &m)) < 0 ||
        (r = enum_opt(opts, prefix, "ivgen-alg", "plain64", vd_ivgen_parse, &g)) < 0 ||
        (r = enum_opt(opts, prefix, "ivgen-hash-alg", "sha256", vd_hash_parse, &ih)) < 0 ||
        (r = enum_opt(opts, prefix, "hash-alg", "sha256", vd_hash_parse, &h)) < 0)
        return r;
    snprintf(key, sizeof(key), "%siter-time", prefix);
    if ((r = vd_opts_get_u64(opts, key, 2000, &p->iter_time)) < 0)
        return r;
    p->a.bc = (struct vd_blockcrypt_params){ c, m, g, c, ih };
    p->a.hash = h;
    p->a.has_ivhash = g == VD_IVGEN_ESSIV;
    return 0;
}

/* The checks QEMU makes of the algorithms of a new image. */
static int check_create_algs(struct luks_create_params *p)
{
    struct vd_cipher *c;
    uint8_t key[VD_CIPHER_MAX_KEY] = { 0 };
    size_t kl = vd_cipher_key_len(p->a.bc.cipher) * (p->a.bc.mode == VD_MODE_XTS ? 2 : 1);
    int r;

    if (p->a.bc.mode == VD_MODE_XTS && vd_cipher_block_len(p->a.bc.cipher) != 16)
        return vd_error(ENOTSUP, "Unsupported cipher mode xts");
    if (p->a.bc.ivgen == VD_IVGEN_ESSIV &&
        (r = essiv_cipher(p->a.bc.cipher, p->a.bc.ivgen_hash, &p->a.bc.ivgen_cipher)) < 0)
        return r;
    for (size_t i = 0; i < kl; i++)
        key[i] = (uint8_t)(i + 1);          /* xts wants two different halves */
    if ((r = vd_cipher_new(&c, p->a.bc.cipher, p->a.bc.mode, key, kl)) < 0)
        return r;
    vd_cipher_free(c);
    return 0;
}

int luks_check_create(struct luks_create_params *p)
{
    return check_create_algs(p);
}

/* A random version 4 UUID, as text. */
static int new_uuid(char *out)
{
    uint8_t u[16];
    int r = vd_random(u, sizeof(u));

    if (r < 0)
        return r;
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
             u[13], u[14], u[15]);
    return 0;
}

uint64_t luks_payload_bytes(const struct luks_create_params *p)
{
    uint32_t kb = (uint32_t)(vd_cipher_key_len(p->a.bc.cipher) *
                             (p->a.bc.mode == VD_MODE_XTS ? 2 : 1));
    return ((uint64_t)LUKS_HEADER_SECTORS + LUKS_SLOTS * (uint64_t)luks_split_sectors(kb)) *
           LUKS_SECTOR;
}

int luks_new_header(struct luks_header *h, struct luks_create_params *cp, uint8_t *mk)
{
    struct luks_create_params p;
    const struct vd_blockcrypt_params *b = &p.a.bc;
    uint32_t split;
    int r;

    if ((r = check_create_algs(cp)) < 0)
        return r;
    p = *cp;
    memset(h, 0, sizeof(*h));
    h->key_bytes = (uint32_t)(vd_cipher_key_len(b->cipher) * (b->mode == VD_MODE_XTS ? 2 : 1));
    snprintf(h->cipher_name, sizeof(h->cipher_name), "%s", vd_cipher_family(b->cipher));
    if (b->ivgen == VD_IVGEN_ESSIV)
        snprintf(h->cipher_mode, sizeof(h->cipher_mode), "%s-%s:%s", vd_cipher_mode_name(b->mode),
                 vd_ivgen_name(b->ivgen), vd_hash_name(b->ivgen_hash));
    else
        snprintf(h->cipher_mode, sizeof(h->cipher_mode), "%s-%s", vd_cipher_mode_name(b->mode),
                 vd_ivgen_name(b->ivgen));
    snprintf(h->hash_spec, sizeof(h->hash_spec), "%s", vd_hash_name(p.a.hash));
    split = luks_split_sectors(h->key_bytes);
    for (int i = 0; i < LUKS_SLOTS; i++) {
        h->slots[i].active = LUKS_SLOT_DISABLED;
        h->slots[i].stripes = LUKS_STRIPES;
        h->slots[i].key_offset = LUKS_HEADER_SECTORS + (uint32_t)i * split;
    }
    h->payload = LUKS_HEADER_SECTORS + LUKS_SLOTS * split;
    if ((r = new_uuid(h->uuid)) < 0 || (r = vd_random(mk, h->key_bytes)) < 0 ||
        (r = vd_random(h->mk_salt, LUKS_SALT_LEN)) < 0 ||
        (r = count_iters(p.a.hash, p.iter_time, LUKS_DIGEST_LEN, 8, &h->mk_iters)) < 0)
        return r;
    return vd_pbkdf2(p.a.hash, mk, h->key_bytes, h->mk_salt, LUKS_SALT_LEN, h->mk_iters,
                     h->mk_digest, LUKS_DIGEST_LEN);
}

/* One slot of the info: state, iterations and stripes when active, and
 * where its key material is. */
static vd_json *slot_info(const struct luks_slot *s)
{
    vd_json *o = vd_json_new_object();
    bool on = s->active == LUKS_SLOT_ENABLED;

    if (!o)
        return NULL;
    vd_json_set_bool(o, "active", on);
    if (on)
        vd_json_set_uint(o, "iters", s->iters);
    vd_json_set_uint(o, "key-offset", (uint64_t)s->key_offset * LUKS_SECTOR);
    if (on)
        vd_json_set_uint(o, "stripes", s->stripes);
    return o;
}

void luks_info(const struct luks_header *h, const struct luks_algs *a, struct vd_json *d,
               const char *fmt)
{
    vd_json *slots = vd_json_new_array();

    vd_json_set_str(d, "ivgen-alg", vd_ivgen_name(a->bc.ivgen));
    vd_json_set_str(d, "hash-alg", vd_hash_name(a->hash));
    vd_json_set_str(d, "cipher-alg", vd_cipher_alg_name(a->bc.cipher));
    vd_json_set_str(d, "uuid", h->uuid);
    /* QEMU's QDict order: ivgen-hash-alg, when there, before format */
    if (a->has_ivhash)
        vd_json_set_str(d, "ivgen-hash-alg", vd_hash_name(a->bc.ivgen_hash));
    if (fmt)
        vd_json_set_str(d, "format", fmt);
    vd_json_set_str(d, "cipher-mode", vd_cipher_mode_name(a->bc.mode));
    for (int i = 0; slots && i < LUKS_SLOTS; i++) {
        vd_json *s = slot_info(&h->slots[i]);
        if (s)
            vd_json_append(slots, s);
    }
    if (slots)
        vd_json_set(d, "slots", slots);
    vd_json_set_uint(d, "payload-offset", (uint64_t)h->payload * LUKS_SECTOR);
    vd_json_set_uint(d, "master-key-iters", h->mk_iters);
}
