/* SPDX-License-Identifier: BSD-3-Clause */
/* The luks format: a LUKS1 container (header.c) whose payload, after the
 * key material, holds the guest data encrypted sector by sector, as QEMU
 * 7.2's luks driver and cryptsetup read it.  The key-secret option names
 * the --object secret with the passphrase; info opens (VD_O_NO_IO) read
 * the header only.
 *
 * Invariants:
 *  1. The master key lives inside the block cipher (bc) and, for keyslot
 *     changes (amend), in mk; mk, the passphrase and derived keys are
 *     wiped after use and at close.
 *  2. Guest sector s is payload sector s, encrypted with IV number s.
 *  3. A write encrypts a private copy of the caller's data (the caller's
 *     buffer is never changed), at most max_transfer bytes at a time;
 *     concurrent requests encrypt on as many cores (lib/crypto). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "format/luks/luks.h"
#include "util/checked.h"
#include "util/json.h"

#define LUKS_MAX_TRANSFER (1u << 20)

struct luks_state {
    struct luks_header h;
    struct luks_algs a;
    struct vd_blockcrypt *bc;      /* NULL when opened without I/O */
    uint8_t mk[VD_CIPHER_MAX_KEY]; /* the master key (amend) */
    uint64_t payload;              /* bytes */
};

/* The header magic and version 1, as QEMU probes. */
static int luks_probe(const uint8_t *buf, size_t len, const char *filename)
{
    if (len >= 8 && !memcmp(buf, LUKS_MAGIC, LUKS_MAGIC_LEN) && buf[6] == 0 && buf[7] == 1)
        return 100;
    return 0;
}

/* Read from the file, zeroes past its end. */
static int read_padded(vd_node *f, uint64_t off, uint64_t len, void *buf)
{
    int64_t end = vd_getlength(f);
    uint64_t l;

    if (end < 0)
        return (int)end;
    l = off >= (uint64_t)end ? 0 : VD_MIN(len, (uint64_t)end - off);
    if (l < len)
        memset((char *)buf + l, 0, len - l);
    return l ? vd_pread(f, off, l, buf, 0) : 0;
}

/* Key material reader for luks_unlock: it must lie inside the file. */
static int read_material(void *opaque, uint64_t off, uint64_t len, void *buf)
{
    vd_node *f = opaque;
    int64_t end = vd_getlength(f);

    if (end < 0)
        return (int)end;
    if (off > (uint64_t)end || len > (uint64_t)end - off)
        return vd_error(EINVAL, "LUKS key material at %" PRIu64 " lies beyond the end of the "
                        "file", off);
    return vd_pread(f, off, len, buf, 0);
}

/* Writer for luks_store_slot. */
static int write_material(void *opaque, uint64_t off, uint64_t len, const void *buf)
{
    return vd_pwrite(opaque, off, len, buf, 0);
}

/* Open the cipher with the passphrase of secret id. */
static int unlock(vd_node *n, const char *id)
{
    struct luks_state *s = n->state;
    uint8_t mk[VD_CIPHER_MAX_KEY], *pass = NULL;
    size_t pass_len = 0;
    int r;

    if (!id)
        return vd_error(EINVAL, "Parameter 'key-secret' is required for cipher");
    if ((r = vd_secret_get(id, &pass, &pass_len)) < 0)
        return r;
    r = luks_unlock(&s->h, &s->a, pass, pass_len, mk, read_material, n->file);
    vd_secret_free(pass, pass_len);
    if (r >= 0)
        r = vd_blockcrypt_new(&s->bc, &s->a.bc, mk, s->h.key_bytes);
    if (r >= 0 && !n->read_only)
        memcpy(s->mk, mk, sizeof(mk));
    vd_wipe(mk, sizeof(mk));
    return r;
}

