# SPDX-License-Identifier: BSD-3-Clause
"""The vhdx log (lib/format/vhdx/log.c) against qemu-img 7.2 and against
the specification's replay ([MS-VHDX] 2.3), on dirty images that
vhdx_log_gen writes into qemu-img-created files.

Differential: qemu-img check -r all replays in QEMU, vdisk-img check -r all
in vdisk; past the header section (whose GUIDs and sequence numbers each
side picks) the files are byte-identical, read identical, check clean, and
equal the model of the replay.  A read-only open of a dirty image fails in
both with the same message and exit code.  Hostile logs end in a clear
error or are ignored (as the specification or QEMU do), never a crash,
under an address space and CPU limit.

Where QEMU 7.2 departs from the specification the scenarios keep to what
both do, and the departures have tests of their own: QEMU does not grow
the file to a 1 MiB-aligned LastFileOffset, replays from the first entry of
a chain whatever its Tail says, refuses an image whose log holds an entry
with a bad descriptor or data sector anywhere, and cannot read an entry of
more than 126 descriptors."""
import json
import os
import shutil
import struct

import pytest

from conftest import BUILD, QEMU_IMG, run, vimg
import vhdx_log_gen as g

MIB, SECTOR = g.MIB, g.SECTOR
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
# Address space and CPU caps for vdisk on hostile logs; a sanitizer build
# (VDISK_SANITIZED, as scripts/check sets it) keeps the CPU cap only: its
# shadow memory needs more address space than the cap.  VDISK_NO_PRLIMIT=1
# lifts both.
LIMIT = [] if os.environ.get("VDISK_NO_PRLIMIT") else \
    ["prlimit", "--cpu=20"] if os.environ.get("VDISK_SANITIZED") else \
    ["prlimit", "--as=1073741824", "--cpu=20"]


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    pass


