/* SPDX-License-Identifier: BSD-3-Clause */
/* --object secret: the value comes from data= or file=, is base64 when
 * format=base64, and is then encrypted (AES-256-CBC, PKCS#7 padding)
 * when keyid= names another secret holding the 32-byte key, with iv= the
 * base64 IV, as QEMU's secret objects.  Every intermediate buffer is
 * wiped; messages never quote the value. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/crypto-lib.h"
#include "vdisk/object.h"
#include "vdisk/vdisk.h"

#define SECRET_FILE_MAX (1u << 20)
#define SECRET_DEPTH_MAX 8

/* A byte buffer (NUL-terminated beyond len). */
struct sbuf {
    uint8_t *p;
    size_t len;
};

static void sbuf_free(struct sbuf *b)
{
    vd_secret_free(b->p, b->len);
    b->p = NULL;
    b->len = 0;
}

/* Copy len bytes into a new NUL-terminated buffer. */
static int sbuf_set(struct sbuf *b, const void *p, size_t len)
{
    if (!(b->p = malloc(len + 1)))
        return vd_error(ENOMEM, "out of memory");
    memcpy(b->p, p, len);
    b->p[len] = 0;
    b->len = len;
    return 0;
}

/* Read a whole (small) file. */
static int read_file(const char *path, struct sbuf *b)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;
    uint8_t tmp[4096];
    ssize_t k;

    if (fd < 0)
        return vd_error(errno, "Unable to read %s: Failed to open file \u201c%s\u201d: %s",
                        path, path, strerror(errno));
    b->p = NULL;
    b->len = 0;
    while ((k = read(fd, tmp, sizeof(tmp))) != 0 && r >= 0) {
        uint8_t *np;
        if (k < 0) {
            if (errno != EINTR)
                r = vd_error(errno, "Unable to read %s: %s", path, strerror(errno));
            continue;
        }
        if (b->len + (size_t)k > SECRET_FILE_MAX || !(np = malloc(b->len + (size_t)k + 1))) {
            r = vd_error(EFBIG, "Unable to read %s: file too large", path);
            continue;
        }
        if (b->p)
            memcpy(np, b->p, b->len);
        memcpy(np + b->len, tmp, (size_t)k);
        vd_secret_free(b->p, b->len);
        b->p = np;
        b->len += (size_t)k;
        b->p[b->len] = 0;
    }
    vd_wipe(tmp, sizeof(tmp));
    close(fd);
    if (r >= 0 && !b->p)
        r = sbuf_set(b, "", 0);
    if (r < 0)
        sbuf_free(b);
    return r;
}

/* Replace b by its base64 decoding. */
static int base64_decode(struct sbuf *b)
{
    const struct vd_crypto_lib *l = vd_crypto_lib();
    uint8_t *out;
    size_t len;
    int r;

    if (!l)
        return -ELIBACC;
    if (memchr(b->p, 0, b->len) || l->base64_decode(b->p, b->len, &out, &len) < 0)
        return vd_error(EINVAL, "Base64 data contains invalid characters");
    sbuf_free(b);
    r = sbuf_set(b, out, len);
    vd_wipe(out, len);
    free(out);
    return r;
}

static int secret_load(const char *id, struct sbuf *b, int depth);

/* Decrypt b (AES-256-CBC ciphertext) with the key of secret keyid and the
 * base64 IV iv_b64. */
