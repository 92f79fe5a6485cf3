# SPDX-License-Identifier: BSD-3-Clause
"""Generators of differencing VDI and VHD images, which qemu-img cannot
make.  A child is built per its spec on top of a parent qemu-img made (or
another generated child), and the guest content the child must read is
built beside it in Python: the parent's bytes with the child's blocks (VDI)
or present sectors (VHD) laid over them.

VDI (VirtualBox's VDIHEADER1): the child is a dynamic image of type 4
(diff) whose link UUID (0x1a8) is the parent's creation UUID and whose
parent modification UUID (0x1b8) is the parent's modification UUID; block
map entries 0xffffffff read from the parent, 0xfffffffe read as zeroes.

VHD (Microsoft's "Virtual Hard Disk Image Format Specification"): the
child is a dynamic image of type 4 whose dynamic header holds the parent's
UUID and time stamp, its name (UTF-16BE) and parent locators (W2ru
relative and W2ku absolute paths in UTF-16LE, MacX a UTF-8 file URL);
a sector whose bitmap bit is clear reads from the parent."""
import os
import struct
import uuid

M = 1 << 20
VDI_FREE, VDI_ZERO = 0xffffffff, 0xfffffffe
V_TYPE, V_OFFSET_BMAP, V_OFFSET_DATA, V_DISK_SIZE = 0x4c, 0x154, 0x158, 0x170
V_BLOCKS, V_ALLOCATED = 0x180, 0x184
V_UUID_IMAGE, V_UUID_MODIFY, V_UUID_LINK, V_UUID_PARENT = 0x188, 0x198, 0x1a8, 0x1b8


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---- VDI ----

def vdi_field(path, off, fmt):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def vdi_uuids(path):
    """(creation, modification, link, parent modification) UUID bytes."""
    h = read(path)[:512]
    return tuple(h[o:o + 16] for o in (V_UUID_IMAGE, V_UUID_MODIFY, V_UUID_LINK,
                                       V_UUID_PARENT))


def make_vdi_child(parent, child, blocks, link=None, parent_modify=None, size=None,
                   image_uuid=None, vtype=4):
    """Write a differencing VDI child of parent: blocks maps a block index
    to 1 MiB of data, or to "zero" for a zero block; other blocks are never
    written.  link/parent_modify default to the parent's creation and
    modification UUIDs (for hostile images); size to the parent's."""
    ph = bytearray(read(parent)[:512])
    p_image, p_modify = ph[V_UUID_IMAGE:V_UUID_IMAGE + 16], ph[V_UUID_MODIFY:V_UUID_MODIFY + 16]
    h = bytearray(ph)
    disk = size if size is not None else struct.unpack_from("<Q", ph, V_DISK_SIZE)[0]
    nblocks = (disk + M - 1) // M
    bmap_len = (nblocks * 4 + 511) // 512 * 512
    data_off = 512 + bmap_len
    struct.pack_into("<I", h, V_TYPE, vtype)
    struct.pack_into("<I", h, V_OFFSET_BMAP, 512)
    struct.pack_into("<I", h, V_OFFSET_DATA, data_off)
    struct.pack_into("<Q", h, V_DISK_SIZE, disk)
    struct.pack_into("<I", h, V_BLOCKS, nblocks)
    h[V_UUID_IMAGE:V_UUID_IMAGE + 16] = image_uuid or uuid.uuid4().bytes
    h[V_UUID_MODIFY:V_UUID_MODIFY + 16] = uuid.uuid4().bytes
    h[V_UUID_LINK:V_UUID_LINK + 16] = p_image if link is None else link
    h[V_UUID_PARENT:V_UUID_PARENT + 16] = p_modify if parent_modify is None else parent_modify
    bmap = bytearray(b"\xff" * bmap_len)
    body = bytearray()
    count = 0
    for i in sorted(blocks):
        if blocks[i] == "zero":
            struct.pack_into("<I", bmap, i * 4, VDI_ZERO)
            continue
        assert len(blocks[i]) == M
        struct.pack_into("<I", bmap, i * 4, count)
        body += blocks[i]
        count += 1
    struct.pack_into("<I", h, V_ALLOCATED, count)
    with open(child, "wb") as f:
        f.write(bytes(h) + bytes(bmap) + bytes(body))


def vdi_expected(parent_raw, blocks, size):
    """The guest content of a child over a parent reading parent_raw."""
    out = bytearray(parent_raw[:size].ljust(size, b"\0"))
    for i, d in blocks.items():
        end = min(size, (i + 1) * M)
        out[i * M:end] = bytes(end - i * M) if d == "zero" else d[:end - i * M]
    return bytes(out)


