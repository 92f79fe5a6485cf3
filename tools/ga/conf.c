/* SPDX-License-Identifier: BSD-3-Clause */
/* The qemu-ga.conf file: the Desktop Entry ("key file") syntax as GLib
 * reads it (groups, key=value, '#' comments, \s \n \t \r \\ escapes,
 * the last of duplicate keys wins) and the --dump-conf text as qemu-ga
 * 7.2 writes it.  Messages and exit codes are qemu-ga's. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ga.h"
#include "util/buf.h"

#define CONF_MAX_SIZE (1u << 20)   /* a config file is a few lines */
#define GROUP "general"

/* One key=value of group [general] (others are parsed and dropped). */
struct kv {
    char *key, *value;
};

struct keyfile {
    struct kv *kv;
    size_t n;
};

/* See ga.h. */
void ga_glib_message(const char *level, const char *fmt, ...)
{
    struct timeval tv;
    struct tm tm;
    va_list ap;

    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    fprintf(stderr, "\n** (process:%ld): %s **: %02d:%02d:%02d.%03ld: ",
            (long)getpid(), level, tm.tm_hour, tm.tm_min, tm.tm_sec,
            (long)(tv.tv_usec / 1000));
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Out of memory: nothing sensible is left to do. */
static void *xcheck(void *p)
{
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", GA_PROG);
        exit(EXIT_FAILURE);
    }
    return p;
}

/* See ga.h. */
void ga_strlist_add(struct ga_strlist *l, const char *s)
{
    l->v = xcheck(realloc(l->v, (l->n + 1) * sizeof(*l->v)));
    l->v[l->n++] = xcheck(strdup(s));
}

/* See ga.h: "a,b" is stored b then a (qemu-ga prepends while splitting). */
void ga_strlist_add_split(struct ga_strlist *l, const char *s)
{
    const char *end = s + strlen(s), *p;

    for (;;) {
        p = end;
        while (p > s && p[-1] != ',')
            p--;
        char *item = xcheck(strndup(p, (size_t)(end - p)));
        ga_strlist_add(l, item);
        free(item);
        if (p == s)
            break;
        end = p - 1;
    }
}

