/* SPDX-License-Identifier: BSD-3-Clause */
/* Parallels disks described by a DiskDescriptor.xml (parallels-xml.c):
 * the descriptor's storages, each a range of sectors held by the image of
 * the top snapshot (a plain file or an expanding parallels image). */
#ifndef VD_FORMAT_PARALLELS_XML_H
#define VD_FORMAT_PARALLELS_XML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdisk/driver.h"

#define PRL_XML_MAX_BYTES    (1u << 20)
#define PRL_XML_MAX_STORAGES 64u

struct prl_xml_storage {
    uint64_t start, end;           /* sectors of the disk */
    char *file;                    /* image of the top snapshot, as written */
    bool plain;                    /* Plain (raw) or Compressed (parallels) */
    vd_node *child;
};

struct prl_xml {
    uint64_t sectors;              /* Disk_size */
    struct prl_xml_storage st[PRL_XML_MAX_STORAGES];
    uint32_t n;
};

/* Does the file start like a disk descriptor? */
bool prl_xml_detect(const uint8_t *buf, size_t len);
/* Parse descriptor text into *out (checked: storages contiguous from 0 to
 * Disk_size, one image of the top snapshot each, relative file names).
 * Loads the XML module on first use; an error if it cannot. */
int prl_xml_parse(const char *text, size_t len, struct prl_xml *out);
/* A parser of descriptor text of at most PRL_XML_MAX_BYTES into a zeroed
 * *out, as prl_xml_parse. */
typedef int prl_xml_parser(const char *text, size_t len, struct prl_xml *out);
/* Called by the XML module (parallels-xml-parse.c) when it is loaded. */
void prl_xml_register_parser(prl_xml_parser *parse);
/* Read the descriptor from n->file, parse it and open the images. */
int prl_xml_open(vd_node *n, struct prl_xml **out);
void prl_xml_free(struct prl_xml *x);
int prl_xml_pread(struct prl_xml *x, uint64_t off, uint64_t len, uint8_t *buf);
int prl_xml_pwrite(struct prl_xml *x, uint64_t off, uint64_t len, const uint8_t *buf);
int prl_xml_flush(struct prl_xml *x);
int prl_xml_block_status(struct prl_xml *x, uint64_t off, uint64_t len, uint64_t *pnum,
                         uint64_t *map, vd_node **file);

#endif
