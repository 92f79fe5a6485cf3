/* SPDX-License-Identifier: BSD-3-Clause */
/* The gluster driver's names and options, apart from libgfapi (so that the
 * fuzz harness can build them without it). */
#ifndef VD_PROTOCOL_GLUSTER_CONFIG_H
#define VD_PROTOCOL_GLUSTER_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/opts.h"

#define GL_DEFAULT_DEBUG 4
#define GL_DEBUG_MAX 9
#define GL_DEFAULT_TIMEOUT 30          /* seconds: connect, ping, one request */
#define GL_TIMEOUT_MIN 5
#define GL_TIMEOUT_MAX 1013            /* protocol/client's ping-timeout limit */
#define GL_MAX_SERVERS 64

#define GL_URI_USAGE "Usage: file=gluster[+transport]://[host[:port]]volume/path[?socket=...]" \
    "[,file.debug=N][,file.logfile=/path/filename.log]"
#define GL_JSON_USAGE "Usage: -drive driver=qcow2,file.driver=gluster,file.volume=testvol," \
    "file.path=/path/a.qcow2[,file.debug=9][,file.logfile=/path/filename.log]," \
    "file.server.0.type=inet,file.server.0.host=1.2.3.4,file.server.0.port=24007," \
    "file.server.1.transport=unix,file.server.1.path=/var/run/glusterd.socket ..."

enum gl_type { GL_INET, GL_UNIX };

struct gl_server {
    enum gl_type type;
    char *host, *port;      /* inet */
    char *socket;           /* unix */
};

/* Where and what: everything a name or the options say. */
struct gl_config {
    char *volume, *path, *logfile;
    struct gl_server servers[GL_MAX_SERVERS];
    size_t nservers;
    uint64_t debug, timeout;
    bool from_uri;          /* named by a URL: that is the node's name */
    bool rdma;              /* gluster+rdma: QEMU warns and uses tcp */
};


/* The configuration from a node's options: a URL in "filename" wins over
 * the volume/path/server.N.* keys; QEMU's messages on error. */
int gl_parse_config(const vd_opts *o, struct gl_config *c);
void gl_free_config(struct gl_config *c);
/* A key naming the volume on the server list (one connection per key). */
char *gl_conn_key(const struct gl_config *c);
/* The json: name QEMU gives a node opened by options (NULL: no memory). */
char *gl_json_name(const vd_opts *o);

#endif