def base_image(d, name="base.vhdx", size="64M"):
    p = d / name
    run([QEMU_IMG, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", str(p), size],
        check=True)
    return g.Image(str(p))


def pattern(byte, salt=0):
    """A 4 KiB sector whose bytes differ (so misplaced bytes show)."""
    return bytes((byte + i * 7 + salt) & 0xFF for i in range(SECTOR))


class Scn:
    """A dirty image being built: the image, its log GUID, the file size the
    log entries start from, and the updates the replay must apply (the
    model is the file with them applied)."""

    def __init__(self, d, seed=1):
        self.img = base_image(d)
        self.guid = g.new_guid(seed)
        self.img.set_log_guid(self.guid)
        self.F = len(self.img.data)
        self.applied = []
        self.grow_to = 0

    @property
    def model(self):
        m = g.Image.__new__(g.Image)
        m.data = bytearray(self.img.data)
        for descs in self.applied:
            g.apply_descs(m, descs)
        m.grow(self.grow_to)
        return m

    def bat_desc(self, blocks):
        """A data descriptor for the BAT sector holding blocks -> offsets."""
        i = self.img
        off = i.bat_entry_offset(blocks[0][0]) // SECTOR * SECTOR
        sec = bytearray(self.cur(off))
        for b, foff in blocks:
            at = i.bat_entry_offset(b) - off
            sec[at:at + 8] = i.bat_value(foff)
        return g.data_desc(off, bytes(sec))

    def cur(self, off):
        """The sector at off as the model has it so far."""
        return bytes(self.model.data[off:off + SECTOR]).ljust(SECTOR, b"\0")

    def entry(self, seq, descs, tail=0, pos=0, flushed=None, last=None, apply=True,
              **kw):
        """Put an entry at log sector pos; apply: the model replays it."""
        e = g.make_entry(seq, self.guid, tail, descs,
                         self.F if flushed is None else flushed,
                         self.F if last is None else last, **kw)
        self.img.put_log(pos, e)
        if apply:
            self.apply(descs)
        return len(e) // SECTOR

    def apply(self, descs):
        self.applied.append(descs)

    def save(self, path):
        self.img.save(str(path))
        return path


def grow(s, mib):
    """The file grows by mib MiB (new blocks), durable before the log."""
    s.img.grow(s.F + mib * MIB)
    s.F += mib * MIB


# ---- scenarios: each returns the Scn (model = expected replay) ----

def scn_single(d):
    s = Scn(d, 1)
    grow(s, 2)
    b0 = s.F - 2 * MIB
    s.entry(5, [s.bat_desc([(0, b0)]), g.data_desc(b0, pattern(0xA1)),
                g.data_desc(b0 + 3 * SECTOR, pattern(0xA2))])
    return s


def scn_multi(d):
    """Three entries, Tail at the first, BAT and data, later entries
    overwriting and zeroing what earlier ones wrote."""
    s = Scn(d, 2)
    grow(s, 3)
    b = [s.F - 3 * MIB, s.F - 2 * MIB, s.F - MIB]
    n1 = s.entry(10, [s.bat_desc([(0, b[0])]), g.data_desc(b[0], pattern(1)),
                      g.data_desc(b[0] + SECTOR, pattern(2)),
                      g.data_desc(b[0] + 2 * SECTOR, pattern(3))])
    n2 = s.entry(11, [s.bat_desc([(0, b[0]), (5, b[1])]),
                      g.data_desc(b[0] + SECTOR, pattern(4)),
                      g.data_desc(b[1], pattern(5))], pos=n1)
    s.entry(12, [g.zero_desc(b[0] + 2 * SECTOR, 2 * SECTOR),
                 s.bat_desc([(0, b[0]), (5, b[1]), (9, b[2])]),
                 g.data_desc(b[2] + 5 * SECTOR, pattern(6))], pos=n1 + n2)
    return s


def scn_zero(d):
    """Zero descriptors over data already in the file (several sectors,
    adjacent ranges, one sector)."""
    s = Scn(d, 3)
    grow(s, 1)
    b0 = s.F - MIB
    s.img.write(b0, bytes([0x5A]) * MIB)
    s.entry(7, [s.bat_desc([(2, b0)]), g.zero_desc(b0, 16 * SECTOR),
                g.zero_desc(b0 + 16 * SECTOR, SECTOR),
                g.data_desc(b0 + 17 * SECTOR, pattern(9)),
                g.zero_desc(b0 + 64 * SECTOR, 128 * SECTOR)])
    return s


def scn_many_desc(d):
    """200 descriptors: two descriptor sectors, then 130 data sectors."""
    s = Scn(d, 4)
    grow(s, 2)
    b0 = s.F - 2 * MIB
    descs = [s.bat_desc([(1, b0), (2, b0 + MIB)])]
    for k in range(199):
        off = b0 + k * SECTOR
        descs.append(g.data_desc(off, pattern(k)) if k % 3 else
                     g.zero_desc(off, SECTOR))
    s.entry(3, descs)
    return s


def scn_wrap_entry(d):
    """A sequence whose second entry wraps past the end of the log."""
    s = Scn(d, 5)
    grow(s, 1)
    b0 = s.F - MIB
    total = s.img.log_length // SECTOR
    tail = (total - 6) * SECTOR
    n1 = s.entry(20, [s.bat_desc([(3, b0)]), g.data_desc(b0, pattern(7))],
                 tail=tail, pos=total - 6)
    s.entry(21, [g.data_desc(b0 + k * SECTOR, pattern(8, k)) for k in range(7)],
            tail=tail, pos=total - 6 + n1)
    return s


def scn_wrap_applied(d):
    """Entries before the wrap already applied in place; a later entry
    starts at the log's first sector.  (QEMU replays from that entry on,
    the specification from the Tail: with the first ones applied both
    give the same file.)"""
    s = Scn(d, 6)
    grow(s, 1)
    b0 = s.F - MIB
    total = s.img.log_length // SECTOR
    tail = (total - 5) * SECTOR
    d1 = [s.bat_desc([(4, b0)]), g.data_desc(b0, pattern(10))]
    n1 = s.entry(30, d1, tail=tail, pos=total - 5)
    g.apply_descs(s.img, d1)
    d2 = [g.data_desc(b0 + SECTOR, pattern(11)), g.data_desc(b0 + 2 * SECTOR, pattern(12))]
    n2 = s.entry(31, d2, tail=tail, pos=total - 5 + n1)
    g.apply_descs(s.img, d2)
    s.entry(32, [g.data_desc(b0 + SECTOR, pattern(13)), g.zero_desc(b0, SECTOR)],
            tail=tail, pos=(total - 5 + n1 + n2) % total)
    return s


def scn_stale(d):
    """Entries of an older GUID around the active one, padding sectors
    inside it."""
    s = Scn(d, 7)
    grow(s, 1)
    b0 = s.F - MIB
    old = g.new_guid(99)
    e = g.make_entry(50, old, 0, [g.data_desc(b0, pattern(0xEE))], s.F, s.F)
    s.img.put_log(0, e)
    s.img.put_log(40, e)
    s.entry(4, [s.bat_desc([(6, b0)]), g.data_desc(b0 + SECTOR, pattern(14))],
            tail=10 * SECTOR, pos=10, pad=3)
    return s


def scn_bad_crc_self_tail(d):
    """Each entry its own sequence (Tail names itself); the middle one has
    a bad checksum: the last one is the active sequence."""
    s = Scn(d, 8)
    grow(s, 1)
    b0 = s.F - MIB
    n1 = s.entry(1, [s.bat_desc([(7, b0)]), g.data_desc(b0, pattern(20))], apply=False)
    n2 = s.entry(2, [g.data_desc(b0, pattern(21))], tail=n1 * SECTOR, pos=n1,
                 corrupt="crc", apply=False)
    s.apply([s.bat_desc([(7, b0)])])
    s.entry(3, [s.bat_desc([(7, b0)]), g.data_desc(b0 + SECTOR, pattern(22))],
            tail=(n1 + n2) * SECTOR, pos=n1 + n2)
    return s


def scn_gap(d):
    """Sequence numbers 1, 2, 4 with the Tail at the first: the sequence
    ends at 2."""
    s = Scn(d, 9)
    grow(s, 1)
    b0 = s.F - MIB
    n1 = s.entry(1, [s.bat_desc([(8, b0)]), g.data_desc(b0, pattern(30))])
    n2 = s.entry(2, [g.data_desc(b0 + SECTOR, pattern(31))], pos=n1)
    s.entry(4, [g.data_desc(b0 + 2 * SECTOR, pattern(32))], pos=n1 + n2, apply=False)
    return s


SCENARIOS = {
    "single": scn_single, "multi": scn_multi, "zero": scn_zero,
    "wrap_entry": scn_wrap_entry,
    "wrap_applied": scn_wrap_applied, "stale": scn_stale,
    "bad_crc_self_tail": scn_bad_crc_self_tail, "gap": scn_gap,
}


def vreplay(path):
    return run(LIMIT + [str(os.path.join(BUILD, "tools", "img", "vdisk-img")), "check",
                        "-r", "all", str(path)], timeout=120)


def qreplay(path):
    return run([QEMU_IMG, "check", "-r", "all", str(path)], timeout=120)


def past_headers(path):
    return open(path, "rb").read()[MIB:]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_replay_matches_qemu(tmp_path, name):
    s = SCENARIOS[name](tmp_path)
    dirty = s.save(tmp_path / "dirty.vhdx")
    q, v = tmp_path / "q.vhdx", tmp_path / "v.vhdx"
    shutil.copyfile(dirty, q)
    shutil.copyfile(dirty, v)
    pq, pv = qreplay(q), vreplay(v)
    assert pq.returncode == 0, pq.stdout + pq.stderr
    assert pv.returncode == 0, pv.stdout + pv.stderr
    assert pv.stdout == pq.stdout
    assert os.path.getsize(v) == os.path.getsize(q)
    assert past_headers(v) == past_headers(q)
    assert past_headers(v) == bytes(s.model.data[MIB:])
    for p in (q, v):
        c = run([QEMU_IMG, "check", str(p)])
        assert c.returncode == 0, c.stdout
        c = vimg("check", p)
        assert c.returncode == 0, c.stdout + c.stderr
    assert run([QEMU_IMG, "compare", str(q), str(v)]).returncode == 0


@pytest.mark.parametrize("name", ["single", "multi", "wrap_entry"])
def test_replay_by_write_open(tmp_path, name):
    """Any read-write open replays (here vdisk-io's, then a write)."""
    s = SCENARIOS[name](tmp_path)
    v = s.save(tmp_path / "v.vhdx")
    p = run([VDISK_IO, str(v), "write", "0x77", str(60 * MIB), "4096"])
    assert p.returncode == 0, p.stderr
    assert run([QEMU_IMG, "check", str(v)]).returncode == 0
    # The replayed metadata and data are what the model says, but for the
    # log (the write journalled its BAT update) and that BAT entry.
    m = bytes(s.model.data)
    got = open(v, "rb").read()
    img = g.Image(str(v))
    log_end = img.log_offset + img.log_length
    bat = img.bat_entry_offset(60)
    assert got[log_end:bat] == m[log_end:bat]
    assert got[bat + 8:len(m)] == m[bat + 8:]


@pytest.mark.parametrize("name", ["single", "multi"])
def test_read_only_open_of_dirty_image(tmp_path, name):
    """info (read-only) fails as qemu-img's, and leaves the file alone."""
    dirty = SCENARIOS[name](tmp_path).save(tmp_path / "d.vhdx")
    before = open(dirty, "rb").read()
    pq = run([QEMU_IMG, "info", str(dirty)])
    pv = vimg("info", dirty)
    assert pq.returncode == pv.returncode == 1
    assert pv.stdout == pq.stdout
    assert pv.stderr == pq.stderr.replace("qemu-img:", "vdisk-img:", 1)
    assert open(dirty, "rb").read() == before


def test_clean_after_replay_opens_read_only(tmp_path):
    s = scn_multi(tmp_path)
    v = s.save(tmp_path / "v.vhdx")
    assert vreplay(v).returncode == 0
    a = vimg("info", "--output=json", v)
    b = run([QEMU_IMG, "info", "--output=json", str(v)])
    assert a.returncode == b.returncode == 0
    img = g.Image(str(v))
    h = img.data[img.hdr_off:img.hdr_off + SECTOR]
    assert h[48:64] == bytes(16), "log GUID not cleared after replay"


# ---- where QEMU departs from the specification ----

def test_growth_to_last_file_offset(tmp_path):
    """An entry whose LastFileOffset passes the end of the file: vdisk grows
    the file to it (the specification); QEMU 7.2 grows it only when the
    offset is not a multiple of 1 MiB.  Both agree on the bytes both have."""
    s = Scn(tmp_path, 11)
    b0 = s.F                            # the new block is not in the file yet
    # (the zero descriptor undoes a data descriptor past the old end)
    s.entry(6, [s.bat_desc([(0, b0)]), g.data_desc(b0 + SECTOR, pattern(40)),
                g.data_desc(b0 + 3 * SECTOR, pattern(41)), g.zero_desc(b0, 2 * SECTOR)],
            last=s.F + MIB)
    s.grow_to = s.F + MIB
    dirty = s.save(tmp_path / "d.vhdx")
    q, v = tmp_path / "q.vhdx", tmp_path / "v.vhdx"
    shutil.copyfile(dirty, q)
    shutil.copyfile(dirty, v)
    assert qreplay(q).returncode in (0, 2, 3)
    assert vreplay(v).returncode == 0
    assert os.path.getsize(v) == s.F + MIB
    assert os.path.getsize(q) == b0 + 4 * SECTOR
    n = os.path.getsize(q)
    assert past_headers(v)[:n - MIB] == past_headers(q)
    assert past_headers(v) == bytes(s.model.data[MIB:])
    c = run([QEMU_IMG, "check", str(v)])
    assert c.returncode == 0, c.stdout


def test_more_than_126_descriptors(tmp_path):
    """An entry with a second descriptor sector: QEMU 7.2 reads every
    descriptor sector into the same 4 KiB and refuses the image; vdisk
    replays it as the specification says."""
    s = scn_many_desc(tmp_path)
    dirty = s.save(tmp_path / "d.vhdx")
    q, v = tmp_path / "q.vhdx", tmp_path / "v.vhdx"
    shutil.copyfile(dirty, q)
    shutil.copyfile(dirty, v)
    pq, pv = qreplay(q), vreplay(v)
    assert pq.returncode == 1 and "Invalid argument" in pq.stderr
    assert pv.returncode == 0, pv.stderr
    assert past_headers(v) == bytes(s.model.data[MIB:])
    assert run([QEMU_IMG, "check", str(v)]).returncode == 0


def test_qemu_ignores_tail(tmp_path):
    """Entries 1 and 2 chain, entry 2's Tail names itself: the specification
    replays entry 2 only; QEMU replays both.  vdisk follows the
    specification (entry 1's update stays unapplied)."""
    s = Scn(tmp_path, 12)
    grow(s, 1)
    b0 = s.F - MIB
    n1 = s.entry(1, [s.bat_desc([(1, b0)]), g.data_desc(b0, pattern(50))], apply=False)
    s.entry(2, [g.data_desc(b0 + SECTOR, pattern(51))], tail=n1 * SECTOR, pos=n1)
    v = s.save(tmp_path / "v.vhdx")
    assert vreplay(v).returncode == 0
    assert past_headers(v) == bytes(s.model.data[MIB:])


# ---- hostile logs ----

def hostile(tmp_path, seed, **kw):
    """A dirty image with one entry made with make_entry's keywords; descs
    and sizes in kw override the defaults."""
    s = Scn(tmp_path, seed)
    grow(s, 1)
    b0 = s.F - MIB
    descs = kw.pop("descs", [s.bat_desc([(0, b0)]), g.data_desc(b0, pattern(60))])
    s.entry(kw.pop("seq", 9), descs, **kw)
    return s, s.save(tmp_path / "h.vhdx")


def vdisk_open_rw(path):
    return run(LIMIT + [VDISK_IO, str(path), "flush"], timeout=60)


def assert_no_crash(p):
    assert p.returncode in (0, 1), (p.returncode, p.stderr)
    assert "Sanitizer" not in p.stderr and "Segmentation" not in p.stderr


HOSTILE_IGNORED = {
    # make_entry keywords, and whether QEMU 7.2 ignores the entry too: the
    # entry is invalid, there is nothing to replay
    "crc": (dict(corrupt="crc"), True),
    "entry_length_past_log": (dict(length=2 * MIB), True),
    "entry_length_unaligned": (dict(length=SECTOR + 512), True),
    "entry_length_zero": (dict(length=0), True),
    "huge_descriptor_count": (dict(ndesc=0xFFFFFFFF), True),
    "sequence_zero": (dict(seq=0), True),
    # QEMU refuses the image (it reads a second descriptor sector over the
    # first, then finds bad descriptors)
    "descriptor_count_past_entry": (dict(ndesc=200), False),
    # QEMU does not read Tail and replays these
    "tail_unaligned": (dict(tail=100), False),
    "tail_past_log": (dict(tail=2 * MIB), False),
    "tail_elsewhere": (dict(tail=77 * SECTOR), False),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_IGNORED))
