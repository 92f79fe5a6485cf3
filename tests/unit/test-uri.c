/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests for lib/util/uri.c: RFC 3986 URIs as protocol drivers get
 * them (nbd, nbd+unix, ssh, iscsi, http), and malformed ones refused. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"
#include "util/uri.h"
#include "tap.h"

struct good_case {
    const char *in;
    const char *scheme, *user, *password, *host;
    int port;
    const char *path, *query, *fragment;
};

static const struct good_case good[] = {
    { "nbd://localhost:10809/export", "nbd", NULL, NULL, "localhost", 10809, "/export", NULL, NULL },
    { "nbd://localhost", "nbd", NULL, NULL, "localhost", -1, "", NULL, NULL },
    { "nbd+unix:///exp?socket=/tmp/s.sock", "nbd+unix", NULL, NULL, "", -1, "/exp",
      "socket=/tmp/s.sock", NULL },
    { "nbd://[::1]:10809/a%20b", "nbd", NULL, NULL, "::1", 10809, "/a b", NULL, NULL },
    { "nbd://[fe80::1%25eth0]/", "nbd", NULL, NULL, "fe80::1%eth0", -1, "/", NULL, NULL },
    { "nbd://[::ffff:192.0.2.1]", "nbd", NULL, NULL, "::ffff:192.0.2.1", -1, "", NULL, NULL },
    { "ssh://user:pa%3Ass@host:22/path/img?host_key_check=no#frag", "ssh", "user", "pa:ss",
      "host", 22, "/path/img", "host_key_check=no", "frag" },
    { "ssh://user@host/img", "ssh", "user", NULL, "host", -1, "/img", NULL, NULL },
    { "ssh://@host/img", "ssh", "", NULL, "host", -1, "/img", NULL, NULL },
    { "iscsi://u%25x:p@192.0.2.1:3260/iqn.2001-04.com.example:storage/1", "iscsi", "u%x", "p",
      "192.0.2.1", 3260, "/iqn.2001-04.com.example:storage/1", NULL, NULL },
    { "http://example.com:/x", "http", NULL, NULL, "example.com", -1, "/x", NULL, NULL },
    { "http://h:0/", "http", NULL, NULL, "h", 0, "/", NULL, NULL },
    { "http://h:65535/", "http", NULL, NULL, "h", 65535, "/", NULL, NULL },
    { "file:///tmp/x", "file", NULL, NULL, "", -1, "/tmp/x", NULL, NULL },
    { "nbd:rootless", "nbd", NULL, NULL, NULL, -1, "rootless", NULL, NULL },
    { "HTTPS://Ex-1.example:443?a=1&b=2", "HTTPS", NULL, NULL, "Ex-1.example", 443, "", "a=1&b=2", NULL },
    { "x:", "x", NULL, NULL, NULL, -1, "", NULL, NULL },
    { "x://h/?#", "x", NULL, NULL, "h", -1, "/", "", "" },
};

/* Compare a possibly-NULL field. */
static void check_field(const char *got, const char *want)
{
    if (!want)
        CHECK(got == NULL);
    else
        CHECK_EQ_STR(got, want);
}

/* Each good URI splits into the expected components. */
static void test_good(void)
{
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const struct good_case *c = &good[i];
        struct vd_uri u;
        int r = vd_uri_parse(c->in, &u);

        CHECK_EQ_INT(r, 0);
        if (r < 0) {
            fprintf(stderr, "  %s: %s\n", c->in, vd_errmsg());
            continue;
        }
        check_field(u.scheme, c->scheme);
        check_field(u.user, c->user);
        check_field(u.password, c->password);
        check_field(u.host, c->host);
        CHECK_EQ_INT(u.port, c->port);
        check_field(u.path, c->path);
        check_field(u.query, c->query);
        check_field(u.fragment, c->fragment);
        vd_uri_free(&u);
    }
}

/* Malformed URIs are refused with -EINVAL and a message; u is left clean. */
static void test_bad(void)
{
    static const char *const bad[] = {
        "", "localhost", "/path", "://h", "1nbd://h", "nbd//h", "n b://h",
        "nbd://h:65536/", "nbd://h:99999999999999999999/", "nbd://h:-1/", "nbd://h:1x/",
        "nbd://[::1", "nbd://[::1]x/", "nbd://[zz::1]/", "nbd://[]/", "nbd://[::1%eth0]/",
        "nbd://[192.0.2.1]/", "nbd://h/a b", "nbd://h/%", "nbd://h/%2", "nbd://h/%zz",
        "nbd://h/%00", "nbd://u@v@h/", "nbd://h?a b", "nbd://h#a#b", "nbd://h/\x80",
        "nbd://h\"/", "nbd://h/<x>", "nbd://us er@h/", "nbd://h/\t",
        "nbd://[v1.x]/",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct vd_uri u;
        int r = vd_uri_parse(bad[i], &u);
        if (r == 0)
            fprintf(stderr, "  accepted: %s\n", bad[i]);
        CHECK_EQ_INT(r, -EINVAL);
        CHECK(strncmp(vd_errmsg(), "Invalid URI: ", 13) == 0);
        CHECK(u.scheme == NULL && u.host == NULL && u.path == NULL && u.port == -1);
        vd_uri_free(&u);
    }
    CHECK_EQ_INT(vd_uri_parse(NULL, &(struct vd_uri){ 0 }), -EINVAL);
}

/* Query parameters: '&' or ';' separated, decoded, first match wins. */
static void test_query(void)
{
    struct vd_uri u;
    char *v;

    CHECK_EQ_INT(vd_uri_parse("nbd+unix:///e?socket=%2Ftmp%2Fs&flag&x=1;y=a%26b&x=2&=z", &u), 0);
    v = vd_uri_query_param(&u, "socket");
    CHECK_EQ_STR(v, "/tmp/s");
    free(v);
    v = vd_uri_query_param(&u, "flag");
    CHECK_EQ_STR(v, "");
    free(v);
    v = vd_uri_query_param(&u, "x");
    CHECK_EQ_STR(v, "1");
    free(v);
    v = vd_uri_query_param(&u, "y");
    CHECK_EQ_STR(v, "a&b");
    free(v);
    v = vd_uri_query_param(&u, "");
    CHECK_EQ_STR(v, "z");
    free(v);
    CHECK(vd_uri_query_param(&u, "nope") == NULL);
    vd_uri_free(&u);
    CHECK_EQ_INT(vd_uri_parse("nbd://h/", &u), 0);
    CHECK(vd_uri_query_param(&u, "x") == NULL);
    vd_uri_free(&u);
}

/* vd_uri_decode on its own. */
static void test_decode(void)
{
    char *s = vd_uri_decode("a%41%2c%7e", 10);

    CHECK_EQ_STR(s, "aA,~");
    free(s);
    s = vd_uri_decode("abc", 2);
    CHECK_EQ_STR(s, "ab");
    free(s);
    CHECK(vd_uri_decode("%4", 2) == NULL);
    CHECK(vd_uri_decode("%00", 3) == NULL);
    CHECK(vd_uri_decode("%g0", 3) == NULL);
}

int main(void)
{
    test_good();
    test_bad();
    test_query();
    test_decode();
    return TAP_DONE();
}
