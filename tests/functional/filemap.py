# SPDX-License-Identifier: BSD-3-Clause
"""Which byte ranges of a file have storage allocated, as the file system
reports them (FIEMAP, after a sync), merged into (start, end) ranges.

This is what preallocation promises, and unlike st_blocks it does not count
the file system's own extent metadata, whose size depends on how the blocks
happened to be laid out on disk."""
import array
import errno
import fcntl
import os
import struct

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
_HDR = struct.Struct("=QQIIII")
_EXT = struct.Struct("=QQQQQIIII")
_BATCH = 256


def _fiemap_batch(fd, start):
    """One FIEMAP call from start: [(logical, length, flags)]."""
    buf = array.array("B", bytes(_HDR.size + _EXT.size * _BATCH))
    _HDR.pack_into(buf, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    mapped = _HDR.unpack_from(buf, 0)[3]
    out = []
    for i in range(mapped):
        f = _EXT.unpack_from(buf, _HDR.size + i * _EXT.size)
        out.append((f[0], f[2], f[5]))
    return out


def _fiemap(fd):
    exts, start = [], 0
    while True:
        batch = _fiemap_batch(fd, start)
        exts += [(lo, lo + ln) for lo, ln, _ in batch]
        if not batch or batch[-1][2] & FIEMAP_EXTENT_LAST:
            return exts
        start = batch[-1][0] + batch[-1][1]


def _seek_data(fd):
    """Fallback where FIEMAP is missing: data ranges by SEEK_DATA/SEEK_HOLE
    (fallocated but unwritten ranges then count as holes)."""
    size, exts, off = os.fstat(fd).st_size, [], 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        h = os.lseek(fd, d, os.SEEK_HOLE)
        exts.append((d, h))
        off = h
    return exts


def _merge(exts):
    out = []
    for lo, hi in sorted(exts):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def allocated_ranges(path):
    """Merged [(start, end)] byte ranges of path with storage behind them."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        try:
            exts = _fiemap(fd)
        except OSError as e:
            if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            exts = _seek_data(fd)
        return _merge(exts)
    finally:
        os.close(fd)


def allocated_bytes(path):
    """Bytes of path with storage behind them (extent metadata excluded)."""
    return sum(hi - lo for lo, hi in allocated_ranges(path))


def allocation(path):
    """File size and allocated ranges: what a preallocation test compares."""
    return os.stat(str(path)).st_size, allocated_ranges(path)