def test_hostile_entry_ignored(tmp_path, name):
    """An invalid entry is not replayed: the image opens read-only, and a
    read-write open leaves it as it was past the headers."""
    kw, qemu_too = HOSTILE_IGNORED[name]
    s, h = hostile(tmp_path, 20, apply=False, **dict(kw))
    before = past_headers(h)
    pv = run(LIMIT + [str(os.path.join(BUILD, "tools", "img", "vdisk-img")), "info",
                      str(h)])
    assert_no_crash(pv)
    assert pv.returncode == 0, pv.stderr
    pq = run([QEMU_IMG, "info", str(h)])
    assert (pq.returncode == 0) == qemu_too, pq.stderr
    p = vdisk_open_rw(h)
    assert_no_crash(p)
    assert p.returncode == 0, p.stderr
    assert past_headers(h) == before


HOSTILE_REFUSED = {
    # descriptors (file offset, "data"/"zero", zero length), entry sizes
    "into_header": (dict(descs=[g.data_desc(64 * 1024, bytes(SECTOR))]),
                    "writes into the headers"),
    "into_log": (dict(descs=[g.data_desc(MIB + 8 * SECTOR, bytes(SECTOR))]),
                 "writes into the log"),
    "past_last_offset": (dict(descs=[g.data_desc(1 << 40, bytes(SECTOR))]),
                         "past its last file offset"),
    "huge_zero": (dict(descs=[g.zero_desc(4 * MIB, 1 << 60)]),
                  "past its last file offset"),
    "zero_wraps": (dict(descs=[g.zero_desc(4 * MIB, (1 << 64) - 4096)]),
                   "out of range"),
    "huge_last_offset": (dict(last=1 << 62), "last file offset too large"),
    "truncated": (dict(flushed=1 << 40), "truncated image"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_REFUSED))
