/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 encryption: encrypt.format=luks (a LUKS1 header and key material
 * in clusters named by the crypto header extension; each data cluster's
 * sectors encrypted with IVs from their host offset) and the legacy
 * encrypt.format=aes (AES-128-CBC keyed with the passphrase cut or
 * zero-padded to 16 bytes, plain64 IVs from the guest offset), as QEMU
 * 7.2 reads, writes and creates them.  Compressed clusters are stored in
 * clear, as QEMU writes them.
 *
 * Invariants: guest data reaches the image file only encrypted (writers
 * encrypt a private copy, never the caller's buffer); the LUKS header and
 * its key material are written before the image header names them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/luks/luks.h"
#include "format/qcow2/qcow2.h"
#include "util/checked.h"
#include "util/json.h"

#define QC_CRYPT_AES  1u
#define QC_CRYPT_LUKS 2u

/* Reader of the LUKS header's key material: inside the extension's range. */
static int read_hdr(void *opaque, uint64_t off, uint64_t len, void *buf)
{
    vd_node *n = opaque;
    struct qcow2_state *s = n->state;

    if (off > s->crypt_len || len > s->crypt_len - off)
        return vd_error(EINVAL, "qcow2: LUKS key material lies outside the encryption header");
    return qcow2_read_padded(n->file, s->crypt_off + off, len, buf);
}

/* Parse the LUKS header the crypto extension names. */
static int luks_header(vd_node *n)
{
    struct qcow2_state *s = n->state;
    uint8_t buf[LUKS_HDR_LEN];
    int r;

    if (!s->has_crypto_ext)
        return vd_error(EINVAL, "qcow2: LUKS encryption without a crypto header extension");
    if (s->crypt_len < LUKS_HDR_LEN || s->crypt_off > s->file_end ||
        s->crypt_len > s->file_end - s->crypt_off)
        return vd_error(EINVAL, "qcow2: crypto header at 0x%llx (%llu bytes) is out of the file",
                        (unsigned long long)s->crypt_off, (unsigned long long)s->crypt_len);
    if (!(s->luks_h = calloc(1, sizeof(*s->luks_h))) ||
        !(s->luks_a = calloc(1, sizeof(*s->luks_a))))
        return vd_error(ENOMEM, "out of memory");
    if ((r = qcow2_read_padded(n->file, s->crypt_off, sizeof(buf), buf)) < 0)
        return r;
    return luks_parse(buf, s->luks_h, s->luks_a);
}

/* The block cipher of a LUKS image, from the passphrase. */
static int luks_key(vd_node *n, const uint8_t *pass, size_t pass_len)
{
    struct qcow2_state *s = n->state;
    uint8_t mk[VD_CIPHER_MAX_KEY];
    int r = luks_unlock(s->luks_h, s->luks_a, pass, pass_len, mk, read_hdr, n);

    if (r >= 0)
        r = vd_blockcrypt_new(&s->crypt, &s->luks_a->bc, mk, s->luks_h->key_bytes);
    if (r >= 0 && !n->read_only) {         /* kept for keyslot changes */
        if (!(s->luks_mk = malloc(VD_CIPHER_MAX_KEY)))
            r = vd_error(ENOMEM, "out of memory");
        else
            memcpy(s->luks_mk, mk, VD_CIPHER_MAX_KEY);
    }
    vd_wipe(mk, sizeof(mk));
    return r;
}

/* The legacy AES cipher: the passphrase is the key. */
static int aes_key(vd_node *n, const uint8_t *pass, size_t pass_len)
{
    struct qcow2_state *s = n->state;
    struct vd_blockcrypt_params p = { VD_CIPHER_AES_128, VD_MODE_CBC, VD_IVGEN_PLAIN64,
                                      VD_CIPHER_AES_128, VD_HASH_SHA256 };
    uint8_t key[16] = { 0 };
    int r;

    memcpy(key, pass, VD_MIN(pass_len, sizeof(key)));
    r = vd_blockcrypt_new(&s->crypt, &p, key, sizeof(key));
    vd_wipe(key, sizeof(key));
    return r;
}

int qcow2_crypto_open(vd_node *n, vd_opts *opts, int flags)
{
    struct qcow2_state *s = n->state;
    const char *id = vd_opts_get(opts, "encrypt.key-secret");
    uint8_t *pass = NULL;
    size_t pass_len = 0;
    int r;

    if (!s->crypt_method)
        return 0;
    if (s->crypt_method > QC_CRYPT_LUKS)
        return vd_error(EINVAL, "Unsupported encryption method: %u", s->crypt_method);
    n->request_alignment = VD_MAX(n->request_alignment, 512u);
    if (s->crypt_method == QC_CRYPT_LUKS && (r = luks_header(n)) < 0)
        return r;
    if (flags & VD_O_NO_IO)
        return 0;
    if (!id)
        return vd_error(EINVAL, "Parameter 'encrypt.key-secret' is required for cipher");
    if ((r = vd_secret_get(id, &pass, &pass_len)) < 0)
        return r;
    r = s->crypt_method == QC_CRYPT_LUKS ? luks_key(n, pass, pass_len)
                                         : aes_key(n, pass, pass_len);
    vd_secret_free(pass, pass_len);
    return r;
}

void qcow2_crypto_close(vd_node *n)
{
    struct qcow2_state *s = n->state;

    vd_blockcrypt_free(s->crypt);
    if (s->luks_mk)
        vd_wipe(s->luks_mk, VD_CIPHER_MAX_KEY);
    free(s->luks_mk);
    free(s->luks_h);
    free(s->luks_a);
}

int qcow2_crypto_decrypt(vd_node *n, uint64_t guest, uint64_t host, void *buf, uint64_t len)
{
    struct qcow2_state *s = n->state;
    uint64_t at = s->crypt_method == QC_CRYPT_LUKS ? host : guest;

    if (!s->crypt)
        return vd_error(EACCES, "qcow2: image opened without its key");
    return vd_blockcrypt_decrypt(s->crypt, at / 512, buf, len);
}

int qcow2_crypto_amend(vd_node *n, vd_opts *o, bool force)
{
    struct qcow2_state *s = n->state;
    struct luks_container c = { s->luks_h, s->luks_a, s->luks_mk, n->file, s->crypt_off,
                                s->crypt_len };

    if (!s->luks_mk || !s->luks_h)
        return vd_error(EACCES, "qcow2: image opened without its key");
    return luks_amend_keyslots(&c, o, force);
}

int qcow2_crypto_encrypt(vd_node *n, uint64_t guest, uint64_t host, void *buf, uint64_t len)
{
    struct qcow2_state *s = n->state;
    uint64_t at = s->crypt_method == QC_CRYPT_LUKS ? host : guest;

    if (!s->crypt)
        return vd_error(EACCES, "qcow2: image opened without its key");
    return vd_blockcrypt_encrypt(s->crypt, at / 512, buf, len);
}

/* The "encrypt" object of qemu-img info. */
void qcow2_crypto_info(vd_node *n, struct vd_json *d)
{
    struct qcow2_state *s = n->state;
    vd_json *e;

    if (!s->crypt_method || !(e = vd_json_new_object()))
        return;
    if (s->crypt_method == QC_CRYPT_LUKS && s->luks_h) {
        luks_info(s->luks_h, s->luks_a, e, "luks");
    } else {
        vd_json_set_str(e, "format", "aes");
    }
    vd_json_set(d, "encrypt", e);
}

/* ---- creation ---- */

/* Options only the luks format takes. */
static const char *const luks_only[] = {
    "encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.ivgen-alg",
    "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time", NULL,
};

/* The format encrypt.format names, or 0 when absent (then no other
 * encrypt.* option may be given). */
static int format_method(vd_opts *o, const char *ef, uint32_t *method)
{
    *method = 0;
    if (!ef) {
        for (size_t i = 0; i < vd_opts_count(o); i++)
            if (!strncmp(vd_opts_key(o, i), "encrypt.", 8))
                return vd_error(EINVAL, "Parameter 'encrypt.format' is missing");
        return 0;
    }
    if (!strcmp(ef, "aes") || !strcmp(ef, "qcow"))
        *method = QC_CRYPT_AES;
    else if (!strcmp(ef, "luks"))
        *method = QC_CRYPT_LUKS;
    else
        return vd_error(EINVAL, "Parameter 'format' does not accept value '%s'", ef);
    for (int i = 0; *method == QC_CRYPT_AES && luks_only[i]; i++)
        if (vd_opts_get(o, luks_only[i]))
            return vd_error(EINVAL, "Parameter '%s' is unexpected", luks_only[i]);
    return 0;
}

/* encryption= (the legacy alias: on means aes, off nothing; any other
 * boolean spelling passes on as a format name, as in QEMU) and
 * encrypt.format=. */
static int create_method(vd_opts *o, uint32_t *method)
{
    const char *enc = vd_opts_get(o, "encryption"), *ef = vd_opts_get(o, "encrypt.format");
    bool on;
    int r;

    if ((r = vd_opts_get_bool(o, "encryption", false, &on)) < 0)
        return r;
    if (enc && strcmp(enc, "off")) {
        if (ef)
            return vd_error(EINVAL, "'encrypt.format' and its alias 'encryption' can't be "
                            "used at the same time");
        ef = !strcmp(enc, "on") ? "aes" : enc;
    }
    return format_method(o, ef, method);
}

/* The key secret must be given and exist. */
static int check_secret(vd_opts *o)
{
    const char *id = vd_opts_get(o, "encrypt.key-secret");
    uint8_t *pass = NULL;
    size_t len = 0;
    int r;

    if (!id)
        return vd_error(EINVAL, "Parameter 'encrypt.key-secret' is required for cipher");
    if ((r = vd_secret_get(id, &pass, &len)) < 0)
        return r;
    vd_secret_free(pass, len);
    return 0;
}

int qcow2_crypto_parse_create(vd_opts *o, struct qc_crypt_create *cc)
{
    struct luks_create_params p;
    int r;

    memset(cc, 0, sizeof(*cc));
    if ((r = create_method(o, &cc->method)) < 0 || !cc->method)
        return r;
    if (cc->method == QC_CRYPT_LUKS && (r = luks_parse_create_opts(o, "encrypt.", &p)) < 0)
        return r;
    if ((r = check_secret(o)) < 0 || cc->method != QC_CRYPT_LUKS)
        return r;
    if ((r = luks_check_create(&p)) < 0)
        return r;
    cc->payload = luks_payload_bytes(&p);
    return 0;
}

/* Writer of the new LUKS header's key material (inside its clusters). */
static int write_hdr(void *opaque, uint64_t off, uint64_t len, const void *buf)
{
    vd_node *n = opaque;
    struct qcow2_state *s = n->state;

    if (off > s->crypt_len || len > s->crypt_len - off)
        return vd_error(EINVAL, "qcow2: LUKS key material past the encryption header");
    return vd_pwrite(n->file, s->crypt_off + off, len, buf, 0);
}

/* A new LUKS header and key slot 0 in the clusters at crypt_off. */
static int write_luks(vd_node *n, struct luks_create_params *p, const uint8_t *pass,
                      size_t pass_len)
{
    struct luks_header h;
    uint8_t mk[VD_CIPHER_MAX_KEY], buf[LUKS_HDR_LEN];
    int r;

    if ((r = luks_new_header(&h, p, mk)) < 0)
        goto out;
    luks_encode(&h, buf);
    if ((r = write_hdr(n, 0, sizeof(buf), buf)) < 0 ||
        (r = luks_store_slot(&h, &p->a, 0, pass, pass_len, mk, p->iter_time, write_hdr, n)) < 0)
        goto out;
    luks_encode(&h, buf);
    if ((r = write_hdr(n, 0, sizeof(buf), buf)) >= 0)
        r = vd_flush(n->file);
out:
    vd_wipe(mk, sizeof(mk));
    vd_wipe(&h, sizeof(h));
    return r;
}

/* Allocate the clusters of the LUKS header (after everything else, as
 * QEMU), zero-filled.  Lock held. */
static int alloc_luks_area(vd_node *n, uint64_t payload)
{
    struct qcow2_state *s = n->state;
    uint64_t count = div_round_up(payload, s->cluster_size), off;
    int r;

    if ((r = qcow2_prepare_write(n)) < 0 || (r = qcow2_alloc_clusters(n, count, &off)) < 0 ||
        (r = qcow2_grow_file(n, n->file, off + count * s->cluster_size)) < 0 ||
        (r = qcow2_flush_caches(n)) < 0)
        return r;
    if ((r = vd_pwrite_zeroes(n->file, off, count * s->cluster_size, 0)) < 0)
        return r;
    s->crypt_off = off;
    s->crypt_len = payload;
    return 0;
}

/* The LUKS part of qcow2_crypto_setup. */
static int setup_luks(vd_node *n, vd_opts *o, const struct qc_crypt_create *cc)
{
    struct qcow2_state *s = n->state;
    struct luks_create_params p;
    uint8_t *pass = NULL;
    size_t pass_len = 0;
    int r;

    if ((r = luks_parse_create_opts(o, "encrypt.", &p)) < 0 ||
        (r = vd_secret_get(vd_opts_get(o, "encrypt.key-secret"), &pass, &pass_len)) < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    r = alloc_luks_area(n, cc->payload);
    pthread_mutex_unlock(&s->lock);
    if (r >= 0)
        r = write_luks(n, &p, pass, pass_len);
    vd_secret_free(pass, pass_len);
    s->has_crypto_ext = r >= 0;
    return r;
}

int qcow2_crypto_setup(vd_node *n, vd_opts *o, const struct qc_crypt_create *cc)
{
    struct qcow2_state *s = n->state;
    int r = 0;

    if (cc->method == QC_CRYPT_LUKS)
        r = setup_luks(n, o, cc);
    if (r < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    s->crypt_method = cc->method;
    vd_event(n->file, "crypt_header");
    r = qcow2_amend_write_header(n);
    pthread_mutex_unlock(&s->lock);
    return r;
}
