# SPDX-License-Identifier: BSD-3-Clause
"""Build the vmdk extents QEMU reads but cannot create, at test time (no
binary images in git): VMDK3 "COWD" sparse extents (vmfsSparse) and ESXi
seSparse extents, with the descriptor files that name them.  The layouts
follow what QEMU 7.2's block/vmdk.c reads:

COWD: sector 0 holds "COWD" then little-endian 32-bit version, flags,
disk sectors, granularity (sectors per grain), grain directory sector,
directory entries, file sectors, geometry; grain tables hold 4096 32-bit
entries (grain sectors, 0 for unallocated).

seSparse: a 512-byte constant header (magic 0xcafebabe, version
0x200000001, capacity, grain size 8 sectors, grain table size 64 sectors,
then the offsets/sizes in sectors of the volatile header, journal header,
journal, grain directory, grain tables, free bitmap, backmap and grains),
a volatile header (magic 0xcafecafe, replay_journal 0); directory entries
are 64-bit, 0x10000000_<table index>; table entries are 64-bit with the
type in the top nibble: 0 unallocated, 1 unmapped, 2 zero, 3 allocated
(grain index split as bits 48..59 = index & 0xfff, bits 0..47 = index >> 12).
"""
import struct

SECTOR = 512
COWD_GTES = 4096
SE_GTES = 4096                 # 64 sectors of 64-bit entries
SE_GRAIN = 8                   # sectors


def desc(create_type, extents, cid=0x1234, parent_cid=0xffffffff, extra=""):
    """Descriptor text: extents is a list of (sectors, type, file name)."""
    lines = "".join('RW %d %s "%s"\n' % e for e in extents)
    return ("# Disk DescriptorFile\nversion=1\nCID=%x\nparentCID=%x\ncreateType=\"%s\"\n%s"
            "\n# Extent description\n%s\n# The Disk Data Base\n#DDB\n\n"
            "ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n"
            % (cid, parent_cid, create_type, extra, lines))