def test_hostile_entry_refused(tmp_path, name):
    """A valid entry of the active sequence that would write where no log
    update may, or says the file was larger: vdisk refuses the image with a
    message and writes nothing."""
    kw, msg = HOSTILE_REFUSED[name]
    s, h = hostile(tmp_path, 21, apply=False, **dict(kw))
    before = open(h, "rb").read()
    p = vdisk_open_rw(h)
    assert_no_crash(p)
    assert p.returncode == 1
    assert msg in p.stderr, p.stderr
    assert open(h, "rb").read() == before


def test_truncated_refused_by_both(tmp_path):
    s, h = hostile(tmp_path, 22, apply=False, flushed=1 << 40)
    assert qreplay(h).returncode != 0
    assert vreplay(h).returncode != 0


@pytest.mark.parametrize("corrupt", ["data_sig", "data_seq", "desc_seq"])
def test_bad_descriptor_or_data_sector(tmp_path, corrupt):
    """A checksummed entry with a bad descriptor or data sector is invalid
    (the specification); QEMU 7.2 refuses the whole image instead.  vdisk
    opens it and replays nothing."""
    s, h = hostile(tmp_path, 23, apply=False, corrupt=corrupt)
    before = past_headers(h)
    p = vdisk_open_rw(h)
    assert_no_crash(p)
    assert p.returncode == 0, p.stderr
    assert past_headers(h) == before


