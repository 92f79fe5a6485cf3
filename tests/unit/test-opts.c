/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for lib/core/opts.c.  Expected behaviour and messages come
 * from qemu-img 7.2: create -o ..., info --image-opts ..., json: names. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "tap.h"

/* Parse str into a new dict; NULL on error. */
static vd_opts *parse(const char *str, const char *implied)
{
    vd_opts *o = vd_opts_new();

    if (vd_opts_parse(o, str, implied) < 0) {
        vd_opts_free(o);
        return NULL;
    }
    return o;
}

/* Render a dict back to text (for compact comparisons). */
static void check_render(const vd_opts *o, const char *want)
{
    char *s = vd_opts_to_string(o);

    CHECK_EQ_STR(s, want);
    free(s);
}

/* ",," escaping, bare keys, trailing commas, later keys winning. */
static void test_parse(void)
{
    struct { const char *in, *implied, *out; } cases[] = {
        { "size=1M,,x", NULL, "size=1M,,x" },
        { "compat=1.1,,", NULL, "compat=1.1,," },
        { "compat=1.1,,,,", NULL, "compat=1.1,,,," },
        { "compat=1.1,,,lazy_refcounts=on", NULL, "compat=1.1,,,lazy_refcounts=on" },
        { "lazy_refcounts", NULL, "lazy_refcounts=on" },
        { "a,,b", NULL, "a=on,=on,b=on" },
        { "=x", NULL, "=x" },
        { "a=b=c", NULL, "a=b=c" },
        { "cluster_size=64k,cluster_size=128k", NULL, "cluster_size=128k" },
        { "driver=raw,file.filename=x,", NULL, "driver=raw,file.filename=x" },
        { "", NULL, "" },
        { "compat=", NULL, "compat=" },
        { "x,driver=raw", "file", "file=x,driver=raw" },
        { ",driver=raw", "file", "file=,driver=raw" },
        { "a,,b,driver=raw", "file", "file=a,,b,driver=raw" },
        { "driver=raw,x", "file", "driver=raw,x=on" },
        { "file.filename=x", "file", "file.filename=x" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        vd_opts *o = parse(cases[i].in, cases[i].implied);
        CHECK(o != NULL);
        check_render(o, cases[i].out);
        vd_opts_free(o);
    }
}

/* Accessors, replace, delete, dup. */
static void test_dict(void)
{
    vd_opts *o = parse("a=1,b=2,c=3", NULL), *d;

    CHECK_EQ_INT(vd_opts_count(o), 3);
    CHECK_EQ_STR(vd_opts_get(o, "b"), "2");
    CHECK(vd_opts_get(o, "z") == NULL && !vd_opts_has(o, "z"));
    CHECK_EQ_INT(vd_opts_set(o, "b", "x,y"), 0);
    check_render(o, "a=1,b=x,,y,c=3");
    CHECK(vd_opts_del(o, "a"));
    CHECK(!vd_opts_del(o, "a"));
    CHECK_EQ_STR(vd_opts_key(o, 0), "b");
    CHECK_EQ_STR(vd_opts_value(o, 1), "3");
    CHECK(vd_opts_key(o, 2) == NULL);
    d = vd_opts_dup(o);
    vd_opts_set(o, "c", "changed");
    check_render(d, "b=x,,y,c=3");
    CHECK_EQ_INT(vd_opts_set(o, NULL, "x"), -EINVAL);
    vd_opts_free(d);
    vd_opts_free(o);
    vd_opts_free(NULL);
}

/* help detection and qemu-img's "Invalid option list" rule. */
static void test_help_and_list(void)
{
    CHECK(vd_opts_is_help("help"));
    CHECK(vd_opts_is_help("?"));
    CHECK(vd_opts_is_help("compat=1.1,help"));
    CHECK(vd_opts_is_help("help,compat=1.1"));
    CHECK(vd_opts_is_help("compat=1.1,?"));
    CHECK(!vd_opts_is_help("help=1"));
    CHECK(!vd_opts_is_help("cluster_size=help"));
    CHECK(!vd_opts_is_help("helpx"));
    CHECK(!vd_opts_is_help("?x"));
    CHECK(!vd_opts_is_help("compat=1.1,,help"));
    CHECK(!vd_opts_is_help(""));
    CHECK(!vd_opts_is_help(NULL));
    CHECK(!vd_opts_list_valid(""));
    CHECK(!vd_opts_list_valid(","));
    CHECK(!vd_opts_list_valid(",,"));
    CHECK(!vd_opts_list_valid(",compat=1.1"));
    CHECK(!vd_opts_list_valid("compat=1.1,"));
    CHECK(!vd_opts_list_valid("compat=1.1,,,"));
    CHECK(vd_opts_list_valid("compat=1.1,,"));
    CHECK(vd_opts_list_valid("compat=1.1,,,,"));
    CHECK(vd_opts_list_valid("a=1,b=2"));
}

/* json: flattening into dotted keys. */
static void test_json(void)
{
    vd_opts *o = vd_opts_new();

    CHECK_EQ_INT(vd_opts_parse_json(o, "{\"driver\": \"qcow2\", \"file\": {\"driver\": \"nbd\", "
             "\"server\": {\"type\": \"unix\", \"path\": \"/s\"}}, \"ro\": true, \"x\": false, "
             "\"n\": -5, \"u\": 18446744073709551615, \"d\": 512.0, \"e\": 1.5, "
             "\"arr\": [\"a\", {\"k\": 1}], \"nul\": null, \"empty\": {}}"), 0);
    check_render(o, "driver=qcow2,file.driver=nbd,file.server.type=unix,file.server.path=/s,"
                    "ro=on,x=off,n=-5,u=18446744073709551615,d=512,e=1.5,arr.0=a,arr.1.k=1");
    vd_opts_free(o);
    o = vd_opts_new();
    CHECK_EQ_INT(vd_opts_parse_json(o, "[1]"), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "Invalid JSON object given");
    CHECK_EQ_INT(vd_opts_parse_json(o, "1"), -EINVAL);
    CHECK_EQ_INT(vd_opts_parse_json(o, "{\"a\":1,\"a\":2}"), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "JSON parse error, duplicate key");
    CHECK_EQ_INT(vd_opts_parse_json(o, ""), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "Expecting a JSON value");
    CHECK_EQ_INT(vd_opts_count(o), 0);
    vd_opts_free(o);
}

/* Moving a child's options out. */
static void test_extract(void)
{
    vd_opts *o = parse("driver=qcow2,file.driver=file,file.filename=x,filex=1,backing.file.a=2", NULL);
    vd_opts *f = vd_opts_extract_prefix(o, "file");
    vd_opts *b = vd_opts_extract_prefix(o, "backing.");

    check_render(f, "driver=file,filename=x");
    check_render(b, "file.a=2");
    check_render(o, "driver=qcow2,filex=1");
    vd_opts_free(f);
    vd_opts_free(b);
    vd_opts_free(o);
}

/* Typed getters with qemu-img's values and messages. */
static void test_typed(void)
{
    vd_opts *o = parse("b1=on,b2=y,b3=false,b4=TRUE,n1=0x10,n2=010,n3= 16,n4=-1,"
                       "n5=18446744073709551616,n6=16k,n7=,s1=1.5k,s2=abc,s3=16E", NULL);
    uint64_t n;
    bool b;

    CHECK(vd_opts_get_bool(o, "b1", false, &b) == 0 && b);
    CHECK(vd_opts_get_bool(o, "b2", false, &b) == 0 && b);
    CHECK(vd_opts_get_bool(o, "b3", true, &b) == 0 && !b);
    CHECK(vd_opts_get_bool(o, "absent", true, &b) == 0 && b);
    CHECK_EQ_INT(vd_opts_get_bool(o, "b4", false, &b), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "Parameter 'b4' expects 'on' or 'off'");
    CHECK(vd_opts_get_u64(o, "n1", 0, &n) == 0 && n == 16);
    CHECK(vd_opts_get_u64(o, "n2", 0, &n) == 0 && n == 8);
    CHECK(vd_opts_get_u64(o, "n3", 0, &n) == 0 && n == 16);
    CHECK(vd_opts_get_u64(o, "n4", 0, &n) == 0 && n == UINT64_MAX);
    CHECK(vd_opts_get_u64(o, "absent", 7, &n) == 0 && n == 7);
    CHECK_EQ_INT(vd_opts_get_u64(o, "n5", 0, &n), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "Value '18446744073709551616' is too large for parameter 'n5'");
    CHECK_EQ_INT(vd_opts_get_u64(o, "n6", 0, &n), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "Parameter 'n6' expects a number");
    CHECK_EQ_INT(vd_opts_get_u64(o, "n7", 0, &n), -EINVAL);
    CHECK(vd_opts_get_size(o, "s1", 0, &n) == 0 && n == 1536);
    CHECK_EQ_INT(vd_opts_get_size(o, "s2", 0, &n), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "Parameter 's2' expects a non-negative number below 2^64\n"
                 "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                 "and exabytes, respectively.");
    CHECK_EQ_INT(vd_opts_get_size(o, "s3", 0, &n), -EINVAL);
    CHECK_EQ_STR(vd_errmsg(), "Value '16E' is out of range for parameter 's3'");
    vd_opts_free(o);
}

static const struct vd_opt_desc table[] = {
    { "size", VD_OPT_SIZE, "Virtual disk size", NULL },
    { "lazy_refcounts", VD_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", VD_OPT_NUMBER, "Width of a reference count entry in bits", "16" },
    { "compat", VD_OPT_STRING, "Compatibility level", NULL },
    { "encrypt.format", VD_OPT_STRING, "Encrypt the image", NULL },
    { NULL, VD_OPT_STRING, NULL, NULL },
};

/* Validation: first unknown or ill-typed entry, in order. */
static void test_validate(void)
{
    struct { const char *in; const char *msg; } cases[] = {
        { "size=1M,compat=1.1,lazy_refcounts=y,refcount_bits=16,encrypt.format=luks,file.x=1", NULL },
        { "foo=1", "Invalid parameter 'foo'" },
        { "foo", "Invalid parameter 'foo'" },
        { "size=1M,foo=2,bar=3", "Invalid parameter 'foo'" },
        { "=x", "Invalid parameter ''" },
        { "help=1", "Invalid parameter 'help'" },
        { "a,,b", "Invalid parameter 'a'" },
        { "lazy_refcounts=abc", "Parameter 'lazy_refcounts' expects 'on' or 'off'" },
        { "lazy_refcounts=On", "Parameter 'lazy_refcounts' expects 'on' or 'off'" },
        { "refcount_bits=abc", "Parameter 'refcount_bits' expects a number" },
        { "size=1M,,x", "Parameter 'size' expects a non-negative number below 2^64\n"
          "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
          "and exabytes, respectively." },
        { "size=16E", "Value '16E' is out of range for parameter 'size'" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        vd_opts *o = parse(cases[i].in, NULL);
        int r = vd_opts_validate(o, table, "qcow2");
        CHECK_EQ_INT(r, cases[i].msg ? -EINVAL : 0);
        if (cases[i].msg)
            CHECK_EQ_STR(vd_errmsg(), cases[i].msg);
        vd_opts_free(o);
    }
}

/* Too many entries are refused instead of growing without bound. */
static void test_limits(void)
{
    vd_opts *o = vd_opts_new();
    char key[32];
    int i, r = 0;

    for (i = 0; i < 5000 && r == 0; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        r = vd_opts_set(o, key, "v");
    }
    CHECK(r < 0);
    CHECK(vd_opts_count(o) <= 4096);
    vd_opts_free(o);
}

int main(void)
{
    test_parse();
    test_dict();
    test_help_and_list();
    test_json();
    test_extract();
    test_typed();
    test_validate();
    test_limits();
    return TAP_DONE();
}
