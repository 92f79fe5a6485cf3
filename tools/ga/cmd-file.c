/* SPDX-License-Identifier: BSD-3-Clause */
/* guest-file-open/close/read/write/seek/flush: files opened through stdio
 * streams as qemu-ga opens them, numbered by the handle counter kept in
 * the state directory, payloads in base64 (strictly checked). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmds.h"

#define READ_COUNT_DEFAULT 4096
#define READ_COUNT_MAX (48 << 20)
#define MAX_FILES 1024

struct handle {
    int64_t id;
    FILE *f;
};

static struct handle files[MAX_FILES];
static size_t nfiles;

/* open(2) flags for an fopen mode, as qemu-ga maps them. */
static int mode_flags(const char *mode)
{
    static const struct { const char *m[3]; int flags; } tab[] = {
        { { "r", "rb", NULL }, O_RDONLY },
        { { "w", "wb", NULL }, O_WRONLY | O_CREAT | O_TRUNC },
        { { "a", "ab", NULL }, O_WRONLY | O_CREAT | O_APPEND },
        { { "r+", "rb+", "r+b" }, O_RDWR },
        { { "w+", "wb+", "w+b" }, O_RDWR | O_CREAT | O_TRUNC },
        { { "a+", "ab+", "a+b" }, O_RDWR | O_CREAT | O_APPEND },
    };

    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        for (size_t j = 0; j < 3 && tab[i].m[j]; j++)
            if (strcmp(tab[i].m[j], mode) == 0)
                return tab[i].flags;
    return -1;
}

/* The open stream of handle id, or NULL with e set. */
static struct handle *find(int64_t id, struct ga_err *e)
{
    for (size_t i = 0; i < nfiles; i++)
        if (files[i].id == id)
            return &files[i];
    ga_error(e, "handle '%" PRId64 "' has not been found", id);
    return NULL;
}

/* guest-file-open */
void ga_cmd_file_open(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    const char *path = vd_json_str(vd_json_get(args, "path"));
    const vd_json *m = vd_json_get(args, "mode");
    const char *mode = m ? vd_json_str(m) : "r";
    int flags = mode_flags(mode), fd;
    int64_t id;
    FILE *f;

    if (flags < 0) {
        ga_error(e, "invalid file open mode '%s'", mode);
        return;
    }
    fd = open(path, flags | O_CLOEXEC, 0666);
    f = fd >= 0 ? fdopen(fd, mode) : NULL;
    if (!f) {
        ga_error(e, "failed to open file '%s' (mode: '%s'): %s", path, mode,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 ||
        nfiles >= MAX_FILES || (id = ga_state_next_handle(e)) < 0) {
        ga_error(e, "failed to add handle to qmp handle table");
        fclose(f);
        return;
    }
    files[nfiles].id = id;
    files[nfiles].f = f;
    nfiles++;
    *ret = vd_json_new_int(id);
}

/* guest-file-close */
void ga_cmd_file_close(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct handle *h = find(vd_json_int(vd_json_get(args, "handle")), e);

    (void)ret;
    if (!h)
        return;
    if (fclose(h->f) == EOF)
        ga_error(e, "failed to close handle: %s", strerror(errno));
    *h = files[--nfiles];
}

/* guest-file-read */
void ga_cmd_file_read(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct handle *h = find(vd_json_int(vd_json_get(args, "handle")), e);
    const vd_json *c = vd_json_get(args, "count");
    int64_t count = c ? vd_json_int(c) : READ_COUNT_DEFAULT;
    unsigned char *buf;
    size_t n;
    char *b64;

    if (!h)
        return;
    if (count < 0 || count > READ_COUNT_MAX) {
        ga_error(e, "value '%" PRId64 "' is invalid for argument count", count);
        return;
    }
    buf = malloc((size_t)count + 1);
    if (!buf) {
        ga_error(e, "out of memory");
        return;
    }
    n = fread(buf, 1, (size_t)count, h->f);
    if (ferror(h->f)) {
        ga_error(e, "failed to read file: %s", strerror(errno));
        clearerr(h->f);
        free(buf);
        return;
    }
    b64 = ga_base64_encode(buf, n);
    free(buf);
    *ret = vd_json_new_object();
    vd_json_set_int(*ret, "count", (int64_t)n);
    vd_json_set_str(*ret, "buf-b64", b64 ? b64 : "");
    vd_json_set_bool(*ret, "eof", count > 0 && feof(h->f) != 0);   /* qemu-ga: 0 is never at EOF */
    free(b64);
}

/* guest-file-write */
void ga_cmd_file_write(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct handle *h = find(vd_json_int(vd_json_get(args, "handle")), e);
    const vd_json *c = vd_json_get(args, "count");
    size_t len;
    unsigned char *buf;
    int64_t count;
    size_t n;

    if (!h)
        return;
    buf = ga_base64_decode(vd_json_str(vd_json_get(args, "buf-b64")), &len, e);
    if (!buf)
        return;
    count = c ? vd_json_int(c) : (int64_t)len;
    if (count < 0 || (uint64_t)count > len) {
        ga_error(e, "value '%" PRId64 "' is invalid for argument count", count);
        free(buf);
        return;
    }
    n = fwrite(buf, 1, (size_t)count, h->f);
    free(buf);
    if (ferror(h->f)) {
        ga_error(e, "failed to write to file: %s", strerror(errno));
        clearerr(h->f);
        return;
    }
    *ret = vd_json_new_object();
    vd_json_set_int(*ret, "count", (int64_t)n);
    vd_json_set_bool(*ret, "eof", feof(h->f) != 0);
}

/* The SEEK_* of a whence argument, -1 with e set. */
static int whence_of(const vd_json *w, struct ga_err *e)
{
    if (vd_json_type(w) == VD_JSON_STRING) {
        const char *s = vd_json_str(w);
        return strcmp(s, "set") == 0 ? SEEK_SET : strcmp(s, "cur") == 0 ? SEEK_CUR : SEEK_END;
    }
    switch (vd_json_int(w)) {
    case 0: return SEEK_SET;
    case 1: return SEEK_CUR;
    case 2: return SEEK_END;
    default:
        ga_error(e, "invalid whence code %" PRId64, vd_json_int(w));
        return -1;
    }
}

/* guest-file-seek */
void ga_cmd_file_seek(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct handle *h = find(vd_json_int(vd_json_get(args, "handle")), e);
    int whence;

    if (!h || (whence = whence_of(vd_json_get(args, "whence"), e)) < 0)
        return;
    if (fseeko(h->f, (off_t)vd_json_int(vd_json_get(args, "offset")), whence) < 0) {
        ga_error(e, "failed to seek file: %s", strerror(errno));
        return;
    }
    clearerr(h->f);
    *ret = vd_json_new_object();
    vd_json_set_int(*ret, "position", (int64_t)ftello(h->f));
    vd_json_set_bool(*ret, "eof", feof(h->f) != 0);
}

/* guest-file-flush */
void ga_cmd_file_flush(const vd_json *args, vd_json **ret, struct ga_err *e)
{
    struct handle *h = find(vd_json_int(vd_json_get(args, "handle")), e);

    (void)ret;
    if (h && fflush(h->f) == EOF)
        ga_error(e, "failed to flush file: %s", strerror(errno));
}

/* Close every open handle (agent exit). */
void ga_files_close_all(void)
{
    while (nfiles)
        fclose(files[--nfiles].f);
}
