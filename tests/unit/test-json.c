/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for lib/util/json.c and json-parse.c: building and printing in
 * QEMU's layout (the expected texts are qemu-img 7.2 output), escaping,
 * parse/print round trips, and rejection of malformed or hostile input. */
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "util/json.h"
#include "tap.h"

/* Parse a C string. */
static vd_json *parse(const char *s)
{
    return vd_json_parse(s, strlen(s));
}

/* Pretty text of j, via the FILE printer (checks both paths agree). */
static char *pretty(const vd_json *j)
{
    char *mem = NULL, *s = vd_json_to_string(j, true);
    size_t len = 0;
    FILE *f = open_memstream(&mem, &len);

    vd_json_print(j, f);
    fclose(f);
    CHECK_EQ_STR(mem, s);
    free(mem);
    return s;
}

/* qemu-img check --output=json layout, built with the setters. */
static void test_build_print(void)
{
    static const char want[] =
        "{\n"
        "    \"image-end-offset\": 655360,\n"
        "    \"total-clusters\": 160,\n"
        "    \"check-errors\": 0,\n"
        "    \"filename\": \"o.qcow2\",\n"
        "    \"format\": \"qcow2\",\n"
        "    \"flags\": [\n"
        "    ],\n"
        "    \"dirty-flag\": false,\n"
        "    \"sub\": {\n"
        "        \"list\": [\n"
        "            \"auto\",\n"
        "            -1\n"
        "        ],\n"
        "        \"big\": 18446744073709551615\n"
        "    }\n"
        "}";
    vd_json *o = vd_json_new_object(), *sub = vd_json_new_object();
    vd_json *list = vd_json_new_array();
    char *s;

    vd_json_set_int(o, "image-end-offset", 1);
    vd_json_set_int(o, "total-clusters", 160);
    vd_json_set_int(o, "check-errors", 0);
    vd_json_set_str(o, "filename", "o.qcow2");
    vd_json_set_str(o, "format", "qcow2");
    vd_json_set(o, "flags", vd_json_new_array());
    vd_json_set_bool(o, "dirty-flag", false);
    vd_json_append(list, vd_json_new_string("auto"));
    vd_json_append(list, vd_json_new_int(-1));
    vd_json_set(sub, "list", list);
    vd_json_set_uint(sub, "big", UINT64_MAX);
    vd_json_set(o, "sub", sub);
    vd_json_set_int(o, "image-end-offset", 655360);   /* replaces in place */
    s = pretty(o);
    CHECK_EQ_STR(s, want);
    free(s);
    s = vd_json_to_compact(sub);
    CHECK_EQ_STR(s, "{\"list\": [\"auto\", -1], \"big\": 18446744073709551615}");
    free(s);
    CHECK_EQ_INT(vd_json_count(o), 8);
    CHECK_EQ_STR(vd_json_key_at(o, 7), "sub");
    CHECK(vd_json_get(o, "nope") == NULL);
    CHECK_EQ_INT(vd_json_int(vd_json_get(o, "total-clusters")), 160);
    vd_json_free(o);
}

/* Empty containers and scalars at the top level. */
static void test_empty(void)
{
    vd_json *j = parse("{\"a\": {}, \"b\": [], \"c\": [{}]}");
    char *s = pretty(j);

    CHECK_EQ_STR(s, "{\n    \"a\": {\n    },\n    \"b\": [\n    ],\n    \"c\": [\n"
                    "        {\n        }\n    ]\n}");
    free(s);
    s = vd_json_to_compact(j);
    CHECK_EQ_STR(s, "{\"a\": {}, \"b\": [], \"c\": [{}]}");
    free(s);
    vd_json_free(j);
    j = vd_json_new_array();
    s = pretty(j);
    CHECK_EQ_STR(s, "[\n]");
    free(s);
    vd_json_free(j);
}

