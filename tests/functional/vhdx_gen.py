# SPDX-License-Identifier: BSD-3-Clause
"""Edit vhdx images per [MS-VHDX], for tests: start from an image
qemu-img made and change headers, region tables, metadata items and BAT
entries, keeping (or deliberately breaking) their CRC-32C checksums.
Used to make what qemu-img cannot: 4096-byte logical sectors, differencing
images with a parent locator and partially present blocks, and hostile
images.  No binary image is committed."""
import struct
import uuid

K, M = 1 << 10, 1 << 20
HEADER_OFFS = (64 * K, 128 * K)
RT_OFFS = (192 * K, 256 * K)

GUID_BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
GUID_METADATA = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
GUID_FILE_PARAMS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
GUID_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
GUID_PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746").bytes_le
GUID_LOGICAL = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le
GUID_PHYSICAL = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556").bytes_le
GUID_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
GUID_PARENT_TYPE_VHDX = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913").bytes_le

NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 1, 2, 3, 6, 7
SB_PRESENT = 6


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_TABLE = _crc_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class Image:
    """A vhdx file in memory; save() writes it back."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.b = bytearray(f.read())
        self.cur = self._current_header()
        h = HEADER_OFFS[self.cur]
        self.log_off, = struct.unpack_from("<Q", self.b, h + 72)
        rt = RT_OFFS[0]
        count, = struct.unpack_from("<I", self.b, rt + 8)
        self.regions = {}
        for i in range(count):
            e = rt + 16 + 32 * i
            g = bytes(self.b[e:e + 16])
            off, length = struct.unpack_from("<QI", self.b, e + 16)
            self.regions[g] = (off, length, e)
        self.bat_off = self.regions[GUID_BAT][0]
        self.md_off = self.regions[GUID_METADATA][0]

    def _current_header(self):
        s1, = struct.unpack_from("<Q", self.b, HEADER_OFFS[0] + 8)
        s2, = struct.unpack_from("<Q", self.b, HEADER_OFFS[1] + 8)
        return 0 if s1 > s2 else 1

    def save(self, path=None):
        with open(path or self.path, "wb") as f:
            f.write(self.b)

    # ---- checksummed structures ----
    def seal(self, off, size):
        """Recompute the CRC-32C at off+4 over size bytes."""
        self.b[off + 4:off + 8] = bytes(4)
        struct.pack_into("<I", self.b, off + 4, crc32c(self.b[off:off + size]))

    def seal_headers(self):
        for h in HEADER_OFFS:
            self.seal(h, 4 * K)

    def seal_region_tables(self):
        """Region table 1 sealed, then copied to table 2."""
        self.seal(RT_OFFS[0], 64 * K)
        self.b[RT_OFFS[1]:RT_OFFS[1] + 64 * K] = self.b[RT_OFFS[0]:RT_OFFS[0] + 64 * K]

    def header_field(self, fmt, at, value, which=(0, 1)):
        for i in which:
            struct.pack_into(fmt, self.b, HEADER_OFFS[i] + at, value)
        self.seal_headers()

    def region_field(self, guid, fmt, at, value):
        struct.pack_into(fmt, self.b, self.regions[guid][2] + at, value)
        self.seal_region_tables()

    # ---- metadata ----
    def items(self):
        """{guid: (entry offset, item offset, length)} of the table."""
        count, = struct.unpack_from("<H", self.b, self.md_off + 10)
        out = {}
        for i in range(count):
            e = self.md_off + 32 + 32 * i
            g = bytes(self.b[e:e + 16])
            off, length = struct.unpack_from("<II", self.b, e + 16)
            out[g] = (e, off, length)
        return out

    def item_offset(self, guid):
        return self.md_off + self.items()[guid][1]

    def set_item(self, guid, fmt, *values):
        struct.pack_into(fmt, self.b, self.item_offset(guid), *values)

    def add_item(self, guid, data, flags, at):
        """A new metadata item at region offset at."""
        count, = struct.unpack_from("<H", self.b, self.md_off + 10)
        e = self.md_off + 32 + 32 * count
        struct.pack_into("<16sIII", self.b, e, guid, at, len(data), flags)
        struct.pack_into("<H", self.b, self.md_off + 10, count + 1)
        self.b[self.md_off + at:self.md_off + at + len(data)] = data

    def params(self):
        return struct.unpack_from("<II", self.b, self.item_offset(GUID_FILE_PARAMS))

    def geometry(self):
        block_size, _ = self.params()
        lss, = struct.unpack_from("<I", self.b, self.item_offset(GUID_LOGICAL))
        return block_size, (1 << 23) * lss // block_size

    # ---- BAT and blocks ----
    def payload_index(self, block):
        _, ratio = self.geometry()
        return block + block // ratio

    def bitmap_index(self, chunk):
        _, ratio = self.geometry()
        return chunk * (ratio + 1) + ratio

    def set_entry(self, index, offset, state):
        struct.pack_into("<Q", self.b, self.bat_off + 8 * index, offset | state)

    def entry(self, index):
        return struct.unpack_from("<Q", self.b, self.bat_off + 8 * index)[0]

    def append(self, data):
        """Place data at the next 1 MiB boundary at the end; its offset."""
        at = (len(self.b) + M - 1) // M * M
        self.b.extend(bytes(at - len(self.b)))
        self.b.extend(data)
        pad = (-len(self.b)) % M
        self.b.extend(bytes(pad))
        return at


def set_logical_sector(path, lss):
    """Change the logical sector size item (payload blocks keep their BAT
    places while the disk has fewer blocks than a chunk holds)."""
    img = Image(path)
    img.set_item(GUID_LOGICAL, "<I", lss)
    img.set_item(GUID_PHYSICAL, "<I", lss)
    img.save()


def utf16(s):
    return s.encode("utf-16-le")


def parent_locator(entries):
    """A VHDX-type parent locator: header, entries, then the strings."""
    hdr = struct.pack("<16sHH", GUID_PARENT_TYPE_VHDX, 0, len(entries))
    strings = b""
    table = b""
    base = len(hdr) + 12 * len(entries)
    for k, v in entries:
        ko = base + len(strings)
        strings += utf16(k)
        vo = base + len(strings)
        strings += utf16(v)
        table += struct.pack("<IIHH", ko, vo, len(utf16(k)), len(utf16(v)))
    return hdr + table + strings


def make_differencing(path, parent_path_value, key="relative_path", blocks=None,
                      locator=None):
    """Turn a qemu-made dynamic image (block_state_zero=off: every entry
    NOT_PRESENT) into a differencing one whose parent locator names
    parent_path_value under key.  blocks: {block: (state, data, bitmap)}
    where data is the block's bytes and bitmap (for PARTIALLY_PRESENT) the
    set of present sectors of the block."""
    img = Image(path)
    block_size, data_bits = img.params()
    img.set_item(GUID_FILE_PARAMS, "<II", block_size, data_bits | 2)
    loc = locator if locator is not None else parent_locator(
        [("parent_linkage", "{%s}" % uuid.uuid4()), (key, parent_path_value)])
    img.add_item(GUID_PARENT_LOCATOR, loc, 4 | 2, 64 * K + 512)
    lss, = struct.unpack_from("<I", img.b, img.item_offset(GUID_LOGICAL))
    bitmaps = {}
    for blk, (state, data, present) in sorted((blocks or {}).items()):
        at = img.append(data.ljust(block_size, b"\0"))
        img.set_entry(img.payload_index(blk), at, state)
        if state == PARTIALLY_PRESENT:
            _, ratio = img.geometry()
            chunk = blk // ratio
            bm = bitmaps.setdefault(chunk, bytearray(M))
            first = (blk % ratio) * (block_size // lss)
            for sector in present:
                bit = first + sector
                bm[bit // 8] |= 1 << (bit % 8)
    for chunk, bm in bitmaps.items():
        at = img.append(bytes(bm))
        img.set_entry(img.bitmap_index(chunk), at, SB_PRESENT)
    img.save()
    return img


def compact(path):
    """Move every block with data (and sector bitmap) down to right after
    the metadata region, dropping qemu-img's 5 MiB of slack: the same
    image in a smaller file."""
    img = Image(path)
    block_size, _ = img.geometry()
    md_len = img.regions[GUID_METADATA][1]
    at = img.md_off + md_len
    entries = img.regions[GUID_BAT][1] // 8
    out = bytearray(img.b[:at])
    for i in range(entries):
        e = img.entry(i)
        state, off = e & 7, e & ~(M - 1)
        if state not in (FULLY_PRESENT, PARTIALLY_PRESENT) or off == 0:
            continue
        length = M if img.bitmap_index(i // (img.geometry()[1] + 1)) == i else block_size
        out.extend(img.b[off:off + length].ljust(length, b"\0"))
        struct.pack_into("<Q", out, img.bat_off + 8 * i, at | state)
        at += length
    img.b = out
    img.save()