def test_log_full_of_damaged_headers(tmp_path):
    """Every log sector an entry header of the right GUID claiming the
    whole log, none with a good checksum: bounded work, nothing replayed."""
    s = Scn(tmp_path, 24)
    total = s.img.log_length // SECTOR
    for pos in range(total):
        e = bytearray(g.make_entry(pos + 1, s.guid, pos * SECTOR, [], s.F, s.F)[:SECTOR])
        struct.pack_into("<I", e, 8, s.img.log_length)
        s.img.put_log(pos, bytes(e))
    h = s.save(tmp_path / "h.vhdx")
    p = vdisk_open_rw(h)
    assert_no_crash(p)
    assert p.returncode == 0, p.stderr


def test_log_full_of_valid_entries(tmp_path):
    """256 one-sector entries in one chain around the whole log, each its
    own sequence (the most entries a 1 MiB log holds), the last one
    zeroing a sector: it alone is replayed.  (QEMU 7.2 loops forever on
    this log: its scan restarts at the same sector when a chain wraps onto
    its own start.)"""
    s = Scn(tmp_path, 25)
    grow(s, 1)
    b0 = s.F - MIB
    s.img.write(b0, bytes([0x11]) * SECTOR)
    total = s.img.log_length // SECTOR
    for pos in range(total - 1):
        s.entry(pos + 1, [], tail=pos * SECTOR, pos=pos, apply=False)
    s.entry(total, [g.zero_desc(b0, SECTOR)], tail=(total - 1) * SECTOR,
            pos=total - 1)
    h = s.save(tmp_path / "h.vhdx")
    pv = vreplay(h)
    assert_no_crash(pv)
    assert pv.returncode == 0, pv.stderr
    assert past_headers(h) == bytes(s.model.data[MIB:])