static int luks_open(vd_node *n, vd_opts *opts, int flags)
{
    struct luks_state *s = n->state;
    uint8_t buf[LUKS_HDR_LEN];
    int r;

    if ((r = read_padded(n->file, 0, sizeof(buf), buf)) < 0)
        return r;
    if ((r = luks_parse(buf, &s->h, &s->a)) < 0)
        return r;
    s->payload = (uint64_t)s->h.payload * LUKS_SECTOR;
    n->request_alignment = LUKS_SECTOR;
    n->max_transfer = LUKS_MAX_TRANSFER;
    if (flags & VD_O_NO_IO)
        return 0;
    return unlock(n, vd_opts_get(opts, "key-secret"));
}

static void luks_close(vd_node *n)
{
    struct luks_state *s = n->state;

    vd_blockcrypt_free(s->bc);
    vd_wipe(s, sizeof(*s));
}

/* Refuse data I/O on a node opened for its metadata only. */
static int need_key(vd_node *n)
{
    struct luks_state *s = n->state;

    return s->bc ? 0 : vd_error(EACCES, "luks: image opened without its key");
}

static int luks_pread(vd_node *n, uint64_t off, uint64_t len, void *buf, int flags)
{
    struct luks_state *s = n->state;
    int r;

    if ((r = need_key(n)) < 0 || (r = read_padded(n->file, s->payload + off, len, buf)) < 0)
        return r;
    return vd_blockcrypt_decrypt(s->bc, off / LUKS_SECTOR, buf, len);
}

static int luks_pwrite(vd_node *n, uint64_t off, uint64_t len, const void *buf, int flags)
{
    struct luks_state *s = n->state;
    uint8_t *tmp;
    int r;

    if ((r = need_key(n)) < 0)
        return r;
    if (!(tmp = malloc(len)))
        return vd_error(ENOMEM, "out of memory");
    memcpy(tmp, buf, len);
    if ((r = vd_blockcrypt_encrypt(s->bc, off / LUKS_SECTOR, tmp, len)) >= 0)
        r = vd_pwrite(n->file, s->payload + off, len, tmp, flags);
    free(tmp);
    return r;
}

static int luks_flush(vd_node *n)
{
    return vd_flush(n->file);
}

/* Every byte is data the file holds somewhere QEMU does not say. */
static int luks_block_status(vd_node *n, uint64_t off, uint64_t len, uint64_t *pnum,
                             uint64_t *map, vd_node **file)
{
    *pnum = len;
    return VD_BS_DATA;
}

/* The file past the payload offset (an error when the file is shorter). */
static int64_t luks_getlength(vd_node *n)
{
    struct luks_state *s = n->state;
    int64_t l = vd_getlength(n->file);

    if (l < 0)
        return l;
    if ((uint64_t)l < s->payload)
        return vd_error(EIO, "LUKS payload offset %" PRIu64 " lies beyond the end of the file",
                        s->payload);
    return l - (int64_t)s->payload;
}

static int luks_truncate(vd_node *n, uint64_t size, bool exact, int prealloc)
{
    struct luks_state *s = n->state;
    uint64_t fsize;

    if (ADD_OVERFLOW(size, s->payload, &fsize) || fsize > INT64_MAX)
        return vd_error(EFBIG, "The requested file size is too large");
    return vd_truncate(n->file, fsize, exact, prealloc);
}

static bool luks_is_encrypted(vd_node *n)
{
    return true;
}

static int luks_drv_info(vd_node *n, struct vd_json *d)
{
    struct luks_state *s = n->state;

    luks_info(&s->h, &s->a, d, NULL);
    return 0;
}

/* ---- amend: key slots ---- */

static int luks_amend(vd_node *n, vd_opts *opts, bool force,
                      void (*progress)(void *opaque, uint64_t done, uint64_t total),
                      void *opaque)
{
    struct luks_state *s = n->state;
    struct luks_container c = { &s->h, &s->a, s->mk, n->file, 0, UINT64_MAX };
    int r;

    if ((r = need_key(n)) < 0)
        return r;
    return luks_amend_keyslots(&c, opts, force);
}