def pattern_block(seed, length=M):
    """length bytes of a pattern that differs per seed and per sector."""
    b = bytearray(length)
    for s in range(0, length, 512):
        b[s:s + 512] = bytes([(seed * 7 + s // 512) & 0xff]) * 512
    return bytes(b)


# ---- VHD ----

VHD_EPOCH = 946684800
W2RU, W2KU, MAC, MACX = b"W2ru", b"W2ku", b"Mac ", b"MacX"


def vhd_checksum(b, at):
    return ~(sum(b) - sum(b[at:at + 4])) & 0xffffffff


def vhd_footer_of(path):
    """The footer of a VHD (the copy at 0 of a dynamic one, else the end)."""
    d = read(path)
    return d[:512] if d[:8] == b"conectix" else d[-512:]


def vhd_footer(size, vtype, data_offset, uid, timestamp=0):
    f = bytearray(512)
    cyl, heads, secs = 65535, 16, 255
    struct.pack_into(">8sIIQI4sI4sQQHBBI", f, 0, b"conectix", 2, 0x10000, data_offset,
                     timestamp, b"vdsk", 0x10000, b"Wi2k", size, size, cyl, heads, secs,
                     vtype)
    f[68:84] = uid
    struct.pack_into(">I", f, 64, vhd_checksum(f, 64))
    return f


def utf16(s, enc):
    return s.encode(enc)


def make_vhd_child(parent, child, sectors, block_size=2 * M, locators=None,
                   unicode_name=None, parent_uuid=None, parent_ts=None, size=None,
                   child_uuid=None, header_extra=None):
    """Write a differencing VHD child of parent.  sectors maps a sector
    number to 512 bytes present in the child (bitmap bit set); the rest
    read from the parent.  locators: list of (code, bytes) placed after
    the BAT, or of (code, bytes, offset, length, space) taken as given
    (hostile images); by default a W2ru relative and a W2ku absolute
    path.  The parent UUID and time stamp default to the parent's footer
    UUID and file modification time."""
    pf = vhd_footer_of(parent)
    psize = struct.unpack_from(">Q", pf, 48)[0]
    size = psize if size is None else size
    entries = (size + block_size - 1) // block_size
    bat_off = 512 + 1024
    bat_len = (entries * 4 + 511) // 512 * 512
    pname = os.path.basename(parent)
    if locators is None:
        rel = os.path.relpath(os.path.abspath(parent), os.path.dirname(os.path.abspath(child)))
        locators = [(W2RU, utf16(".\\" + rel.replace("/", "\\"), "utf-16-le")),
                    (W2KU, utf16(os.path.abspath(parent), "utf-16-le"))]
    # locator data: one sector run each, after the BAT
    at = bat_off + bat_len
    placed, loc_bytes = [], bytearray()
    for loc in locators:
        if len(loc) == 2:
            code, data = loc
            space = (len(data) + 511) // 512 * 512
            placed.append((code, space, len(data), at + len(loc_bytes)))
            loc_bytes += data.ljust(space, b"\0")
        else:
            code, data, off, length, space = loc
            placed.append((code, space, length, off))
    blocks_start = at + len(loc_bytes)
    bm_size = (block_size // 4096 + 511) // 512 * 512
    spb = block_size // 512
    by_block = {}
    for s, d in sectors.items():
        by_block.setdefault(s // spb, {})[s % spb] = d
    bat = bytearray(b"\xff" * bat_len)
    body = bytearray()
    for bi in sorted(by_block):
        struct.pack_into(">I", bat, bi * 4, (blocks_start + len(body)) // 512)
        bm = bytearray(bm_size)
        data = bytearray(block_size)
        for s, d in by_block[bi].items():
            bm[s // 8] |= 0x80 >> (s % 8)
            data[s * 512:(s + 1) * 512] = d
        body += bm + data
    h = bytearray(1024)
    puid = pf[68:84] if parent_uuid is None else parent_uuid
    ts = (int(os.stat(parent).st_mtime) - VHD_EPOCH) & 0xffffffff if parent_ts is None \
        else parent_ts
    struct.pack_into(">8sQQIII", h, 0, b"cxsparse", (1 << 64) - 1, bat_off, 0x10000,
                     entries, block_size)
    h[40:56] = puid
    struct.pack_into(">I", h, 56, ts)
    name = utf16(pname if unicode_name is None else unicode_name, "utf-16-be")[:512]
    h[64:64 + len(name)] = name
    for i, (code, space, length, off) in enumerate(placed[:8]):
        struct.pack_into(">4sIIIQ", h, 576 + 24 * i, code, space, length, 0, off)
    if header_extra:
        header_extra(h)
    struct.pack_into(">I", h, 36, vhd_checksum(h, 36))
    foot = vhd_footer(size, 4, 512, child_uuid or uuid.uuid4().bytes)
    with open(child, "wb") as f:
        f.write(bytes(foot) + bytes(h) + bytes(bat) + bytes(loc_bytes) + bytes(body) +
                bytes(foot))


def vhd_expected(parent_raw, sectors, size):
    out = bytearray(parent_raw[:size].ljust(size, b"\0"))
    for s, d in sectors.items():
        out[s * 512:(s + 1) * 512] = d
    return bytes(out)
