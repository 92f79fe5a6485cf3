/* SPDX-License-Identifier: BSD-3-Clause */
/* Known-answer tests of lib/crypto: NIST SP 800-38A (AES ECB, CBC, CTR),
 * IEEE 1619 (XTS-AES-128 vectors 1, 2 and 4), the NESSIE Serpent and the
 * Twofish paper's vectors, RFC 2144 (CAST5), FIPS 180 / RIPEMD-160 "abc"
 * digests, RFC 6070 and RFC 7914 PBKDF2, plus the IV generators and the
 * anti-forensic splitter against their definitions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "tap.h"
#include "vdisk/object.h"
#include "vdisk/vdisk.h"

/* Decode hex into out; returns the byte count. */
static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

/* Does buf hold the bytes of hex? */
static int same(const uint8_t *buf, const char *hex)
{
    uint8_t want[1024];
    size_t n = unhex(hex, want);
    return !memcmp(buf, want, n);
}

/* Encrypt pt with (alg, mode, key, iv), compare with ct, decrypt back. */
static void kat(const char *alg, const char *mode, const char *key, const char *iv,
                const char *pt, const char *ct)
{
    uint8_t k[64], v[16], buf[1024], orig[1024];
    size_t kl = unhex(key, k), vl = iv ? unhex(iv, v) : 0, n = unhex(pt, buf);
    struct vd_cipher *c = NULL;
    int a = vd_cipher_alg_parse(alg), m = vd_cipher_mode_parse(mode);

    memcpy(orig, buf, n);
    CHECK(a >= 0 && m >= 0);
    CHECK_EQ_INT(vd_cipher_new(&c, a, m, k, kl), 0);
    if (!c)
        return;
    CHECK_EQ_INT(vd_cipher_encrypt(c, iv ? v : NULL, vl, buf, n), 0);
    if (!same(buf, ct))
        fprintf(stderr, "kat %s-%s failed\n", alg, mode);
    CHECK(same(buf, ct));
    CHECK_EQ_INT(vd_cipher_decrypt(c, iv ? v : NULL, vl, buf, n), 0);
    CHECK(!memcmp(buf, orig, n));
    vd_cipher_free(c);
}