static const struct vd_opt_desc luks_amend_opts[] = {
    { "state", VD_OPT_STRING, "Select new state of affected keyslots (active/inactive)", NULL },
    { "keyslot", VD_OPT_NUMBER, "Select a single keyslot to modify explicitly", NULL },
    { "old-secret", VD_OPT_STRING, "Select all keyslots that match this password", NULL },
    { "new-secret", VD_OPT_STRING, "New secret to set in the matching keyslots. Empty string "
      "to erase", NULL },
    { "iter-time", VD_OPT_NUMBER, "Time to spend in PBKDF in milliseconds", NULL },
    { NULL, 0, NULL, NULL },
};

/* ---- create ---- */

/* The file's own create options (nocow, extent_size_hint), size 0. */
static vd_opts *proto_opts(vd_opts *o)
{
    static const char *const own[] = {
        "size", "key-secret", "cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg",
        "hash-alg", "iter-time", "preallocation", NULL,
    };
    vd_opts *p = vd_opts_new();

    for (size_t i = 0; p && i < vd_opts_count(o); i++) {
        const char *k = vd_opts_key(o, i);
        bool mine = false;
        for (const char *const *m = own; *m; m++)
            mine |= !strcmp(*m, k);
        if (!mine && vd_opts_set(p, k, vd_opts_value(o, i)) < 0) {
            vd_opts_free(p);
            return NULL;
        }
    }
    if (p && vd_opts_set(p, "size", "0") < 0) {
        vd_opts_free(p);
        return NULL;
    }
    return p;
}

/* The preallocation option (off, falloc, full; metadata is off, as in
 * QEMU: the payload has no metadata). */
static int prealloc_opt(vd_opts *opts, int *out)
{
    const char *v = vd_opts_get(opts, "preallocation");

    *out = v ? vd_prealloc_parse(v) : VD_PREALLOC_OFF;
    if (*out < 0)
        return vd_error(EINVAL, "Parameter 'preallocation' does not accept value '%s'", v);
    if (*out == VD_PREALLOC_METADATA)
        *out = VD_PREALLOC_OFF;
    return 0;
}

/* Header, key slot 0 and the payload in the (empty) file f. */
static int write_image(vd_node *f, struct luks_create_params *p, const uint8_t *pass,
                       size_t pass_len, uint64_t size, int prealloc)
{
    struct luks_header h;
    uint8_t mk[VD_CIPHER_MAX_KEY], buf[LUKS_HDR_LEN];
    uint64_t end;
    int r;

    if ((r = luks_new_header(&h, p, mk)) < 0)
        goto out;
    if (ADD_OVERFLOW(size, (uint64_t)h.payload * LUKS_SECTOR, &end) || end > INT64_MAX) {
        r = vd_error(EFBIG, "The requested file size is too large");
        goto out;
    }
    luks_encode(&h, buf);
    if ((r = vd_truncate(f, (uint64_t)h.payload * LUKS_SECTOR, false, VD_PREALLOC_OFF)) < 0 ||
        (r = vd_pwrite(f, 0, sizeof(buf), buf, 0)) < 0 ||
        (r = luks_store_slot(&h, &p->a, 0, pass, pass_len, mk, p->iter_time, write_material,
                             f)) < 0)
        goto out;
    luks_encode(&h, buf);
    if ((r = vd_pwrite(f, 0, sizeof(buf), buf, 0)) < 0 ||
        (r = vd_truncate(f, end, false, prealloc)) < 0)
        goto out;
    r = vd_flush(f);
out:
    vd_wipe(mk, sizeof(mk));
    vd_wipe(&h, sizeof(h));
    return r;
}