static int decrypt(struct sbuf *b, const char *keyid, const char *iv_b64, int depth)
{
    struct sbuf key = { 0 }, iv = { 0 };
    struct vd_cipher *c = NULL;
    int r;
    uint8_t pad;

    if ((r = secret_load(keyid, &key, depth + 1)) < 0)
        return r;
    if (key.len != 32)
        r = vd_error(EINVAL, "Key should be 32 bytes in length");
    else if (!iv_b64)
        r = vd_error(EINVAL, "IV is required to decrypt secret");
    else if ((r = sbuf_set(&iv, iv_b64, strlen(iv_b64))) >= 0 && (r = base64_decode(&iv)) >= 0 &&
             iv.len != 16)
        r = vd_error(EINVAL, "IV should be 16 bytes in length not %zu", iv.len);
    if (r >= 0 && (r = vd_cipher_new(&c, VD_CIPHER_AES_256, VD_MODE_CBC, key.p, 32)) >= 0)
        r = b->len ? vd_cipher_decrypt(c, iv.p, 16, b->p, b->len)
                   : vd_error(EINVAL, "Incorrect number of padding bytes (0) found on "
                              "decrypted data");
    if (r >= 0) {
        pad = b->p[b->len - 1];
        if (pad > 16 || pad > b->len)
            r = vd_error(EINVAL, "Incorrect number of padding bytes (%d) found on decrypted "
                         "data", pad);
        else
            b->len -= pad;
        b->p[b->len] = 0;
    }
    vd_cipher_free(c);
    sbuf_free(&key);
    sbuf_free(&iv);
    return r;
}

/* The raw value of object o (an opts dict of type secret). */
static int secret_value(const vd_opts *o, struct sbuf *b, int depth)
{
    const char *data = vd_opts_get(o, "data"), *file = vd_opts_get(o, "file");
    const char *fmt = vd_opts_get(o, "format"), *keyid = vd_opts_get(o, "keyid");
    int r;

    if (fmt && strcmp(fmt, "raw") && strcmp(fmt, "base64"))
        return vd_error(EINVAL, "Parameter 'format' does not accept value '%s'", fmt);
    if (data && file)
        return vd_error(EINVAL, "'file' and 'data' are mutually exclusive");
    if (!data && !file)
        return vd_error(EINVAL, "Either 'file' or 'data' must be provided");
    r = data ? sbuf_set(b, data, strlen(data)) : read_file(file, b);
    if (r < 0)
        return r;
    if (fmt && !strcmp(fmt, "base64"))
        r = base64_decode(b);
    if (r >= 0 && keyid)
        r = decrypt(b, keyid, vd_opts_get(o, "iv"), depth);
    if (r < 0)
        sbuf_free(b);
    return r;
}

/* Look up and load secret id. */
static int secret_load(const char *id, struct sbuf *b, int depth)
{
    const vd_opts *o = vd_object_find(id);
    const char *type = o ? vd_opts_get(o, "qom-type") : NULL;

    if (!o || !type || strcmp(type, "secret"))
        return vd_error(ENOENT, "No secret with id '%s'", id);
    if (depth > SECRET_DEPTH_MAX)
        return vd_error(ELOOP, "Secret '%s' nests keyid too deep", id);
    return secret_value(o, b, depth);
}

int vd_secret_get(const char *id, uint8_t **data, size_t *len)
{
    struct sbuf b = { 0 };
    int r = secret_load(id, &b, 0);

    if (r < 0)
        return r;
    *data = b.p;
    *len = b.len;
    return 0;
}

void vd_secret_free(uint8_t *data, size_t len)
{
    if (!data)
        return;
    vd_wipe(data, len + 1);
    free(data);
}

int vd_secret_get_text(const char *id, char **out)
{
    uint8_t *data;
    size_t len;
    int r = vd_secret_get(id, &data, &len);

    *out = NULL;
    if (r < 0)
        return r;
    if (memchr(data, 0, len)) {
        vd_secret_free(data, len);
        return vd_error(EINVAL, "Data from secret %s is not valid UTF-8", id);
    }
    *out = (char *)data;
    return 0;
}

void vd_secret_free_text(char *s)
{
    if (s)
        vd_secret_free((uint8_t *)s, strlen(s));
}

/* Check that the secret object o loads (called when it is added, where
 * QEMU reports a bad secret). */
int vd_secret_check(const vd_opts *o)
{
    struct sbuf b = { 0 };
    int r = secret_value(o, &b, 0);

    sbuf_free(&b);
    return r;
}