@pytest.mark.parametrize("field,value", [
    ("log_offset", 0), ("log_offset", MIB + 512), ("log_length", MIB + 4096),
    ("log_offset", 1 << 40)])
def test_hostile_log_region(tmp_path, field, value):
    """Log fields in the header that place the log badly: an error (the
    same exit code as qemu-img), never a crash."""
    s = Scn(tmp_path, 26)
    grow(s, 1)
    s.entry(1, [g.data_desc(s.F - MIB, pattern(1))])
    i = s.img
    for off in g.HDR_OFFS:
        hdr = bytearray(i.data[off:off + SECTOR])
        if field == "log_offset":
            struct.pack_into("<Q", hdr, 72, value)
        else:
            struct.pack_into("<I", hdr, 68, value)
        struct.pack_into("<I", hdr, 4, 0)
        struct.pack_into("<I", hdr, 4, g.crc32c(hdr))
        i.data[off:off + SECTOR] = hdr
    h = s.save(tmp_path / "h.vhdx")
    q = tmp_path / "q.vhdx"
    shutil.copyfile(h, q)
    pv, pq = vreplay(h), qreplay(q)
    assert_no_crash(pv)
    assert pv.returncode == pq.returncode, pv.stderr + pq.stderr
    if pv.returncode == 0:
        # A log past the end of the file holds nothing to replay.  A write
        # journals into it once the file reaches it (the driver places new
        # blocks past every region), else it fails with a message.
        p = run(LIMIT + [VDISK_IO, str(h), "write", "1", "0", "512"])
        assert_no_crash(p)
        if p.returncode:
            assert "no usable log" in p.stderr, p.stderr
        else:
            c = run([QEMU_IMG, "check", str(h)])
            assert c.returncode == 0, c.stdout + c.stderr


