/* SPDX-License-Identifier: BSD-3-Clause */
/* Output and option helpers shared by the commands: virsh's aligned
 * tables, its human sizes, option lookup and scaled sizes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Index of name among c's options (-1 if the command has none such). */
static int index_of(const struct cmd_ctx *c, const char *name)
{
    for (int i = 0; i < CMD_MAX_OPTS && c->def->opts[i].name; i++)
        if (!strcmp(c->def->opts[i].name, name))
            return i;
    return -1;
}

const char *opt_str(const struct cmd_ctx *c, const char *name)
{
    int i = index_of(c, name);

    return i >= 0 && c->set[i] ? c->val[i] : NULL;
}

bool opt_bool(const struct cmd_ctx *c, const char *name)
{
    int i = index_of(c, name);

    return i >= 0 && c->set[i];
}

int opt_size(const struct cmd_ctx *c, const char *name, uint64_t *out, bool *given)
{
    const char *s = opt_str(c, name);
    char *end;

    *given = s != NULL;
    if (!s)
        return 0;
    errno = 0;
    *out = strtoull(s, &end, 10);
    if (!*s || *s == '-' || *s == '+' || errno || end == s) {
        pool_err("Malformed size %s", s);
        return -1;
    }
    if (pool_scale(end, out, 1) < 0) {
        pool_err("Malformed size %s", s);
        pool_err("invalid argument: unknown suffix '%s'", end);
        return -1;
    }
    return 0;
}

void table_init(struct table *t, const char **hdr, size_t ncols)
{
    memset(t, 0, sizeof(*t));
    t->hdr = hdr;
    t->ncols = ncols;
}

void table_add(struct table *t, const char **row)
{
    t->cells = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(char *));
    if (!t->cells)
        pool_oom();
    for (size_t i = 0; i < t->ncols; i++)
        t->cells[t->nrows * t->ncols + i] = xstrdup(row[i]);
    t->nrows++;
}

/* One line: a leading space, cells padded to their columns, 3 spaces apart,
 * the last cell not padded. */
static void print_row(const char *const *cells, const size_t *w, size_t n)
{
    putchar(' ');
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n)
            printf("%-*s   ", (int)w[i], cells[i]);
        else
            fputs(cells[i], stdout);
    }
    putchar('\n');
}

void table_print(struct table *t)
{
    size_t *w = calloc(t->ncols, sizeof(*w)), total = 1;

    if (!w)
        pool_oom();
    for (size_t i = 0; i < t->ncols; i++) {
        w[i] = strlen(t->hdr[i]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t l = strlen(t->cells[r * t->ncols + i]);
            w[i] = l > w[i] ? l : w[i];
        }
        total += w[i] + (i ? 3 : 0);
    }
    print_row(t->hdr, w, t->ncols);
    for (size_t i = 0; i < total + 2; i++)
        putchar('-');
    putchar('\n');
    for (size_t r = 0; r < t->nrows; r++)
        print_row((const char *const *)t->cells + r * t->ncols, w, t->ncols);
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(w);
}

char *pretty_size(uint64_t v)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    double d = (double)v;
    int u = 0;

    while (u < 6 && v >= (1ULL << (10 * (u + 1))))
        u++;
    for (int i = 0; i < u; i++)
        d /= 1024.0;
    return xasprintf("%.2f %s", d, units[u]);
}
