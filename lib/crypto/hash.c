/* SPDX-License-Identifier: BSD-3-Clause */
/* Hashes and PBKDF2 (in the module vdisk-crypto.so: hash-lib.c), the
 * LUKS anti-forensic splitter (LUKS On-Disk Format Specification 1.2.3,
 * AFsplit/AFmerge and its diffusion function), random bytes and wiping. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "crypto/crypto-lib.h"
#include "util/checked.h"
#include "vdisk/vdisk.h"

struct hash_desc {
    const char *name;
    size_t len;
};

static const struct hash_desc hashes[VD_HASH__MAX] = {
    [VD_HASH_MD5] = { "md5", 16 },
    [VD_HASH_SHA1] = { "sha1", 20 },
    [VD_HASH_SHA224] = { "sha224", 28 },
    [VD_HASH_SHA256] = { "sha256", 32 },
    [VD_HASH_SHA384] = { "sha384", 48 },
    [VD_HASH_SHA512] = { "sha512", 64 },
    [VD_HASH_RIPEMD160] = { "ripemd160", 20 },
};

int vd_hash_parse(const char *name)
{
    for (int i = 0; i < VD_HASH__MAX; i++)
        if (!strcmp(hashes[i].name, name))
            return i;
    return -1;
}

const char *vd_hash_name(enum vd_hash_alg h) { return hashes[h].name; }
size_t vd_hash_len(enum vd_hash_alg h) { return hashes[h].len; }

/* See crypto.h (in the module vdisk-crypto.so: hash-lib.c). */
int vd_hash(enum vd_hash_alg h, const void *data, size_t len, uint8_t *out)
{
    const struct vd_crypto_lib *l = vd_crypto_lib();

    return l ? l->hash(h, data, len, out) : -ELIBACC;
}

/* See crypto.h (in the module vdisk-crypto.so: hash-lib.c). */
int vd_pbkdf2(enum vd_hash_alg h, const uint8_t *pass, size_t pass_len, const uint8_t *salt,
              size_t salt_len, uint64_t iters, uint8_t *out, size_t out_len)
{
    const struct vd_crypto_lib *l = vd_crypto_lib();

    return l ? l->pbkdf2(h, pass, pass_len, salt, salt_len, iters, out, out_len) : -ELIBACC;
}

/* CPU time of this thread, in nanoseconds. */
static int64_t thread_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Iterations per second, deriving one hash length of output: run growing
 * counts until one takes 50 ms of CPU time (CPU time, so that a loaded
 * machine does not shrink the count). */
static int64_t measure_rate(enum vd_hash_alg h)
{
    static const uint8_t pass[] = "passphrase", salt[32] = { 0 };
    uint8_t out[VD_HASH_MAX_LEN];
    uint64_t iters = 1 << 10;

    for (;;) {
        int64_t t0 = thread_ns(), dt;
        int r = vd_pbkdf2(h, pass, sizeof(pass) - 1, salt, sizeof(salt), iters, out,
                          hashes[h].len);
        if (r < 0)
            return r;
        dt = thread_ns() - t0;
        if (dt >= 50000000 || iters >= (1u << 30))
            return (int64_t)(iters * 1000000000ull / (uint64_t)(dt > 0 ? dt : 1));
        iters *= dt > 1000000 ? 2 : 16;
    }
}

/* The rate, measured once per hash and process. */
int64_t vd_pbkdf2_rate(enum vd_hash_alg h)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static int64_t rates[VD_HASH__MAX];
    int64_t r;

    pthread_mutex_lock(&lock);
    if (!rates[h])
        rates[h] = measure_rate(h);
    r = rates[h];
    if (r < 0)
        rates[h] = 0;
    pthread_mutex_unlock(&lock);
    return r;
}

/* The diffusion function of the splitter: each hash-sized piece i of d
 * becomes H(be32(i) || piece), the last (short) piece cut to its length. */
static int diffuse(enum vd_hash_alg h, uint8_t *d, size_t len)
{
    size_t hl = hashes[h].len;
    uint8_t in[4 + VD_HASH_MAX_LEN], dig[VD_HASH_MAX_LEN];
    int r = 0;

    for (size_t i = 0; i * hl < len && r >= 0; i++) {
        size_t l = VD_MIN(hl, len - i * hl);
        in[0] = (uint8_t)(i >> 24); in[1] = (uint8_t)(i >> 16);
        in[2] = (uint8_t)(i >> 8); in[3] = (uint8_t)i;
        memcpy(in + 4, d + i * hl, l);
        if ((r = vd_hash(h, in, 4 + l, dig)) >= 0)
            memcpy(d + i * hl, dig, l);
    }
    vd_wipe(in, sizeof(in));
    vd_wipe(dig, sizeof(dig));
    return r;
}

/* d = diffuse(d ^ s_i) over the first stripes - 1 stripes of src. */
static int af_fold(enum vd_hash_alg h, size_t bl, uint32_t stripes, const uint8_t *src,
                   uint8_t *d)
{
    int r = 0;

    memset(d, 0, bl);
    for (uint32_t i = 0; i + 1 < stripes && r >= 0; i++) {
        for (size_t j = 0; j < bl; j++)
            d[j] ^= src[(size_t)i * bl + j];
        r = diffuse(h, d, bl);
    }
    return r;
}

/* Checks shared by split and merge. */
static int af_check(size_t bl, uint32_t stripes)
{
    size_t total;

    if (!stripes || !bl || MUL_OVERFLOW(bl, (size_t)stripes, &total))
        return vd_error(EINVAL, "Invalid anti-forensic split: %u stripes of %zu bytes",
                        stripes, bl);
    return 0;
}

int vd_af_split(enum vd_hash_alg h, size_t bl, uint32_t stripes, const uint8_t *in,
                uint8_t *out)
{
    uint8_t *d;
    int r;

    if ((r = af_check(bl, stripes)) < 0)
        return r;
    if (!(d = malloc(bl)))
        return vd_error(ENOMEM, "out of memory");
    if ((r = vd_random(out, (size_t)(stripes - 1) * bl)) >= 0 &&
        (r = af_fold(h, bl, stripes, out, d)) >= 0)
        for (size_t j = 0; j < bl; j++)
            out[(size_t)(stripes - 1) * bl + j] = d[j] ^ in[j];
    vd_wipe(d, bl);
    free(d);
    return r;
}

int vd_af_merge(enum vd_hash_alg h, size_t bl, uint32_t stripes, const uint8_t *in,
                uint8_t *out)
{
    int r;

    if ((r = af_check(bl, stripes)) < 0)
        return r;
    if ((r = af_fold(h, bl, stripes, in, out)) >= 0)
        for (size_t j = 0; j < bl; j++)
            out[j] ^= in[(size_t)(stripes - 1) * bl + j];
    return r;
}

int vd_random(void *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t k = getrandom((uint8_t *)buf + got, len - got, 0);
        if (k < 0 && errno != EINTR)
            return vd_error(errno, "Cannot get random bytes");
        got += k > 0 ? (size_t)k : 0;
    }
    return 0;
}

void vd_wipe(void *p, size_t len)
{
    if (p)
        explicit_bzero(p, len);
}