/* Escaping as qemu-img prints a file name with odd bytes. */
static void test_escape(void)
{
    struct { const char *in, *out; } cases[] = {
        { "a\"b\\c\td\001e\x7f\x1f \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\rz\bq\fw\nn",
          "\"a\\\"b\\\\c\\td\\u0001e\\u007F\\u001F \\u00E9\\u20AC\\uD83D\\uDE00\\rz\\bq\\fw\\nn\"" },
        { "./x", "\"./x\"" },
        { "z\xffz", "\"z\\uFFFDz\"" }, { "z\xc3z", "\"z\\uFFFDz\"" },
        { "z\xc0\x80z", "\"z\\u0000z\"" }, { "z\xe0\x80\x80z", "\"z\\uFFFDz\"" },
        { "z\xed\xa0\x80z", "\"z\\uFFFDz\"" }, { "z\xf4\x90\x80\x80z", "\"z\\uFFFDz\"" },
        { "z\x80\x80z", "\"z\\uFFFD\\uFFFDz\"" }, { "z\xe2\x82z", "\"z\\uFFFDz\"" },
        { "z\xf8\x88\x80\x80\x80z", "\"z\\uFFFDz\"" }, { "z\xef\xbf\xbfz", "\"z\\uFFFDz\"" },
        { "z\xef\xb7\x90z", "\"z\\uFFFDz\"" }, { "z\xef\xb7\xb0z", "\"z\\uFDF0z\"" },
        { "z\xf4\x8f\xbf\xbdz", "\"z\\uDBFF\\uDFFDz\"" }, { "z\xe2\x82\xac\x80z", "\"z\\u20AC\\uFFFDz\"" },
        { "z\xc1\xbfz", "\"z\\uFFFDz\"" }, { "\xe2\x82", "\"\\uFFFD\"" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        vd_json *j = vd_json_new_string(cases[i].in);
        char *s = vd_json_to_compact(j);
        CHECK_EQ_STR(s, cases[i].out);
        free(s);
        vd_json_free(j);
    }
}

/* Text that must come back byte for byte (qemu-img info output). */
static void test_round_trip(void)
{
    static const char info[] =
        "{\n"
        "    \"virtual-size\": 10485760,\n"
        "    \"filename\": \"json:{\\\"offset\\\": \\\"512\\\", \\\"file\\\": {}}\",\n"
        "    \"format-specific\": {\n"
        "        \"type\": \"qcow2\",\n"
        "        \"data\": {\n"
        "            \"bitmaps\": [\n"
        "                {\n"
        "                    \"flags\": [\n"
        "                    ],\n"
        "                    \"name\": \"b0\",\n"
        "                    \"granularity\": 65536\n"
        "                }\n"
        "            ],\n"
        "            \"corrupt\": false\n"
        "        }\n"
        "    },\n"
        "    \"x\": null,\n"
        "    \"n\": -9223372036854775808\n"
        "}";
    vd_json *j = parse(info);
    char *s;

    CHECK(j != NULL);
    s = pretty(j);
    CHECK_EQ_STR(s, info);
    free(s);
    vd_json_free(j);
}

/* Numbers: int64, then uint64, then double, as QEMU's parser types them. */
static void test_numbers(void)
{
    vd_json *j = parse("[0, -0, 9223372036854775807, 9223372036854775808, "
                       "18446744073709551615, 18446744073709551616, "
                       "-9223372036854775808, -9223372036854775809, 1.5, 2e3, 1e999]");

    CHECK(j != NULL);
    CHECK_EQ_INT(vd_json_type(vd_json_at(j, 0)), VD_JSON_INT);
    CHECK_EQ_INT(vd_json_int(vd_json_at(j, 2)), INT64_MAX);
    CHECK_EQ_INT(vd_json_type(vd_json_at(j, 3)), VD_JSON_UINT);
    CHECK(vd_json_uint(vd_json_at(j, 4)) == UINT64_MAX);
    CHECK_EQ_INT(vd_json_type(vd_json_at(j, 5)), VD_JSON_DOUBLE);
    CHECK_EQ_INT(vd_json_int(vd_json_at(j, 6)), INT64_MIN);
    CHECK_EQ_INT(vd_json_type(vd_json_at(j, 7)), VD_JSON_DOUBLE);
    CHECK(vd_json_double(vd_json_at(j, 8)) == 1.5);
    CHECK(vd_json_double(vd_json_at(j, 9)) == 2000);
    CHECK_EQ_INT(vd_json_type(vd_json_at(j, 10)), VD_JSON_DOUBLE);
    vd_json_free(j);
}

/* Strings: escapes, surrogate pairs, single quotes, \u0000. */
static void test_strings(void)
{
    vd_json *j = parse("{'a': 'it\\'s', \"b\": \"\\u00e9\\ud83d\\ude00\\/\\\"\", "
                       "\"c\": \"x\\u0000y\", \"d\": \"\xc3\xa9\"}");

    CHECK(j != NULL);
    CHECK_EQ_STR(vd_json_str(vd_json_get(j, "a")), "it's");
    CHECK_EQ_STR(vd_json_str(vd_json_get(j, "b")), "\xc3\xa9\xf0\x9f\x98\x80/\"");
    CHECK_EQ_STR(vd_json_str(vd_json_get(j, "c")), "x\xc0\x80y");
    CHECK_EQ_STR(vd_json_str(vd_json_get(j, "d")), "\xc3\xa9");
    vd_json_free(j);
}

struct bad_case {
    const char *in;
    const char *msg;
};

/* Malformed input is refused with QEMU's message. */
static void test_errors(void)
{
    static const struct bad_case cases[] = {
        { "", "Expecting a JSON value" }, { "   ", "Expecting a JSON value" },
        { "{\"a\":1} x", "Expecting at most one JSON value" },
        { "{\"a\":1}{}", "Expecting at most one JSON value" },
        { "{\"a\":1,\"a\":2}", "JSON parse error, duplicate key" },
        { "{", "JSON parse error, premature EOI" },
        { "{\"a\":[", "JSON parse error, premature EOI" },
        { "{\"a\":1,}", "JSON parse error, expecting value" },
        { "{\"a\":[1,]}", "JSON parse error, expecting value" },
        { "}", "JSON parse error, expecting value" },
        { "{\"a\":tru}", "JSON parse error, invalid keyword 'tru'" },
        { "{\"a\":\"\\q\"}", "JSON parse error, invalid escape sequence in string" },
        { "{\"a\":\"x", "JSON parse error, stray '\"x'" },
        { "{\"a\":01}", "JSON parse error, stray '01'" },
        { "{\"a\":1.}", "JSON parse error, stray '1.}'" },
        { "{\"a\":-}", "JSON parse error, stray '-}'" },
        { "{\"a\" 1}", "JSON parse error, missing : in object pair" },
        { "{1:2}", "JSON parse error, key is not a string in object" },
        { "{\"a\":1 \"b\":2}", "JSON parse error, expected separator in dict" },
        { "[1 2]", "JSON parse error, expected separator in array" },
        { "{\"a\":\"\\ud800\"}", "JSON parse error, \\ud800 is not a valid Unicode character" },
        { "{\"a\":\"\\ud800x\"}", "JSON parse error, \\ud800 is not a valid Unicode character" },
        { "{\"a\":\"\\udc00\"}", "JSON parse error, \\udc00 is not a valid Unicode character" },
        { "{\"a\":\"\\uffff\"}", "JSON parse error, \\uffff is not a valid Unicode character" },
        { "{\"a\":\"\\u12\"}", "JSON parse error, \\u12\" is not a valid Unicode character" },
        { "{\"a\":\"\001\"}", "JSON parse error, stray '\"\001'" },
        { "{\"a\":%d}", "JSON parse error, stray '%'" },
        { "{\"a\":NaN}", "JSON parse error, invalid keyword 'NaN'" },
        { "\"\xff\"", "JSON parse error, invalid UTF-8 sequence in string" },
        { "\"\\", "JSON parse error, premature EOI" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        vd_json *j = parse(cases[i].in);
        CHECK(j == NULL);
        CHECK_EQ_STR(vd_errmsg(), cases[i].msg);
        vd_json_free(j);
    }
}

/* A long bad token is quoted until the detail reaches 1023 bytes, as QEMU
 * cuts it: no closing quote. */
static void test_long_token(void)
{
    static char text[3000];
    const char *m;
    vd_json *j;

    memset(text, 'k', sizeof(text));
    j = vd_json_parse(text, sizeof(text));
    CHECK(j == NULL);
    m = vd_errmsg();
    CHECK(strncmp(m, "JSON parse error, invalid keyword 'kkk", 38) == 0);
    CHECK(strlen(m) == strlen("JSON parse error, ") + 1023);
    CHECK(m[strlen(m) - 1] == 'k');
}

/* Nesting is capped at 64; embedded NULs and length bounds are honoured. */
static void test_hostile(void)
{
    char deep[200];
    vd_json *j;
    int i;

    for (i = 0; i < 64; i++) {
        deep[i] = '[';
        deep[64 + i] = ']';
    }
    j = vd_json_parse(deep, 128);
    CHECK(j != NULL);
    vd_json_free(j);
    memmove(deep + 1, deep, 128);
    deep[0] = '[';
    deep[129] = ']';
    CHECK(vd_json_parse(deep, 130) == NULL);
    CHECK_EQ_STR(vd_errmsg(), "JSON nesting depth limit exceeded");
    CHECK(vd_json_parse("[1]\0[", 5) == NULL);
    j = vd_json_parse("[12345]", 3);        /* only "[12" is looked at */
    CHECK(j == NULL);
    CHECK(vd_json_parse(NULL, 0) == NULL);
}

int main(void)
{
    test_build_print();
    test_empty();
    test_escape();
    test_round_trip();
    test_numbers();
    test_strings();
    test_errors();
    test_long_token();
    test_hostile();
    return TAP_DONE();
}