static void test_ciphers(void)
{
    const char *pt = "6bc1bee22e409f96e93d7e117393172a";
    kat("aes-128", "ecb", "2b7e151628aed2a6abf7158809cf4f3c", NULL, pt,
        "3ad77bb40d7a3660a89ecaf32466ef97");
    kat("aes-192", "ecb", "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b", NULL, pt,
        "bd334f1d6e45f25ff712a214571fa5cc");
    kat("aes-256", "ecb", "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        NULL, pt, "f3eed1bdb5d2a03c064b5a7e3db181f8");
    kat("aes-128", "cbc", "2b7e151628aed2a6abf7158809cf4f3c", "000102030405060708090a0b0c0d0e0f",
        pt, "7649abac8119b246cee98e9b12e9197d");
    kat("aes-128", "ctr", "2b7e151628aed2a6abf7158809cf4f3c", "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        pt, "874d6191b620e3261bef6864990db6ce");
    /* IEEE 1619-2007 XTS-AES-128 vectors 1, 2 and 4 (its first 64 bytes) */
    kat("aes-128", "xts", "0000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e");
    kat("aes-128", "xts", "1111111111111111111111111111111122222222222222222222222222222222",
        "33333333330000000000000000000000",
        "4444444444444444444444444444444444444444444444444444444444444444",
        "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0");
    kat("aes-128", "xts", "2718281828459045235360287471352631415926535897932384626433832795",
        "00000000000000000000000000000000",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
        "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c"
        "c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412");
    /* NESSIE Serpent set 1 vector 0 */
    kat("serpent-128", "ecb", "80000000000000000000000000000000", NULL,
        "00000000000000000000000000000000", "264e5481eff42a4606abda06c0bfda3d");
    kat("serpent-192", "ecb", "800000000000000000000000000000000000000000000000", NULL,
        "00000000000000000000000000000000", "9e274ead9b737bb21efcfca548602689");
    kat("serpent-256", "ecb", "8000000000000000000000000000000000000000000000000000000000000000",
        NULL, "00000000000000000000000000000000", "a223aa1288463c0e2be38ebd825616c0");
    /* Twofish paper, zero key and block */
    kat("twofish-128", "ecb", "00000000000000000000000000000000", NULL,
        "00000000000000000000000000000000", "9f589f5cf6122c32b6bfec2f2ae8c35a");
    kat("twofish-192", "ecb", "0123456789abcdeffedcba98765432100011223344556677", NULL,
        "00000000000000000000000000000000", "cfd1d2e5a9be9cdf501f13b892bd2248");
    kat("twofish-256", "ecb", "0000000000000000000000000000000000000000000000000000000000000000",
        NULL, "00000000000000000000000000000000", "57ff739d4dc92c1bd7fc01700cc8216f");
    /* RFC 2144 B.1, 128-bit key */
    kat("cast5-128", "ecb", "0123456712345678234567893456789a", NULL, "0123456789abcdef",
        "238b4fe5847e44b2");
}

static void test_cipher_errors(void)
{
    uint8_t k[64] = { 1 }, buf[32] = { 0 };
    struct vd_cipher *c = NULL;

    CHECK(vd_cipher_alg_parse("aes-512") < 0);
    CHECK(vd_cipher_mode_parse("ofb") < 0);
    CHECK(vd_cipher_new(&c, VD_CIPHER_CAST5_128, VD_MODE_XTS, k, 32) < 0);
    CHECK(vd_cipher_new(&c, VD_CIPHER_AES_128, VD_MODE_CBC, k, 17) < 0);
    CHECK_EQ_INT(vd_cipher_new(&c, VD_CIPHER_AES_128, VD_MODE_CBC, k, 16), 0);
    CHECK(vd_cipher_encrypt(c, k, 16, buf, 15) < 0);
    CHECK(vd_cipher_encrypt(c, k, 8, buf, 16) < 0);
    vd_cipher_free(c);
    CHECK_EQ_INT(vd_cipher_alg_by_family("aes", 24), VD_CIPHER_AES_192);
    /* twofish-192 (nettle) in every mode, against twofish ECB by hand */
    {
        uint8_t k2[48], iv[16] = { 9 }, ref[32], x[32];
        struct vd_cipher *e, *m;
        for (int i = 0; i < 48; i++)
            k2[i] = (uint8_t)(i + 1);
        CHECK_EQ_INT(vd_cipher_new(&e, VD_CIPHER_TWOFISH_192, VD_MODE_ECB, k2, 24), 0);
        CHECK_EQ_INT(vd_cipher_new(&m, VD_CIPHER_TWOFISH_192, VD_MODE_CBC, k2, 24), 0);
        memset(x, 0x33, 32);
        memcpy(ref, x, 32);
        for (int i = 0; i < 16; i++)
            ref[i] ^= iv[i];
        vd_cipher_encrypt(e, NULL, 0, ref, 16);
        for (int i = 0; i < 16; i++)
            ref[16 + i] ^= ref[i];
        vd_cipher_encrypt(e, NULL, 0, ref + 16, 16);
        CHECK_EQ_INT(vd_cipher_encrypt(m, iv, 16, x, 32), 0);
        CHECK(!memcmp(x, ref, 32));
        vd_cipher_free(e);
        vd_cipher_free(m);
        CHECK_EQ_INT(vd_cipher_new(&m, VD_CIPHER_TWOFISH_192, VD_MODE_XTS, k2, 48), 0);
        memset(x, 0x44, 32);
        CHECK_EQ_INT(vd_cipher_encrypt(m, iv, 16, x, 32), 0);
        CHECK_EQ_INT(vd_cipher_decrypt(m, iv, 16, x, 32), 0);
        CHECK(x[0] == 0x44 && x[31] == 0x44);
        vd_cipher_free(m);
    }
    CHECK(vd_cipher_alg_by_family("aes", 8) < 0);
}

static void test_hashes(void)
{
    static const char *const want[VD_HASH__MAX] = {
        "900150983cd24fb0d6963f7d28e17f72",
        "a9993e364706816aba3e25717850c26c9cd0d89d",
        "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
        "8086072ba1e7cc2358baeca134c825a7",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc",
    };
    uint8_t out[VD_HASH_MAX_LEN];

    for (int h = 0; h < VD_HASH__MAX; h++) {
        CHECK_EQ_INT(vd_hash_parse(vd_hash_name(h)), h);
        CHECK_EQ_INT(vd_hash(h, "abc", 3, out), 0);
        CHECK_EQ_INT(vd_hash_len(h) * 2, strlen(want[h]));
        CHECK(same(out, want[h]));
    }
}

/* PBKDF2 of pass/salt with iters into len bytes equals hex. */
static void pbkdf2_kat(enum vd_hash_alg h, const char *pass, const char *salt, uint64_t iters,
                       const char *hex)
{
    uint8_t out[64];
    size_t len = strlen(hex) / 2;

    CHECK_EQ_INT(vd_pbkdf2(h, (const uint8_t *)pass, strlen(pass), (const uint8_t *)salt,
                           strlen(salt), iters, out, len), 0);
    CHECK(same(out, hex));
}

static void test_pbkdf2(void)
{
    uint8_t out[20];

    /* RFC 6070 */
    pbkdf2_kat(VD_HASH_SHA1, "password", "salt", 1, "0c60c80f961f0e71f3a9b524af6012062fe037a6");
    pbkdf2_kat(VD_HASH_SHA1, "password", "salt", 2, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
    pbkdf2_kat(VD_HASH_SHA1, "password", "salt", 4096,
               "4b007901b765489abead49d926f721d065a429c1");
    pbkdf2_kat(VD_HASH_SHA1, "passwordPASSWORDpassword", "saltSALTsaltSALTsaltSALTsaltSALTsalt",
               4096, "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038");
    /* RFC 7914 section 11 */
    pbkdf2_kat(VD_HASH_SHA256, "passwd", "salt", 1,
               "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
               "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783");
    CHECK(vd_pbkdf2(VD_HASH_SHA1, (const uint8_t *)"p", 1, (const uint8_t *)"s", 1, 0, out,
                    20) < 0);
    CHECK(vd_pbkdf2_rate(VD_HASH_SHA256) > 0);
}

/* The IVs of plain, plain64 and essiv, by encrypting one sector with the
 * IV built by hand in CBC. */
static void test_ivgen(void)
{
    uint8_t key[32], iv[16], a[512], b[512], salt[32];
    struct vd_blockcrypt *bc;
    struct vd_cipher *c, *e;
    uint64_t sector = 0x1122334455ull;

    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(i * 3 + 1);
    for (int i = 0; i < 512; i++)
        a[i] = (uint8_t)i;
    CHECK_EQ_INT(vd_cipher_new(&c, VD_CIPHER_AES_256, VD_MODE_CBC, key, 32), 0);
    for (int g = 0; g < VD_IVGEN__MAX; g++) {
        struct vd_blockcrypt_params p = { VD_CIPHER_AES_256, VD_MODE_CBC, g,
                                          VD_CIPHER_AES_256, VD_HASH_SHA256 };
        memset(iv, 0, 16);
        for (int i = 0; i < (g == VD_IVGEN_PLAIN ? 4 : 8); i++)
            iv[i] = (uint8_t)(sector >> (8 * i));
        if (g == VD_IVGEN_ESSIV) {
            vd_hash(VD_HASH_SHA256, key, 32, salt);
            CHECK_EQ_INT(vd_cipher_new(&e, VD_CIPHER_AES_256, VD_MODE_ECB, salt, 32), 0);
            vd_cipher_encrypt(e, NULL, 0, iv, 16);
            vd_cipher_free(e);
        }
        memcpy(b, a, 512);
        CHECK_EQ_INT(vd_cipher_encrypt(c, iv, 16, b, 512), 0);
        CHECK_EQ_INT(vd_blockcrypt_new(&bc, &p, key, 32), 0);
        memcpy(iv, a, 0);
        {
            uint8_t two[1024];
            memcpy(two + 512, a, 512);
            memcpy(two, a, 512);
            CHECK_EQ_INT(vd_blockcrypt_encrypt(bc, sector - 1, two, 1024), 0);
            CHECK(!memcmp(two + 512, b, 512));
            CHECK_EQ_INT(vd_blockcrypt_decrypt(bc, sector - 1, two, 1024), 0);
            CHECK(!memcmp(two + 512, a, 512) && !memcmp(two, a, 512));
        }
        vd_blockcrypt_free(bc);
    }
    vd_cipher_free(c);
}

/* Split and merge give back the key; merge by the definition for 2
 * stripes: key = H-diffuse(s0) ^ s1. */
static void test_af(void)
{
    uint8_t key[64], split[64 * 4000], back[64], d[64], in[4 + 32];

    for (int i = 0; i < 64; i++)
        key[i] = (uint8_t)(0xa0 + i);
    for (int h = 0; h < VD_HASH__MAX; h++) {
        CHECK_EQ_INT(vd_af_split(h, 64, 4000, key, split), 0);
        CHECK_EQ_INT(vd_af_merge(h, 64, 4000, split, back), 0);
        CHECK(!memcmp(back, key, 64));
    }
    CHECK_EQ_INT(vd_af_split(VD_HASH_SHA256, 40, 2, key, split), 0);
    for (int i = 0; i < 2; i++) {          /* pieces: 32 bytes, then 8 */
        size_t l = i ? 8 : 32;
        uint8_t dig[32];
        in[0] = in[1] = in[2] = 0;
        in[3] = (uint8_t)i;
        memcpy(in + 4, split + 32 * i, l);
        vd_hash(VD_HASH_SHA256, in, 4 + l, dig);
        memcpy(d + 32 * i, dig, l);
    }
    for (int i = 0; i < 40; i++)
        d[i] ^= split[40 + i];
    CHECK(!memcmp(d, key, 40));
    CHECK(vd_af_split(VD_HASH_SHA256, 32, 0, key, split) < 0);
}

/* Secrets: raw, base64, and AES-256-CBC encrypted (NIST SP 800-38A F.2.5
 * block, PKCS#7 padded by a second all-16 block). */
static void test_secrets(void)
{
    uint8_t *v;
    size_t l;

    CHECK_EQ_INT(vd_object_add("secret,id=raw,data=hello"), 0);
    CHECK_EQ_INT(vd_secret_get("raw", &v, &l), 0);
    CHECK(l == 5 && !memcmp(v, "hello", 5));
    vd_secret_free(v, l);
    CHECK_EQ_INT(vd_object_add("secret,id=b64,data=aGVsbG8=,format=base64"), 0);
    CHECK_EQ_INT(vd_secret_get("b64", &v, &l), 0);
    CHECK(l == 5 && !memcmp(v, "hello", 5));
    vd_secret_free(v, l);
    CHECK(vd_object_add("secret,id=bad,data=@@,format=base64") < 0);
    CHECK(!strstr(vd_errmsg(), "@@"));
    CHECK(vd_object_add("secret,id=none") < 0);
    CHECK(vd_secret_get("missing", &v, &l) < 0);
    /* key 603deb..f4 (base64), iv 000102..0f, plaintext 6bc1..2a */
    CHECK_EQ_INT(vd_object_add("secret,id=k,format=base64,"
                               "data=YD3rEBXKcb4rc67whX13gR81LAc7YQjXLZgQowkU3/Q="), 0);
    CHECK_EQ_INT(vd_object_add("secret,id=enc,keyid=k,iv=AAECAwQFBgcICQoLDA0ODw==,format=base64,"
                               "data=9YxMBNbl8bp3nqv7X3v71khaXIFRnPN4+jbUK4VH7cA="), 0);
    CHECK_EQ_INT(vd_secret_get("enc", &v, &l), 0);
    CHECK(l == 16 && same(v, "6bc1bee22e409f96e93d7e117393172a"));
    vd_secret_free(v, l);
    CHECK(vd_object_add("secret,id=enc2,keyid=raw,iv=AAECAwQFBgcICQoLDA0ODw==,data=AAAA") < 0);
    CHECK_EQ_STR(vd_errmsg(), "Key should be 32 bytes in length");
    vd_object_clear();
}

int main(void)
{
    test_ciphers();
    test_cipher_errors();
    test_hashes();
    test_pbkdf2();
    test_ivgen();
    test_af();
    test_secrets();
    return TAP_DONE();
}
