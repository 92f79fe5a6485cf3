/* SPDX-License-Identifier: BSD-3-Clause */
/* URI parsing (RFC 3986) for protocol drivers: nbd://, ssh://, iscsi://... */
#ifndef VD_UTIL_URI_H
#define VD_UTIL_URI_H

#include <stddef.h>

struct vd_uri {
    char *scheme;     /* "nbd+unix" */
    char *user;       /* userinfo before ':' or NULL */
    char *password;   /* after ':' or NULL */
    char *host;       /* without [] for IPv6, or NULL */
    int port;         /* -1 when absent */
    char *path;       /* percent-decoded, "" when absent */
    char *query;      /* raw query without '?', or NULL */
    char *fragment;   /* or NULL */
};

/* Parse; -EINVAL with a message on malformed input. */
int vd_uri_parse(const char *s, struct vd_uri *u);
void vd_uri_free(struct vd_uri *u);
/* Look up a query parameter (percent-decoded); caller frees, NULL if absent. */
char *vd_uri_query_param(const struct vd_uri *u, const char *name);
/* Percent-decode into a new string (NULL on bad escape). */
char *vd_uri_decode(const char *s, size_t len);

#endif
