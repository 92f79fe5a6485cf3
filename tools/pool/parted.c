/* SPDX-License-Identifier: BSD-3-Clause */
/* Readers of parted's listings for the disk pool backend: "unit B print
 * free" (label, partitions, free extents) and the BIOS geometry line of
 * "unit chs print".  Kept apart from the commands so the fuzz harness can
 * feed them any text; every number is checked and the table is bounded. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parted.h"

/* "123B" into bytes; -1 if malformed. */
static int bytes_of(const char *s, uint64_t *out)
{
    char *end;

    if (!isdigit((unsigned char)s[0]))
        return -1;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno || strcmp(end, "B") ? -1 : 0;
}

/* Split line into whitespace-separated words (in place): the count. */
static size_t words(char *line, char **w, size_t max)
{
    size_t n = 0;
    char *save = NULL;

    for (char *t = strtok_r(line, " \t", &save); t && n < max; t = strtok_r(NULL, " \t", &save))
        w[n++] = t;
    return n;
}

/* One row of the listing (number, start, end, size, [type]) into t. */
static int parse_row(struct part_table *t, char *line, bool dos)
{
    char *w[8];
    size_t n = words(line, w, 8);
    struct part *p = &t->p[t->n];
    uint64_t end;
    /* free space rows have no number: they start with a byte count */
    bool free_ = n >= 5 && !isdigit((unsigned char)w[0][strlen(w[0]) - 1]) &&
                 !strcmp(w[n - 2], "Free") && !strcmp(w[n - 1], "Space");
    int first = free_ ? 0 : 1;
    char *num_end;

    if (n < 3 || t->n >= PARTED_MAX_PARTS)
        return -1;
    memset(p, 0, sizeof(*p));
    if (!free_) {
        unsigned long v = strtoul(w[0], &num_end, 10);
        if (!isdigit((unsigned char)w[0][0]) || *num_end || v == 0 || v > 4096 || n < 4)
            return -1;
        p->num = (unsigned)v;
    }
    if (bytes_of(w[first], &p->start) < 0 || bytes_of(w[first + 1], &end) < 0 ||
        end < p->start || end == UINT64_MAX)
        return -1;
    p->end = end + 1;
    if (free_)
        p->kind = PART_FREE;
    else if (dos && n >= 5 && !strcmp(w[4], "extended"))
        p->kind = PART_EXTENDED;
    else if (dos && n >= 5 && !strcmp(w[4], "logical"))
        p->kind = PART_LOGICAL;
    else
        p->kind = PART_PRIMARY;
    t->n++;
    return 0;
}

/* Free extents inside the extended partition hold logical partitions. */
static void mark_logical_free(struct part_table *t)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->p[i].kind != PART_EXTENDED)
            continue;
        for (size_t j = 0; j < t->n; j++)
            if (t->p[j].kind == PART_FREE && t->p[j].start >= t->p[i].start &&
                t->p[j].end <= t->p[i].end)
                t->p[j].kind = PART_FREE_LOGICAL;
    }
}

/* On dos labels what lies past the last whole cylinder is no free space
 * (libparted keeps it as metadata; parted's listing shows it as free). */
void parted_clamp_free(struct part_table *t)
{
    size_t w = 0;

    for (size_t i = 0; i < t->n; i++) {
        struct part p = t->p[i];
        if ((p.kind == PART_FREE || p.kind == PART_FREE_LOGICAL) && p.end > t->limit) {
            if (p.start >= t->limit)
                continue;
            p.end = t->limit;
        }
        t->p[w++] = p;
    }
    t->n = w;
}

int parted_parse_listing(char *text, struct part_table *t)
{
    char *save = NULL;
    bool rows = false;

    memset(t, 0, sizeof(*t));
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(l, "Partition Table: ", 17)) {
            snprintf(t->label, sizeof(t->label), "%s", l + 17);
            continue;
        }
        if (!strncmp(l, "Number", 6)) {
            rows = true;
            continue;
        }
        if (rows && parse_row(t, l, !strcmp(t->label, "msdos")) < 0)
            return -1;
    }
    mark_logical_free(t);
    return 0;
}

int parted_parse_geometry(const char *text, uint64_t *cyl, uint64_t *limit)
{
    const char *p = strstr(text, "geometry: ");
    unsigned long c, h, s;

    if (!p || sscanf(p, "geometry: %lu,%lu,%lu", &c, &h, &s) != 3 || !h || !s ||
        h > 65536 || s > 65536 || c > UINT32_MAX)
        return -1;
    *cyl = (uint64_t)h * s * PARTED_SECTOR;
    *limit = (uint64_t)c * *cyl;
    return 0;
}