/* See ga.h. */
void ga_strlist_free(struct ga_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Exit as qemu-ga does when the configuration cannot be loaded. */
static void __attribute__((noreturn)) load_failed(const char *path, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ga_glib_message("CRITICAL", "error loading configuration from path: %s, %s",
                    path, msg);
    exit(EXIT_FAILURE);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Read the whole file; NULL when it does not exist. */
static char *read_conf(const char *path, size_t *len)
{
    struct stat st;
    FILE *f = fopen(path, "r");
    char *buf;

    if (!f) {
        if (errno == ENOENT)
            return NULL;
        load_failed(path, "Failed to open file ?%s?: %s", path, strerror(errno));
    }
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        load_failed(path, "Not a regular file");
    }
    if (st.st_size > CONF_MAX_SIZE) {
        fclose(f);
        load_failed(path, "File too large");
    }
    buf = xcheck(malloc((size_t)st.st_size + 1));
    *len = fread(buf, 1, (size_t)st.st_size, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

/* "[name]" with only white space after it; name is returned in place. */
static char *group_name(char *line)
{
    char *close = strchr(line + 1, ']');

    if (!close || close == line + 1 || memchr(line + 1, '[', (size_t)(close - line - 1)))
        return NULL;
    for (char *p = close + 1; *p; p++)
        if (!is_space(*p))
            return NULL;
    *close = 0;
    return line + 1;
}

/* Remember key=value of [general] (the latest wins on lookup). */
static void keyfile_add(struct keyfile *kf, const char *key, const char *value)
{
    kf->kv = xcheck(realloc(kf->kv, (kf->n + 1) * sizeof(*kf->kv)));
    kf->kv[kf->n].key = xcheck(strdup(key));
    kf->kv[kf->n].value = xcheck(strdup(value));
    kf->n++;
}

/* One line; group tracks the current group (NULL before the first). */
static void parse_line(struct keyfile *kf, const char *path, char *line,
                       char **group)
{
    char *p = line, *eq, *kend;

    while (is_space(*p))
        p++;
    if (!*p || *p == '#')
        return;
    if (*p == '[') {
        char *name = group_name(p);
        if (!name)
            load_failed(path, "Key file contains line ?%s? which is not a "
                        "key-value pair, group, or comment", line);
        free(*group);
        *group = xcheck(strdup(name));
        return;
    }
    eq = strchr(p, '=');
    if (!eq || eq == p)
        load_failed(path, "Key file contains line ?%s? which is not a "
                    "key-value pair, group, or comment", line);
    if (!*group)
        load_failed(path, "Key file does not start with a group");
    kend = eq;
    while (kend > p && is_space(kend[-1]))
        kend--;
    *kend = 0;
    eq++;
    while (is_space(*eq))
        eq++;
    if (strcmp(*group, GROUP) == 0)
        keyfile_add(kf, p, eq);
}

/* Split text into lines and parse them. */
static void keyfile_parse(struct keyfile *kf, const char *path, char *text)
{
    char *group = NULL, *line = text, *nl;

    while (*line) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        parse_line(kf, path, line, &group);
        if (!nl)
            break;
        line = nl + 1;
    }
    free(group);
}

/* The raw value of key, the last one given; NULL when absent. */
static const char *keyfile_raw(const struct keyfile *kf, const char *key)
{
    for (size_t i = kf->n; i-- > 0;)
        if (strcmp(kf->kv[i].key, key) == 0)
            return kf->kv[i].value;
    return NULL;
}

/* Unescape a string value; false on a bad escape. */
static bool unescape(const char *raw, char **out)
{
    char *q = xcheck(malloc(strlen(raw) + 1)), *o = q;

    for (const char *p = raw; *p; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        switch (*++p) {
        case 's': *o++ = ' '; break;
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case '\\': *o++ = '\\'; break;
        default: free(q); return false;
        }
    }
    *o = 0;
    *out = q;
    return true;
}

/* String key into *dst (replacing it) when present. */
static void get_string(const struct keyfile *kf, const char *path,
                       const char *key, char **dst)
{
    const char *raw = keyfile_raw(kf, key);
    char *v;

    if (!raw)
        return;
    if (!unescape(raw, &v))
        load_failed(path, "Key file contains key ?%s? which has a value that "
                    "cannot be interpreted.", key);
    free(*dst);
    *dst = v;
}

/* Boolean key ("true"/"1"/"false"/"0", trailing blanks ignored). */
static void get_bool(const struct keyfile *kf, const char *path,
                     const char *key, bool *dst)
{
    const char *raw = keyfile_raw(kf, key);
    size_t n;

    if (!raw)
        return;
    n = strlen(raw);
    while (n && is_space(raw[n - 1]))
        n--;
    if ((n == 4 && !memcmp(raw, "true", 4)) || (n == 1 && raw[0] == '1'))
        *dst = true;
    else if ((n == 5 && !memcmp(raw, "false", 5)) || (n == 1 && raw[0] == '0'))
        *dst = false;
    else
        load_failed(path, "Key file contains key ?%s? which has a value that "
                    "cannot be interpreted.", key);
}

/* The RPC list: "blacklist" (deprecated, preferred) or "block-rpcs". */
static void get_blocked(const struct keyfile *kf, const char *path,
                        struct ga_config *c)
{
    const char *key = "block-rpcs";
    char *v = NULL;

    if (keyfile_raw(kf, "blacklist")) {
        ga_glib_message("WARNING", "config using deprecated 'blacklist' key, "
                        "should be replaced with the 'block-rpcs' key.");
        key = "blacklist";
    }
    get_string(kf, path, key, &v);
    if (v)
        ga_strlist_add_split(&c->blocked, v);
    free(v);
}

/* See ga.h. */
void ga_config_load(struct ga_config *c, const char *path)
{
    struct keyfile kf = { 0 };
    size_t len = 0;
    char *text = read_conf(path, &len);

    if (!text)
        return;
    keyfile_parse(&kf, path, text);
    get_bool(&kf, path, "daemon", &c->daemonize);
    get_string(&kf, path, "method", &c->method);
    get_string(&kf, path, "path", &c->path);
    get_string(&kf, path, "logfile", &c->logfile);
    get_string(&kf, path, "pidfile", &c->pidfile);
    get_string(&kf, path, "fsfreeze-hook", &c->hook);
    get_string(&kf, path, "statedir", &c->statedir);
    get_bool(&kf, path, "verbose", &c->verbose);
    get_bool(&kf, path, "retry-path", &c->retry_path);
    get_blocked(&kf, path, c);
    for (size_t i = 0; i < kf.n; i++) {
        free(kf.kv[i].key);
        free(kf.kv[i].value);
    }
    free(kf.kv);
    free(text);
}

/* Append key=value with the key file's escapes for a string value. */
static void put_string(struct vd_buf *b, const char *key, const char *v)
{
    bool leading = true;

    vd_buf_printf(b, "%s=", key);
    for (const char *p = v; *p; p++) {
        if (*p == ' ' && leading) {
            vd_buf_adds(b, "\\s");
            continue;
        }
        if (*p == '\t' && leading) {
            vd_buf_adds(b, "\\t");
            continue;
        }
        leading = false;
        switch (*p) {
        case '\n': vd_buf_adds(b, "\\n"); break;
        case '\r': vd_buf_adds(b, "\\r"); break;
        case '\\': vd_buf_adds(b, "\\\\"); break;
        default: vd_buf_addc(b, *p); break;
        }
    }
    vd_buf_addc(b, '\n');
}

/* See ga.h: the keys in qemu-ga's order, unset strings left out. */
char *ga_config_dump(const struct ga_config *c)
{
    struct vd_buf b = { 0 }, list = { 0 };
    char *s;

    vd_buf_adds(&b, "[" GROUP "]\n");
    vd_buf_printf(&b, "daemon=%s\n", c->daemonize ? "true" : "false");
    put_string(&b, "method", c->method);
    put_string(&b, "path", c->path);
    if (c->logfile)
        put_string(&b, "logfile", c->logfile);
    put_string(&b, "pidfile", c->pidfile);
    if (c->hook)
        put_string(&b, "fsfreeze-hook", c->hook);
    put_string(&b, "statedir", c->statedir);
    vd_buf_printf(&b, "verbose=%s\n", c->verbose ? "true" : "false");
    vd_buf_printf(&b, "retry-path=%s\n", c->retry_path ? "true" : "false");
    for (size_t i = 0; i < c->blocked.n; i++) {
        if (i)
            vd_buf_addc(&list, ',');
        vd_buf_adds(&list, c->blocked.v[i]);
    }
    s = vd_buf_steal(&list);
    put_string(&b, "block-rpcs", s ? s : "");
    free(s);
    return xcheck(vd_buf_steal(&b));
}
