# SPDX-License-Identifier: BSD-3-Clause
"""Crash replay for the qcow2 crash-safety tests (after SQLite's crash test
VFS): read the log of the "record" filter (lib/filter/record.c), rebuild
the image file as a power loss would leave it at a cut in the log (every
write before the last flush kept, later ones all dropped or a random subset
kept), and judge the guest data of a crashed image against the workload
that vdisk-crashload ran (tests/helpers/vdisk-crashload.c).

A guest sector may read as the value it had at the last flush the workload
saw complete, or as any value an operation started after that flush wrote
to it; anything else is lost or corrupted data.

Run as a script to replay a log by hand:
    crash_replay.py LOG BASE_IMAGE SCRIPT [--cuts N] [--seed S]
"""
import mmap
import os
import random
import struct
import subprocess
import sys

SECTOR = 512
MAGIC = b"VDRECLG1"
QEMU_IMG = "qemu-img"


# ---- the log ----

def parse_log(path):
    """The records of a log: ("W", off, fua, data), ("Z", off, len),
    ("D", off, len), ("T", size), ("F",), ("E", name)."""
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:8] != MAGIC:
        raise ValueError("%s: not a record log" % path)
    recs, p = [], 8
    while p + 5 <= len(buf):
        t, ln = chr(buf[p]), struct.unpack_from("<I", buf, p + 1)[0]
        body = buf[p + 5:p + 5 + ln]
        if len(body) < ln:
            break                   # torn tail (killed while logging)
        p += 5 + ln
        if t == "W":
            off, fl = struct.unpack_from("<QI", body)
            recs.append(("W", off, fl & 1, body[12:]))
        elif t in "ZD":
            recs.append((t,) + struct.unpack_from("<QQ", body))
        elif t == "T":
            recs.append(("T", struct.unpack_from("<Q", body)[0]))
        elif t == "F":
            recs.append(("F",))
        elif t == "E":
            recs.append(("E", body.decode("ascii", "replace")))
        else:
            raise ValueError("%s: unknown record type %r" % (path, t))
    return recs


def apply(img, rec):
    """Apply one change record to a bytearray image."""
    t = rec[0]
    if t == "W":
        off, data = rec[1], rec[3]
        if len(img) < off + len(data):
            img.extend(bytes(off + len(data) - len(img)))
        img[off:off + len(data)] = data
    elif t in "ZD":
        off, ln = rec[1], rec[2]
        end = min(off + ln, len(img))
        if end > off:
            img[off:end] = bytes(end - off)
    elif t == "T":
        if rec[1] < len(img):
            del img[rec[1]:]
        else:
            img.extend(bytes(rec[1] - len(img)))