# ---- logs QEMU writes ----

def qemu_dirty(d, size, setup, write, bat_sector_off):
    """An image QEMU leaves with a log to replay: its in-place write of the
    BAT sector at bat_sector_off fails (blkdebug) after the entry is in
    the log, so the log holds the update."""
    img = d / "qd.vhdx"
    run([QEMU_IMG, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", str(img), size],
        check=True)
    if setup:
        run(["qemu-io"] + sum([["-c", c] for c in setup], []) + [str(img)], check=True)
    node = {"driver": "vhdx", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": str(img)},
        "inject-error": [{"event": "pwritev", "sector": bat_sector_off // 512,
                          "iotype": "write", "errno": 5, "once": True}]}}
    p = run(["qemu-io", "-c", write, "json:" + json.dumps(node)])
    assert "failed" in p.stdout + p.stderr, p.stdout + p.stderr
    assert g.log_guid(open(img, "rb").read()) != bytes(16)
    return img


@pytest.mark.parametrize("size,setup,write,block", [
    ("64M", ["write -P 0x61 0 8k"], "write -P 0x63 9M 64k", 9),
    ("1G", ["write -P 0x61 0 8k", "write -P 0x62 1000M 4k"], "write -P 0x64 900M 3k", 900),
])
def test_qemu_written_log(tmp_path, size, setup, write, block):
    """vdisk replays a log QEMU wrote as QEMU does: same bytes past the
    headers, same guest data, the new block's data in place."""
    probe = base_image(tmp_path, "probe.vhdx", size)
    sector = probe.bat_entry_offset(block) // SECTOR * SECTOR
    dirty = qemu_dirty(tmp_path, size, setup, write, sector)
    q, v = tmp_path / "q.vhdx", tmp_path / "v.vhdx"
    shutil.copyfile(dirty, q)
    shutil.copyfile(dirty, v)
    pq, pv = qreplay(q), vreplay(v)
    assert pq.returncode == pv.returncode == 0, pq.stdout + pv.stdout + pv.stderr
    assert pv.stdout == pq.stdout
    assert past_headers(v) == past_headers(q)
    assert run([QEMU_IMG, "compare", str(q), str(v)]).returncode == 0
    byte, off = write.split()[2], write.split()[3]
    p = run(["qemu-io", "-c", "read -P %s %s 1k" % (byte, off), str(v)])
    assert "Pattern verification failed" not in p.stdout, p.stdout


# ---- a replay that fails midway ----

@pytest.mark.parametrize("nth", [1, 2, 3, 5, 8, 13])
def test_replay_interrupted(tmp_path, nth):
    """The nth request of a replay fails (blkdebug, from the driver's
    vhdx_log_replay event on): the open fails with a message; the next
    open replays again and ends where an uninterrupted replay does."""
    s = scn_multi(tmp_path)
    h = s.save(tmp_path / "h.vhdx")
    node = {"driver": "vhdx", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": str(h)},
        "inject-error": [{"event": "vhdx_log_replay", "errno": 5, "nth": nth}]}}
    p = run(LIMIT + [VDISK_IO, "json:" + json.dumps(node), "flush"])
    assert_no_crash(p)
    assert p.returncode == 1 and p.stderr, p.stderr
    p = vreplay(h)
    assert p.returncode == 0, p.stdout + p.stderr
    assert past_headers(h) == bytes(s.model.data[MIB:])
    assert run([QEMU_IMG, "check", str(h)]).returncode == 0
