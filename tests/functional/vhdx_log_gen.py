# SPDX-License-Identifier: BSD-3-Clause
"""Dirty vhdx images for the log tests: a reader for what qemu-img lays out
(headers, region table, metadata, BAT) and a writer of log entries as
[MS-VHDX] 2.3 defines them, with CRC-32C in Python, plus a model of the
replay the specification asks for (the active sequence, applied from its
tail).

Log entry (4 KiB log sectors, little endian): a 64-byte header ("loge",
CRC-32C of the whole entry with its checksum field zero, EntryLength,
Tail, SequenceNumber, DescriptorCount, reserved, LogGuid,
FlushedFileOffset, LastFileOffset), descriptors of 32 bytes (126 in the
first sector, 128 in the next ones): "desc" (TrailingBytes, LeadingBytes,
FileOffset, SequenceNumber) or "zero" (reserved, ZeroLength, FileOffset,
SequenceNumber); then one "data" sector per data descriptor (SequenceHigh,
4084 bytes, SequenceLow)."""
import struct
import uuid

SECTOR = 4096
MIB = 1 << 20
HDR_OFFS = (64 * 1024, 128 * 1024)
RT_OFF = 192 * 1024

GUID_BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
GUID_MD = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
GUID_FILE_PARAMS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
GUID_VSIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
GUID_LSS = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F").bytes_le