static int luks_create(const char *filename, vd_opts *opts)
{
    struct luks_create_params p;
    const char *id = vd_opts_get(opts, "key-secret");
    uint8_t *pass = NULL;
    size_t pass_len = 0;
    uint64_t size;
    vd_node *f = NULL;
    vd_opts *po;
    int prealloc, r;

    if ((r = luks_parse_create_opts(opts, "", &p)) < 0 || (r = prealloc_opt(opts, &prealloc)) < 0 ||
        (r = vd_opts_get_size(opts, "size", 0, &size)) < 0)
        return r;
    if (!(po = proto_opts(opts)))
        return vd_error(ENOMEM, "out of memory");
    r = vd_protocol_create(filename, po);
    vd_opts_free(po);
    if (r < 0)
        return r;
    if (!id)
        return vd_error(EINVAL, "Parameter 'key-secret' is required for cipher");
    if ((r = vd_secret_get(id, &pass, &pass_len)) < 0)
        return r;
    if ((r = vd_open(&f, filename, "raw", NULL, VD_O_RDWR | VD_O_CREATE)) >= 0) {
        r = write_image(f, &p, pass, pass_len, size, prealloc);
        vd_close(f);
    }
    vd_secret_free(pass, pass_len);
    return r;
}

/* Header and key material, then the guest data. */
static int luks_measure(vd_opts *opts, vd_node *src, uint64_t size_in,
                        struct vd_measure_info *out)
{
    struct luks_create_params p;
    const char *id = opts ? vd_opts_get(opts, "key-secret") : NULL;
    uint8_t *pass;
    size_t pass_len;
    uint64_t size = size_in, total;
    int r;

    if ((r = luks_parse_create_opts(opts, "", &p)) < 0)
        return r;
    if (!id)
        return vd_error(EINVAL, "Parameter 'key-secret' is required for cipher");
    if ((r = vd_secret_get(id, &pass, &pass_len)) < 0)
        return r;
    vd_secret_free(pass, pass_len);
    if (src) {
        int64_t l = vd_getlength(src);
        if (l < 0)
            return (int)l;
        size = (uint64_t)l;
    }
    if (!round_up_checked(size, LUKS_SECTOR, &size) ||
        ADD_OVERFLOW(size, luks_payload_bytes(&p), &total))
        return vd_error(EINVAL, "Image size is too large");
    memset(out, 0, sizeof(*out));
    out->required = out->fully_allocated = total;
    return 0;
}

static const struct vd_opt_desc luks_open_opts[] = {
    { "key-secret", VD_OPT_STRING, "ID of the secret that provides the keyslot passphrase", NULL },
    { NULL, 0, NULL, NULL },
};

/* QEMU's order ("Formatting" line); -o help sorts them with the file's
 * options (preallocation comes from there). */
static const struct vd_opt_desc luks_create_opts[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "key-secret", VD_OPT_STRING, "ID of the secret that provides the keyslot passphrase", NULL },
    { "cipher-alg", VD_OPT_STRING, "Name of encryption cipher algorithm", NULL },
    { "cipher-mode", VD_OPT_STRING, "Name of encryption cipher mode", NULL },
    { "ivgen-alg", VD_OPT_STRING, "Name of IV generator algorithm", NULL },
    { "ivgen-hash-alg", VD_OPT_STRING, "Name of IV generator hash algorithm", NULL },
    { "hash-alg", VD_OPT_STRING, "Name of encryption hash algorithm", NULL },
    { "iter-time", VD_OPT_NUMBER, "Time to spend in PBKDF in milliseconds", NULL },
    { NULL, 0, NULL, NULL },
};

static const struct vd_driver luks_driver = {
    .struct_size = sizeof(struct vd_driver),
    .name = "luks",
    .kind = VD_DRV_FORMAT,
    .state_size = sizeof(struct luks_state),
    .open_opts = luks_open_opts,
    .create_opts = luks_create_opts,
    .probe = luks_probe,
    .open = luks_open,
    .close = luks_close,
    .pread = luks_pread,
    .pwrite = luks_pwrite,
    .flush = luks_flush,
    .block_status = luks_block_status,
    .getlength = luks_getlength,
    .truncate = luks_truncate,
    .create = luks_create,
    .measure = luks_measure,
    .info = luks_drv_info,
    .is_encrypted = luks_is_encrypted,
    .amend_opts = luks_amend_opts,
    .amend = luks_amend,
};
VD_DRIVER_REGISTER(luks_driver)