def cowd(capacity, granularity=16, grains=None, gt_missing=(), gd_entries=None,
         text_at_0x200=None):
    """A COWD extent of capacity sectors: grains maps grain index -> bytes
    (granularity * 512 long, or shorter: zero padded).  Grain tables in
    gt_missing get directory entry 0.  Returns the file's bytes."""
    grains = grains or {}
    per_gt = COWD_GTES * granularity
    n_gt = -(-capacity // per_gt) if gd_entries is None else gd_entries
    gd_sector = 4
    gd_sectors = max(1, -(-n_gt * 4 // SECTOR))
    gt_sector = gd_sector + gd_sectors
    gt_sectors = COWD_GTES * 4 // SECTOR
    data_sector = gt_sector + n_gt * gt_sectors
    data_sector = -(-data_sector // granularity) * granularity if granularity else data_sector
    gd = [0 if i in gt_missing else gt_sector + i * gt_sectors for i in range(n_gt)]
    gts = [[0] * COWD_GTES for _ in range(n_gt)]
    body = bytearray()
    for k, g in enumerate(sorted(grains)):
        gts[g // COWD_GTES][g % COWD_GTES] = data_sector + k * granularity
        body += grains[g].ljust(granularity * SECTOR, b"\0")
    file_sectors = data_sector + len(body) // SECTOR
    out = bytearray(data_sector * SECTOR)
    out[0:4] = b"COWD"
    struct.pack_into("<10I", out, 4, 1, 3, capacity, granularity, gd_sector, n_gt,
                     file_sectors, 0, 16, 63)
    if text_at_0x200 is not None:
        t = text_at_0x200.encode()
        out[0x200:0x200 + len(t)] = t
    for i, v in enumerate(gd):
        struct.pack_into("<I", out, gd_sector * SECTOR + 4 * i, v)
    for i in range(n_gt):
        if i not in gt_missing:
            struct.pack_into("<%dI" % COWD_GTES, out, (gt_sector + i * gt_sectors) * SECTOR,
                             *gts[i])
    return bytes(out + body)


SE_UNALLOC, SE_UNMAPPED, SE_ZERO, SE_DATA = 0, 1, 2, 3


def se_entry(kind, index=0):
    if kind != SE_DATA:
        return kind << 60
    return (3 << 60) | ((index & 0xfff) << 48) | (index >> 12)


def sesparse(capacity, grains=None, zero=(), unmapped=(), header=None, volatile=None,
             gd_entries=None, gt_missing=(), bad_entries=None):
    """An seSparse extent of capacity sectors: grains maps grain index
    (4 KiB grains) -> bytes; zero / unmapped list grain indexes with those
    types; header / volatile override header fields by name; bad_entries
    maps grain index -> raw table entry.  Returns the file's bytes."""
    grains = grains or {}
    per_gt = SE_GTES * SE_GRAIN
    n_gt = -(-capacity // per_gt) if gd_entries is None else gd_entries
    gd_sectors = max(1, -(-n_gt * 8 // SECTOR))
    gt_sectors = SE_GTES * 8 // SECTOR
    h = dict(magic=0xcafebabe, version=0x200000001, capacity=capacity, grain_size=SE_GRAIN,
             grain_table_size=gt_sectors, flags=0, reserved1=0, reserved2=0, reserved3=0,
             reserved4=0, volatile_header_offset=1, volatile_header_size=1,
             journal_header_offset=2, journal_header_size=1, journal_offset=3,
             journal_size=1, grain_dir_offset=4, grain_dir_size=gd_sectors,
             grain_tables_offset=4 + gd_sectors, grain_tables_size=n_gt * gt_sectors,
             free_bitmap_offset=0, free_bitmap_size=0, backmap_offset=0, backmap_size=0)
    h["grains_offset"] = h["grain_tables_offset"] + h["grain_tables_size"]
    h["grains_size"] = len(grains) * SE_GRAIN
    h.update(header or {})
    v = dict(magic=0xcafecafe, free_gt_number=0, next_txn_seq_number=1, replay_journal=0)
    v.update(volatile or {})
    names = ["magic", "version", "capacity", "grain_size", "grain_table_size", "flags",
             "reserved1", "reserved2", "reserved3", "reserved4", "volatile_header_offset",
             "volatile_header_size", "journal_header_offset", "journal_header_size",
             "journal_offset", "journal_size", "grain_dir_offset", "grain_dir_size",
             "grain_tables_offset", "grain_tables_size", "free_bitmap_offset",
             "free_bitmap_size", "backmap_offset", "backmap_size", "grains_offset",
             "grains_size"]
    base = 4 + gd_sectors + n_gt * gt_sectors
    out = bytearray(base * SECTOR)
    struct.pack_into("<26Q", out, 0, *[h[k] & (2 ** 64 - 1) for k in names])
    struct.pack_into("<4Q", out, SECTOR, v["magic"], v["free_gt_number"],
                     v["next_txn_seq_number"], v["replay_journal"])
    gts = [[0] * SE_GTES for _ in range(n_gt)]
    body = bytearray()
    for k, g in enumerate(sorted(grains)):
        gts[g // SE_GTES][g % SE_GTES] = se_entry(SE_DATA, k)
        body += grains[g].ljust(SE_GRAIN * SECTOR, b"\0")
    for g in zero:
        gts[g // SE_GTES][g % SE_GTES] = se_entry(SE_ZERO)
    for g in unmapped:
        gts[g // SE_GTES][g % SE_GTES] = se_entry(SE_UNMAPPED)
    for g, raw in (bad_entries or {}).items():
        gts[g // SE_GTES][g % SE_GTES] = raw
    for i in range(n_gt):
        gde = 0 if i in gt_missing else (0x1000000000000000 | i)
        struct.pack_into("<Q", out, 4 * SECTOR + 8 * i, gde)
        struct.pack_into("<%dQ" % SE_GTES, out, (4 + gd_sectors + i * gt_sectors) * SECTOR,
                         *gts[i])
    return bytes(out + body)


def write_image(dirpath, name, create_type, ext_type, extent_bytes, capacity,
                ext_name=None, **kw):
    """Write extent_bytes as <name minus .vmdk>-<kind>.vmdk and a descriptor
    name naming it; returns the descriptor's path."""
    ext_name = ext_name or name.replace(".vmdk", "-ext.vmdk")
    with open(dirpath / ext_name, "wb") as f:
        f.write(extent_bytes)
    with open(dirpath / name, "w") as f:
        f.write(desc(create_type, [(capacity, ext_type, ext_name)], **kw))
    return dirpath / name