PAYLOAD_FULLY_PRESENT = 6


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_TABLE = _crc_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli) of data, continuing crc."""
    crc ^= 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc_skip(buf, off):
    """CRC-32C of buf with the 4 bytes at off read as zero."""
    return crc32c(bytes(buf[:off]) + b"\0\0\0\0" + bytes(buf[off + 4:]))


class Image:
    """A vhdx file in memory: its current header, log region, BAT and
    geometry."""

    def __init__(self, path):
        self.path = path
        self.data = bytearray(open(path, "rb").read())
        self._headers()
        self._regions()
        self._metadata()

    def _headers(self):
        best = None
        for off in HDR_OFFS:
            h = self.data[off:off + SECTOR]
            if h[:4] != b"head" or crc_skip(h, 4) != struct.unpack_from("<I", h, 4)[0]:
                continue
            seq = struct.unpack_from("<Q", h, 8)[0]
            if best is None or seq > best[1]:
                best = (off, seq)
        assert best, "no valid header"
        self.hdr_off = best[0]
        h = self.data[self.hdr_off:self.hdr_off + SECTOR]
        self.log_length, self.log_offset = struct.unpack_from("<IQ", h, 68)

    def _regions(self):
        rt = self.data[RT_OFF:RT_OFF + 65536]
        n = struct.unpack_from("<I", rt, 8)[0]
        for i in range(n):
            e = rt[16 + 32 * i:48 + 32 * i]
            off, length = struct.unpack_from("<QI", e, 16)
            if e[:16] == GUID_BAT:
                self.bat_offset, self.bat_length = off, length
            elif e[:16] == GUID_MD:
                self.md_offset = off

    def _metadata(self):
        t = self.data[self.md_offset:self.md_offset + 65536]
        n = struct.unpack_from("<H", t, 10)[0]
        items = {}
        for i in range(n):
            e = t[32 + 32 * i:64 + 32 * i]
            off, length = struct.unpack_from("<II", e, 16)
            items[bytes(e[:16])] = self.md_offset + off
        self.block_size = struct.unpack_from("<I", self.data, items[GUID_FILE_PARAMS])[0]
        self.vsize = struct.unpack_from("<Q", self.data, items[GUID_VSIZE])[0]
        self.lss = struct.unpack_from("<I", self.data, items[GUID_LSS])[0]
        self.chunk_ratio = (1 << 23) * self.lss // self.block_size

    def bat_entry_offset(self, block):
        """File offset of the BAT entry of payload block."""
        return self.bat_offset + 8 * (block + block // self.chunk_ratio)

    def bat_value(self, file_off, state=PAYLOAD_FULLY_PRESENT):
        return struct.pack("<Q", (file_off // MIB) << 20 | state)

    def set_log_guid(self, guid):
        """Write guid as the log GUID of both headers (checksums redone)."""
        for off in HDR_OFFS:
            h = bytearray(self.data[off:off + SECTOR])
            if h[:4] != b"head":
                continue
            h[48:64] = guid
            struct.pack_into("<I", h, 4, 0)
            struct.pack_into("<I", h, 4, crc32c(h))
            self.data[off:off + SECTOR] = h

    def grow(self, size):
        if len(self.data) < size:
            self.data.extend(bytes(size - len(self.data)))

    def write(self, off, buf):
        self.grow(off + len(buf))
        self.data[off:off + len(buf)] = buf

    def put_log(self, pos, entry):
        """Write entry bytes at log sector pos, wrapping at the log's end."""
        total = self.log_length // SECTOR
        for i in range(len(entry) // SECTOR):
            s = (pos + i) % total
            off = self.log_offset + s * SECTOR
            self.data[off:off + SECTOR] = entry[i * SECTOR:(i + 1) * SECTOR]

    def save(self, path=None):
        with open(path or self.path, "wb") as f:
            f.write(self.data)


def data_desc(off, sector):
    """A data update: 4 KiB of sector at file offset off."""
    assert len(sector) == SECTOR and off % SECTOR == 0
    return ("data", off, bytes(sector))


def zero_desc(off, length):
    return ("zero", off, length)


def make_entry(seq, guid, tail, descs, flushed, last, pad=0, corrupt=None,
               ndesc=None, length=None):
    """Bytes of one log entry.  tail: byte offset in the log; pad: extra
    sectors of padding; corrupt: damage to do after the checksum ("crc",
    "data_sig", "data_seq", "desc_seq"); ndesc/length: override the header's
    DescriptorCount / EntryLength (the checksum still covers the bytes)."""
    nd = len(descs)
    dsect = (nd + 2 + 127) // 128
    datas = [d for d in descs if d[0] == "data"]
    nsect = dsect + len(datas) + pad
    buf = bytearray(nsect * SECTOR)
    struct.pack_into("<4sIIIQII16sQQ", buf, 0, b"loge", 0,
                     length if length is not None else nsect * SECTOR, tail, seq,
                     ndesc if ndesc is not None else nd, 0, guid, flushed, last)
    di = 0
    for k, d in enumerate(descs):
        at = 64 + 32 * k
        if d[0] == "data":
            sec = d[2]
            struct.pack_into("<4s4s8sQQ", buf, at, b"desc", sec[4092:4096], sec[:8],
                             d[1], seq)
            ds = (dsect + di) * SECTOR
            struct.pack_into("<4sI", buf, ds, b"data", seq >> 32)
            buf[ds + 8:ds + 4092] = sec[8:4092]
            struct.pack_into("<I", buf, ds + 4092, seq & 0xFFFFFFFF)
            di += 1
        else:
            struct.pack_into("<4sIQQQ", buf, at, b"zero", 0, d[2], d[1], seq)
    struct.pack_into("<I", buf, 4, crc32c(buf))
    if corrupt == "crc":
        buf[-1] ^= 0xFF
    elif corrupt == "data_sig" and datas:
        buf[dsect * SECTOR] ^= 0xFF
        _recrc(buf)
    elif corrupt == "data_seq" and datas:
        buf[dsect * SECTOR + 4092] ^= 0x01
        _recrc(buf)
    elif corrupt == "desc_seq" and descs:
        buf[64 + 24] ^= 0x01
        _recrc(buf)
    return bytes(buf)


def _recrc(buf):
    struct.pack_into("<I", buf, 4, 0)
    struct.pack_into("<I", buf, 4, crc32c(buf))


def apply_descs(img, descs):
    """Apply updates in place (the model of one entry's replay)."""
    for kind, off, x in descs:
        if kind == "data":
            img.write(off, x)
        else:
            img.write(off, bytes(x))


def model_replay(img, entries, last):
    """The replay the specification asks for: entries (each a list of
    descriptors) in order, then growth to last (1 MiB multiple)."""
    for descs in entries:
        apply_descs(img, descs)
    img.grow(last)


def new_guid(seed):
    return uuid.UUID(int=(0x5EED << 100) + seed).bytes_le


# ---- reading guest data (the crash tests' judge) ----

def log_guid(data):
    """The log GUID of the current header of a vhdx file (bytes)."""
    best = None
    for off in HDR_OFFS:
        h = data[off:off + SECTOR]
        if len(h) < SECTOR or h[:4] != b"head" or \
                crc_skip(h, 4) != struct.unpack_from("<I", h, 4)[0]:
            continue
        seq = struct.unpack_from("<Q", h, 8)[0]
        if best is None or seq > best[0]:
            best = (seq, bytes(h[48:64]))
    return best[1] if best else None


class Reader(Image):
    """Guest data of a vhdx file (bytes) without a parent: a payload block
    is read when its BAT entry says fully present, else zeroes."""

    def __init__(self, data):
        self.path = None
        self.data = data
        self._headers()
        self._regions()
        self._metadata()

    def blocks(self):
        """Yield (block, file offset) of every present payload block."""
        n = -(-self.vsize // self.block_size)
        for b in range(n):
            at = self.bat_entry_offset(b)
            e = struct.unpack_from("<Q", self.data, at)[0]
            if e & 7 == PAYLOAD_FULLY_PRESENT:
                yield b, (e >> 20) << 20

    def read(self, off, length):
        b = bytes(self.data[off:off + length])
        return b + bytes(length - len(b))
