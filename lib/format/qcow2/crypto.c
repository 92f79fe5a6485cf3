/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 encryption, read side: encrypt.format=luks (a LUKS1 header and
 * key material in clusters named by the crypto header extension; each
 * data cluster's sectors encrypted with IVs from their host offset) and
 * the legacy encrypt.format=aes (AES-128-CBC keyed with the passphrase
 * cut or zero-padded to 16 bytes, plain64 IVs from the guest offset), as
 * QEMU 7.2 reads them.  Compressed clusters are stored in clear, as QEMU
 * writes them.  Writing encrypted images is refused at open. */
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
    if (!n->read_only)
        return vd_error(ENOTSUP, "qcow2: writing encrypted images is not supported yet");
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