class Replay:
    """Images at cuts of a log recorded from base (a file's bytes)."""

    def __init__(self, log, base):
        self.recs = parse_log(log) if isinstance(log, str) else log
        self.base = bytes(base)
        # Durable image at each flush: kept incrementally, so that a cut
        # costs one copy plus its unflushed changes.
        self.flush_at = [i for i, r in enumerate(self.recs) if r[0] == "F"]

    def marks(self, cut):
        """(last op started, last op whose flush completed) before cut."""
        started = flushed = 0
        for r in self.recs[:cut]:
            if r[0] == "E" and r[1].startswith("vdcrash "):
                what, k = r[1].split()[1:3]
                if what == "start":
                    started = int(k)
                elif what == "flushed":
                    flushed = int(k)
        return started, flushed

    def cuts(self, n, rng):
        """Up to n cut positions: around every flush first, then the
        positions after changes, sampled; always the end."""
        changes = [i + 1 for i, r in enumerate(self.recs) if r[0] in "WZDT"]
        near = set()
        for f in self.flush_at:
            near.update((f, f + 1))
        near = sorted(c for c in near if 0 < c <= len(self.recs))
        pick = set(near if len(near) <= n // 2 else rng.sample(near, n // 2))
        rest = [c for c in changes if c not in pick]
        pick.update(rng.sample(rest, min(len(rest), n - len(pick))))
        pick.add(len(self.recs))
        return sorted(pick)

    def images(self, cuts, variants, rng):
        """Yield (cut, variant, image, started, flushed) for sorted cuts
        (started, flushed: as marks()); variant "drop" drops every change
        after the last flush before the cut, "keep" keeps them all,
        "random" keeps a random subset (FUA writes are always kept).  The
        image is a bytearray that the next step overwrites: use it (or
        write_image it) before asking for the next one.  Images are often
        tens of MiB, mostly the file's zero tail: one buffer reused means
        no fresh memory per image (page faults are costly on some hosts)."""
        durable = bytearray(self.base)
        img = bytearray()
        done = started = flushed = 0  # records folded into durable
        pending = []
        for cut in cuts:
            for r in self.recs[done:cut]:
                if r[0] == "F":
                    for p in pending:
                        apply(durable, p)
                    pending = []
                elif r[0] in "WZDT":
                    pending.append(r)
                elif r[0] == "E" and r[1].startswith("vdcrash "):
                    what, k = r[1].split()[1:3]
                    if what == "start":
                        started = int(k)
                    elif what == "flushed":
                        flushed = int(k)
            done = cut
            for v in variants:
                img[:] = durable
                for p in pending:
                    if v == "keep" or (v == "random" and rng.random() < 0.5) or \
                            (p[0] == "W" and p[2]):
                        apply(img, p)
                yield cut, v, img, started, flushed


def write_image(path, data):
    """Write an image's bytes to path, its zero tail as a hole."""
    end, step = len(data), 1 << 20
    zero = bytes(step)
    while end > 0:
        start = max(0, end - step)
        if data[start:end] != zero[:end - start]:
            end = start + len(bytes(data[start:end]).rstrip(b"\0"))
            break
        end = start
    mv = memoryview(data)
    with open(path, "wb") as f:
        f.write(mv[:end])
        f.truncate(len(data))


def read_image(path):
    """An image file's bytes for the readers, mapped rather than read: a
    crashed qcow2 file keeps its grown-ahead zero tail, which the readers
    never look at."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


# ---- the guest workload ----

def parse_script(text, first=1):
    """Ops of a vdisk-crashload script: list of (k, cmd, a, b)."""
    ops, k = [], first
    for line in text.splitlines():
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        a = int(f[1], 0) if len(f) > 1 else 0
        b = int(f[2], 0) if len(f) > 2 else 0
        ops.append((k, f[0], a, b))
        k += 1
    return ops


class Model:
    """What each guest sector may read as after a crash: a value (op
    number, 0 for zeroes) per op that wrote it; None for a discard, which
    may or may not take effect."""

    def __init__(self, ops, size, initial=None):
        # sector -> [(k, value)], value 0: zeroes; initial values (op 0)
        # are what an earlier run left, as stable as flushed data.
        self.hist = {s: [(0, v)] for s, v in (initial or {}).items()}
        self.size = size
        for k, cmd, a, b in ops:
            if cmd == "write":
                for s in range(a // SECTOR, (a + b) // SECTOR):
                    self.hist.setdefault(s, []).append((k, k))
            elif cmd in ("zero", "discard"):
                # discard is advisory (qcow2 drops whole clusters only)
                v = 0 if cmd == "zero" else None
                for s in range(a // SECTOR, (a + b) // SECTOR):
                    self.hist.setdefault(s, []).append((k, v))
            elif cmd == "truncate":
                for s in [s for s in self.hist if s * SECTOR >= a]:
                    self.hist[s].append((k, 0))
                self.size = max(self.size, a)

    def allowed(self, sector, started, flushed):
        """Values sector may hold when ops up to started began and the
        flush of op flushed completed."""
        ok, last = set(), {0}
        for k, v in self.hist.get(sector, ()):
            if k <= flushed:
                last = last | {0} if v is None else {v}
            elif k <= started:
                ok.add(0 if v is None else v)
        return ok | last


def sector_value(buf, sector):
    """Which op wrote buf (one sector of guest sector `sector`): its number,
    0 for zeroes, -1 for anything else."""
    if buf.count(0) == len(buf):
        return 0
    if buf[:4] == b"VDCR":
        k, s = struct.unpack_from("<QQ", buf, 4)
        if s == sector and buf[20:] == bytes([k & 0xff]) * (len(buf) - 20):
            return k
    return -1


# ---- reading a qcow2 image (standard L2 entries, no compression) ----

class Qcow2Reader:
    """A minimal, independent qcow2 reader for judging crashed images."""

    def __init__(self, data):
        self.d = data
        (magic, ver) = struct.unpack_from(">II", data, 0)
        if magic != 0x514649fb:
            raise ValueError("not qcow2")
        self.cluster_bits = struct.unpack_from(">I", data, 20)[0]
        self.size = struct.unpack_from(">Q", data, 24)[0]
        self.l1_size = struct.unpack_from(">I", data, 36)[0]
        self.l1_off = struct.unpack_from(">Q", data, 40)[0]
        self.incompat = struct.unpack_from(">Q", data, 72)[0] if ver >= 3 else 0
        if self.incompat & 0x14:
            raise ValueError("data file / extended L2 not supported here")
        self.cs = 1 << self.cluster_bits
        self.l2_entries = self.cs // 8

    def u64(self, off):
        if off + 8 > len(self.d):
            return 0
        return struct.unpack_from(">Q", self.d, off)[0]

    def clusters(self):
        """Yield (guest cluster, host offset or None for zero clusters) of
        every mapped guest cluster."""
        mask = 0x00fffffffffffe00
        for i in range(self.l1_size):
            l2 = self.u64(self.l1_off + 8 * i) & mask
            if not l2:
                continue
            tbl = self.d[l2:l2 + self.cs]
            tbl += bytes(self.cs - len(tbl))
            for j, e in enumerate(struct.unpack(">%dQ" % self.l2_entries, tbl)):
                if not e:
                    continue
                if e & (1 << 62):
                    raise ValueError("compressed cluster")
                gc = i * self.l2_entries + j
                yield gc, None if e & 1 else (e & mask)

    def read(self, host, ln):
        b = self.d[host:host + ln]
        return b + bytes(ln - len(b))


def judge(image, model, started, flushed, reader=None):
    """Problems of a crashed image (bytes) against the model: a list of
    strings, empty when every sector reads as allowed.  reader: the image
    reader class (Qcow2Reader unless given; the same interface)."""
    q = (reader or Qcow2Reader)(image)
    spc = q.cs // SECTOR
    size = min(q.size, model.size)
    bad, seen = [], set()

    def check(sector, val):
        if sector * SECTOR >= size or len(bad) >= 10:
            return
        ok = model.allowed(sector, started, flushed)
        if val not in ok:
            bad.append("guest sector %d (offset %#x) reads as %s, allowed %s" % (
                sector, sector * SECTOR, "garbage" if val < 0 else
                ("zeroes" if val == 0 else "op %d" % val), sorted(ok)))

    for gc, host in q.clusters():
        for i in range(spc):
            s = gc * spc + i
            seen.add(s)
            check(s, 0 if host is None else
                  sector_value(q.read(host + i * SECTOR, SECTOR), s))
    for s in model.hist:
        if s not in seen:
            check(s, 0)
    return bad


def observe(image, reader=None):
    """{guest sector: value} of every sector of a qcow2 image (bytes) that
    does not read as zeroes (reader: as for judge)."""
    q = (reader or Qcow2Reader)(image)
    spc, vals = q.cs // SECTOR, {}
    for gc, host in q.clusters():
        for i in range(spc if host is not None else 0):
            s = gc * spc + i
            v = sector_value(q.read(host + i * SECTOR, SECTOR), s)
            if v and s * SECTOR < q.size:
                vals[s] = v
    return vals


def header_dirty(image):
    """Is the dirty bit set in a qcow2 image (bytes)?"""
    ver = struct.unpack_from(">I", image, 4)[0]
    return ver >= 3 and struct.unpack_from(">Q", image, 72)[0] & 1


def qemu_check(path):
    """qemu-img check: (ok, output); leaks are fine, corruption is not."""
    p = subprocess.run([QEMU_IMG, "check", str(path)], capture_output=True, text=True)
    return p.returncode in (0, 3), p.stdout + p.stderr


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log")
    ap.add_argument("base")
    ap.add_argument("script")
    ap.add_argument("--cuts", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="crash-replay.qcow2")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    with open(a.base, "rb") as f:
        rp = Replay(a.log, f.read())
    with open(a.script) as f:
        ops = parse_script(f.read())
    model = Model(ops, Qcow2Reader(rp.base).size)
    fails = 0
    for cut, v, img, started, flushed in rp.images(rp.cuts(a.cuts, rng),
                                                   ("drop", "random"), rng):
        write_image(a.out, img)
        ok, out = qemu_check(a.out)
        bad = [] if header_dirty(img) else judge(img, model, started, flushed)
        if not ok or bad:
            fails += 1
            print("cut %d (%s): %s %s" % (cut, v, out.strip(), bad))
    print("%d failing cuts" % fails)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
