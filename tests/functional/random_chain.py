# SPDX-License-Identifier: BSD-3-Clause
"""Random backing chains for the differential test test_random_chain.py.

One seed decides everything: the layers (raw or qcow2 base, qcow2
overlays with random cluster size, refcount width, compat level, extended
L2, lazy refcounts, compression type and size), the qemu-io writes,
zero writes, discards and compressed writes on each layer, and the options
of the commands judged.  Every image is made by qemu-img and qemu-io; then
vdisk-img and qemu-img run the same commands on it (read, info, map, check,
compare, convert, commit) and must agree.

As a program it replays a seed by hand:

    /usr/bin/python3 tests/functional/random_chain.py SEED [DIR]

prints the commands that build the chain, builds it in DIR (default: a new
temporary directory), runs every judgement and prints each mismatch."""
import difflib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import QEMU_IMG, VDISK_IMG                      # noqa: E402
from chain_helpers import allocation                          # noqa: E402

QEMU_IO = shutil.which("qemu-io")
PYTHON = "/usr/bin/python3"
KB, MB = 1024, 1 << 20

# Cluster sizes and their weights: small ones and the default favoured.
CLUSTERS = [(512, 5), (1 * KB, 2), (2 * KB, 2), (4 * KB, 4), (8 * KB, 1), (16 * KB, 2),
            (32 * KB, 2), (64 * KB, 6), (128 * KB, 1), (256 * KB, 1), (512 * KB, 1),
            (1 * MB, 1), (2 * MB, 1)]
REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64]
DATA_FILES = {"rnd.bin": 65537, "mix.bin": 81920}     # qemu-io write -s sources


class GenerationError(Exception):
    """qemu-img or qemu-io refused a command the generator made."""


def pick_cluster(rng):
    sizes, weights = zip(*CLUSTERS)
    return rng.choices(sizes, weights)[0]


class Layer:
    """One image of the chain: created by qemu-img, then written by qemu-io."""

    def __init__(self, index, fmt, size, opts, cluster, backing):
        self.index, self.fmt, self.size, self.opts = index, fmt, size, opts
        self.cluster, self.backing = cluster, backing
        self.name = "L%d.%s" % (index, fmt)
        self.ops = []
        self.touched = set()     # clusters that may have a host offset now

    def clusters(self, off, length):
        return range(off // self.cluster, (off + length - 1) // self.cluster + 1)

    def note(self, kind, off, length):
        """Track the clusters an op may have allocated: compressed writes
        fail (EIO, as in qemu) on a cluster that has a host offset, so the
        generator only compresses into clusters no earlier op touched, or
        a discard covered whole (and not on a v2 image with a backing
        file: qemu keeps those, as it cannot make them read as zeroes)."""
        if kind == "discard" and "compat=0.10" in self.opts and self.backing:
            return
        if kind != "discard":
            self.touched.update(self.clusters(off, length))
            return
        for c in self.clusters(off, length):
            start, end = c * self.cluster, min((c + 1) * self.cluster, self.size)
            if off <= start and end <= off + length:
                self.touched.discard(c)

    def l2_span(self):
        """Guest bytes one L2 table maps (raw: none)."""
        if self.fmt == "raw":
            return None
        entry = 16 if "extended_l2=on" in self.opts else 8
        return self.cluster // entry * self.cluster

    def create_argv(self):
        argv = [QEMU_IMG, "create", "-q", "-f", self.fmt]
        if self.opts:
            argv += ["-o", ",".join(self.opts)]
        if self.backing:
            argv += ["-b", self.backing.name, "-F", self.backing.fmt]
        return argv + [self.name, str(self.size)]

    def sessions(self):
        """The ops split into qemu-io runs.  A new run starts at each
        compressed write that follows another kind of write: qemu 7.2 keeps
        the host cluster it last packed compressed data into while that
        cluster is freed (its compressed clusters overwritten) and reused
        for data, then packs the next compressed cluster into it, over the
        data (qemu-io -c 'write -c 0 64k' -c 'write 0 64k' -c 'write 128k
        64k' -c 'write -c 256k 64k' leaves an image qemu-img check calls
        corrupt).  A fresh process forgets that cluster."""
        runs, run = [], []
        for op in self.ops:
            if op.startswith("write -c") and run and not run[-1].startswith("write -c"):
                runs.append(run)
                run = []
            run.append(op)
        return runs + [run] if run else runs

    def io_argvs(self):
        out = []
        for ops in self.sessions():
            argv = [QEMU_IO, "-f", self.fmt]
            for op in ops:
                argv += ["-c", op]
            out.append(argv + [self.name])
        return out


def qcow2_options(rng, cluster):
    """Random -o options of one qcow2 layer; constraints are qemu-img's
    (v2 has no refcount width, lazy refcounts, extended L2 or zstd;
    extended L2 needs 16 KiB clusters or more)."""
    v3 = rng.random() < 0.8
    opts = ["cluster_size=%d" % cluster, "compat=%s" % ("1.1" if v3 else "0.10")]
    if v3:
        if rng.random() < 0.6:
            opts.append("refcount_bits=%d" % rng.choice(REFCOUNT_BITS))
        if cluster >= 16 * KB and rng.random() < 0.4:
            opts.append("extended_l2=on")
        if rng.random() < 0.3:
            opts.append("lazy_refcounts=on")
        if rng.random() < 0.4:
            opts.append("compression_type=zstd")
    elif rng.random() < 0.3:
        opts.append("compression_type=zlib")
    return opts


def layer_size(rng, cluster, below):
    """A size in sectors: sometimes a cluster multiple, sometimes not; an
    overlay is as large as, smaller or larger than its backing file."""
    if below is not None:
        r = rng.random()
        if r < 0.4:
            return below
        delta = rng.choice([512, 4 * KB, 64 * KB, rng.randrange(512, MB, 512)])
        size = below - delta if r < 0.7 else below + delta
        size = max(size, 64 * KB)
    else:
        size = rng.randrange(256 * KB, 4 * MB + 1, 512)
    if rng.random() < 0.35:
        size = max(cluster, size // cluster * cluster)
    return size


class Chain:
    """A chain and the commands judged on it, all drawn from one seed."""

    def __init__(self, seed):
        self.seed = seed
        rng = random.Random(seed)
        self.layers = []
        n = rng.choice([1, 2, 2, 3, 3, 4])
        below = None
        for i in range(n):
            raw = i == 0 and rng.random() < 0.3
            cluster = 64 * KB if raw else pick_cluster(rng)
            opts = [] if raw else qcow2_options(rng, cluster)
            size = layer_size(rng, cluster, below.size if below else None)
            layer = Layer(i, "raw" if raw else "qcow2", size, opts, cluster, below)
            self.layers.append(layer)
            below = layer
        for layer in self.layers:
            layer.ops = [c for _ in range(rng.randint(1, 8)) for c in self.op(rng, layer)]
        self.judged = self.judge_options(rng)

    @property
    def top(self):
        return self.layers[-1]

    def boundaries(self, layer):
        """Boundaries worth crossing: clusters and L2 tables of this layer
        and the layers below it."""
        out = []
        lay = layer
        while lay:
            out.append(lay.cluster)
            if lay.l2_span() and lay.l2_span() < layer.size:
                out += [lay.l2_span()] * 2
            lay = lay.backing
        return out

    def op(self, rng, layer):
        """One operation on layer: a list of qemu-io commands."""
        kinds = ["write", "zero", "zero-unmap", "discard"]
        weights = [8, 3, 2, 3]
        if layer.fmt == "qcow2":
            kinds.append("compressed")
            weights.append(4)
        kind = rng.choices(kinds, weights)[0]
        if kind == "compressed":
            ops = self.compressed_op(rng, layer)
            if ops:
                return ops
            kind = "write"
        off, length = self.extent(rng, layer)
        layer.note(kind, off, length)
        if kind == "write":
            return ["write %s %d %d" % (self.source(rng), off, length)]
        if kind == "zero":
            return ["write -z %d %d" % (off, length)]
        if kind == "zero-unmap":
            return ["write -z -u %d %d" % (off, length)]
        return ["discard %d %d" % (off, length)]

    def source(self, rng):
        if rng.random() < 0.3:
            return "-s " + rng.choice(sorted(DATA_FILES))
        return "-P 0x%02x" % rng.choice([0] + list(range(1, 256)))

    def extent(self, rng, layer):
        """Offset and length within layer: unaligned, sector or cluster
        aligned, crossing a cluster or L2-table boundary, or at the end."""
        size = layer.size
        how = rng.choice(["any", "sector", "cluster", "cross", "cross", "tail"])
        unit = rng.choice(self.boundaries(layer))
        if how == "any":
            off = rng.randrange(size)
            length = rng.randint(1, 256 * KB)
        elif how == "sector":
            off = rng.randrange(0, size, 512)
            length = 512 * rng.randint(1, 256)
        elif how == "cluster":
            off = rng.randrange(0, size, unit)
            length = unit * rng.randint(1, 4)
        elif how == "cross":
            edge = rng.randrange(unit, size + unit, unit) if unit < size else size
            edge = min(edge, size)
            off = max(0, edge - rng.randint(1, min(unit, 96 * KB)))
            length = edge - off + rng.randint(1, min(unit, 96 * KB))
        else:
            off = max(0, size - rng.randint(1, 200 * KB))
            length = size - off
        return off, max(1, min(length, size - off))

    def compressed_op(self, rng, layer):
        """Compressed writes of 1-3 clusters (the last may be the partial
        last cluster of the image), none of them allocated yet (else None).
        One command per cluster: qemu compresses the clusters of one
        request in parallel threads and packs them in the order they
        finish, so the image layout would differ from run to run."""
        cl = layer.cluster
        for _ in range(8):
            off = rng.randrange(0, layer.size, cl)
            length = min(cl * rng.randint(1, 3), layer.size - off)
            if not layer.touched.intersection(layer.clusters(off, length)):
                layer.note("compressed", off, length)
                src = self.source(rng)
                return ["write -c %s %d %d" % (src, o, min(cl, off + length - o))
                        for o in range(off, off + length, cl)]
        return None

    def judge_options(self, rng):
        """Options of the commands judged, drawn after the chain."""
        j = {"compare_strict": rng.random() < 0.3,
             "convert_compress": rng.random() < 0.5,
             "convert_cluster": pick_cluster(rng) if rng.random() < 0.6 else None,
             "convert_zstd": rng.random() < 0.2,
             "map_range": None, "commit": None}
        size = self.top.size
        if rng.random() < 0.3:
            start = rng.randrange(0, size)
            j["map_range"] = (start, rng.randint(1, size - start + 4096))
        bases = [l for l in self.layers[:-1] if not self.commit_fails(l)]
        how = rng.choice(["plain", "-d", "-b"])
        if bases and how != "-b" and bases[-1] is self.top.backing:
            j["commit"] = [] if how == "plain" else ["-d"]
        elif bases:
            j["commit"] = ["-b", rng.choice(bases).name]
        return j

    def commit_fails(self, base):
        """qemu-img commit grows a base shorter than the top, and zeroes the
        new area when base's backing file reaches into it; a v2 qcow2 cannot
        write zeroes over a backing file, so qemu-img fails ("Block job
        failed: Operation not supported"): no such base is drawn."""
        return "compat=0.10" in base.opts and base.backing is not None and \
            self.top.size > base.size and base.backing.size > base.size

    # ---- the commands that build the chain ----

    def data_argv(self):
        """Make the write -s sources: random bytes, and a mix of random
        bytes and compressible text."""
        code = ("import random; r = random.Random(%d); "
                "open('rnd.bin', 'wb').write(r.randbytes(%d)); "
                "open('mix.bin', 'wb').write(b''.join(r.randbytes(700) + b'vdisk-%%d ' %% i * 40 "
                "for i in range(%d))[:%d])"
                % (self.seed, DATA_FILES["rnd.bin"], DATA_FILES["mix.bin"] // 700 + 1,
                   DATA_FILES["mix.bin"]))
        return [PYTHON, "-c", code]

    def commands(self):
        cmds = [self.data_argv()]
        for layer in self.layers:
            cmds.append(layer.create_argv())
            cmds += layer.io_argvs()
        return cmds

    def script(self):
        """The commands as a shell script (programs by their names)."""
        lines = ["# seed %d: %s" % (self.seed, self.describe())]
        for argv in self.commands():
            lines.append(" ".join(shlex.quote(os.path.basename(a) if i == 0 else a)
                                  for i, a in enumerate(argv)))
        return "\n".join(lines)

    def describe(self):
        return " <- ".join("%s(%d%s)" % (l.name, l.size, "," + ",".join(l.opts) if l.opts else "")
                           for l in self.layers)

    def build(self, d):
        """Run the commands in directory d."""
        os.makedirs(d, exist_ok=True)
        for argv in self.commands():
            p = run(argv, d)
            if p.returncode != 0:
                raise GenerationError("%s: %s%s" % (shlex.join(argv), p.stdout, p.stderr))
            if argv[0] == QEMU_IO:
                done = re.findall(r"(?m)^(?:wrote|discard) (\d+)/(\d+) bytes at offset", p.stdout)
                nops = (len(argv) - 4) // 2
                if len(done) != nops or any(a != b for a, b in done):
                    raise GenerationError("%s: %s%s" % (shlex.join(argv), p.stdout, p.stderr))


def run(argv, cwd, timeout=300):
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, errors="replace")


# ---- judgements ----

class Judge:
    """Runs the commands on both tools and records every disagreement."""

    def __init__(self, chain, d):
        self.chain, self.d = chain, d
        self.mismatches = []

    def fail(self, what, detail):
        self.mismatches.append("[%s] %s" % (what, detail))

    def both(self, what, args, norm=lambda s: s):
        """Run vdisk-img and qemu-img with args in d; same exit code,
        stdout and stderr (program name aside), after norm."""
        v, q = run([VDISK_IMG] + args, self.d), run([QEMU_IMG] + args, self.d)
        vo, qo = norm(v.stdout), norm(q.stdout)
        ve, qe = v.stderr.replace("vdisk-img", "qemu-img"), q.stderr
        if (v.returncode, vo, ve) != (q.returncode, qo, qe):
            self.fail(what, "{qemu,vdisk}-img %s\n  exit: qemu-img %d, vdisk-img %d\n%s%s" % (
                shlex.join(args), q.returncode, v.returncode,
                diff("stdout", qo, vo), diff("stderr", qe, ve)))
        return q, v

    def read(self):
        """convert -O raw byte for byte; compare against the raw and the base."""
        top = self.chain.top.name
        q = run([QEMU_IMG, "convert", "-O", "raw", top, "q.raw"], self.d)
        v = run([VDISK_IMG, "convert", "-O", "raw", top, "v.raw"], self.d)
        if q.returncode or v.returncode:
            self.fail("read", "convert -O raw %s: qemu-img %d %s / vdisk-img %d %s" % (
                top, q.returncode, q.stderr, v.returncode, v.stderr))
            return
        first = first_difference(os.path.join(self.d, "q.raw"), os.path.join(self.d, "v.raw"))
        if first is not None:
            self.fail("read", "{qemu,vdisk}-img convert -O raw %s: vdisk-img's raw differs "
                      "from qemu-img's at offset %d (sizes %d, %d)" % (
                          top, first, os.path.getsize(os.path.join(self.d, "q.raw")),
                          os.path.getsize(os.path.join(self.d, "v.raw"))))
        self.both("compare", ["compare", "-F", "raw", top, "q.raw"])
        strict = ["-s"] if self.chain.judged["compare_strict"] else []
        base = self.chain.layers[0]
        self.both("compare", ["compare"] + strict + ["-f", self.chain.top.fmt, "-F", base.fmt,
                                                     top, base.name])

    def info(self):
        top = self.chain.top.name
        self.both("info", ["info", "--backing-chain", top], drop_disk_size)
        self.both("info", ["info", "--backing-chain", "--output=json", top], drop_disk_size)

    def map(self):
        for layer in self.chain.layers:
            fmt = ["-f", layer.fmt]
            self.both("map", ["map", "--output=json"] + fmt + [layer.name])
            self.both("map", ["map"] + fmt + [layer.name])
        rng = self.chain.judged["map_range"]
        if rng:
            args = ["--start-offset=%d" % rng[0], "--max-length=%d" % rng[1], self.chain.top.name]
            self.both("map", ["map", "--output=json"] + args)
            self.both("map", ["map"] + args)

    def check(self):
        for layer in self.chain.layers:
            q, _ = self.both("check", ["check", layer.name])
            self.both("check", ["check", "--output=json", layer.name])
            if layer.fmt == "qcow2" and q.returncode != 0:
                self.fail("qemu", "qemu-img check %s fails on the image qemu-io made (a qemu "
                          "bug to exclude in the generator):\n%s" % (layer.name, q.stdout))

    def convert(self):
        """vdisk-img convert -O qcow2: checks clean, reads as the source,
        and allocates what qemu-img convert allocates."""
        j, top = self.chain.judged, self.chain.top.name
        args = ["convert", "-O", "qcow2"]
        if j["convert_compress"]:
            args.append("-c")
        opts = []
        if j["convert_cluster"]:
            opts.append("cluster_size=%d" % j["convert_cluster"])
        if j["convert_zstd"]:
            opts.append("compression_type=zstd")
        if opts:
            args += ["-o", ",".join(opts)]
        q, v = self.both("convert", args + [top, "conv.qcow2"],)
        if v.returncode != 0 or q.returncode != 0:
            return
        # both tools wrote conv.qcow2 in turn (qemu-img last): write vdisk's again
        os.rename(os.path.join(self.d, "conv.qcow2"), os.path.join(self.d, "qconv.qcow2"))
        v = run([VDISK_IMG] + args + [top, "conv.qcow2"], self.d)
        if v.returncode != 0:
            self.fail("convert", "vdisk-img %s failed: %s" % (shlex.join(args), v.stderr))
            return
        p = run([QEMU_IMG, "check", "conv.qcow2"], self.d)
        if p.returncode != 0:
            self.fail("convert", "vdisk-img %s %s conv.qcow2; qemu-img check conv.qcow2: "
                      "exit %d\n%s%s" % (shlex.join(args), top, p.returncode, p.stdout, p.stderr))
        p = run([QEMU_IMG, "compare", top, "conv.qcow2"], self.d)
        if p.returncode != 0:
            self.fail("convert", "vdisk-img %s %s conv.qcow2; qemu-img compare %s conv.qcow2: "
                      "exit %d\n%s%s" % (shlex.join(args), top, top, p.returncode, p.stdout,
                                        p.stderr))
        qa = allocation(os.path.join(self.d, "qconv.qcow2"), "qcow2")
        va = allocation(os.path.join(self.d, "conv.qcow2"), "qcow2")
        if qa != va:
            self.fail("convert", "{qemu,vdisk}-img %s %s conv.qcow2: qemu-img map --output=json "
                      "of the results differs (offsets aside)\n%s" % (shlex.join(args), top,
                                      diff("map", pretty(qa), pretty(va))))

    def all(self):
        for step in (self.read, self.info, self.map, self.check, self.convert):
            try:
                step()
            except Exception as e:               # a helper's assert: a finding too
                self.fail(step.__name__, "%s: %s" % (type(e).__name__, e))


def commit(chain, qd, vd):
    """qemu-img commit in qd, vdisk-img commit in vd (the same chain built
    twice); the same messages, images that read the same, check clean and
    allocate the same."""
    out = []
    args = ["commit"] + chain.judged["commit"] + [chain.top.name]
    q, v = run([QEMU_IMG] + args, qd), run([VDISK_IMG] + args, vd)
    ve = v.stderr.replace("vdisk-img", "qemu-img")
    if (q.returncode, q.stdout, q.stderr) != (v.returncode, v.stdout, ve):
        out.append("[commit] {qemu,vdisk}-img %s\n  exit: qemu-img %d, vdisk-img %d\n%s%s" % (
            shlex.join(args), q.returncode, v.returncode, diff("stdout", q.stdout, v.stdout),
            diff("stderr", q.stderr, ve)))
    for layer in chain.layers:
        qf, vf = os.path.join(qd, layer.name), os.path.join(vd, layer.name)
        p = run([QEMU_IMG, "compare", "-f", layer.fmt, "-F", layer.fmt, qf, vf], qd)
        if p.returncode != 0:
            out.append("[commit] {qemu,vdisk}-img %s; %s after commit: qemu-img compare of the two "
                       "results: exit %d %s%s" % (shlex.join(args), layer.name, p.returncode,
                                                  p.stdout, p.stderr))
        if layer.fmt == "qcow2":
            p = run([QEMU_IMG, "check", vf], vd)
            if p.returncode != 0:
                out.append("[commit] vdisk-img %s; qemu-img check %s after it: "
                           "exit %d\n%s%s" % (shlex.join(args), layer.name, p.returncode,
                                              p.stdout, p.stderr))
        try:
            qa, va = allocation(qf, layer.fmt), allocation(vf, layer.fmt)
        except AssertionError as e:
            out.append("[commit] map of %s after commit failed: %s" % (layer.name, e))
            continue
        if qa != va:
            out.append("[commit] {qemu,vdisk}-img %s; qemu-img map --output=json %s differs "
                       "(offsets aside)"
                       "\n%s" % (shlex.join(args), layer.name,
                                 diff("map", pretty(qa), pretty(va), "qemu-img commit",
                                      "vdisk-img commit")))
    qi = run([QEMU_IMG, "info", "--backing-chain", chain.top.name], qd)
    vi = run([QEMU_IMG, "info", "--backing-chain", chain.top.name], vd)
    if drop_disk_size(qi.stdout) != drop_disk_size(vi.stdout):
        out.append("[commit] {qemu,vdisk}-img %s; qemu-img info --backing-chain differs\n%s" % (
            shlex.join(args), diff("info", drop_disk_size(qi.stdout),
                                   drop_disk_size(vi.stdout), "qemu-img commit",
                                   "vdisk-img commit")))
    return out


def same_files(chain, qd, vd):
    """The layers whose files differ between qd and vd."""
    return [l.name for l in chain.layers
            if first_difference(os.path.join(qd, l.name), os.path.join(vd, l.name)) is not None]


def check_seed(seed, d):
    """Build the chain of seed under d and judge it; returns (chain,
    mismatches).  d/q is judged and then committed by qemu-img; when a
    commit is judged, d/v is built too (and must come out byte for byte
    the same) and committed by vdisk-img."""
    chain = Chain(seed)
    qd, vd = os.path.join(d, "q"), os.path.join(d, "v")
    commits = chain.judged["commit"] is not None
    try:
        chain.build(qd)
        if commits:
            chain.build(vd)
    except GenerationError as e:
        return chain, ["[generator] a command that builds the chain failed (exclude what "
                       "qemu refuses in the generator): %s" % e]
    if commits:
        differ = same_files(chain, qd, vd)
        if differ:
            return chain, ["[qemu] the commands built %s differently twice (a nondeterminism "
                           "to exclude in the generator)" % ", ".join(differ)]
    judge = Judge(chain, qd)
    judge.all()
    out = judge.mismatches
    if commits:
        differ = same_files(chain, qd, vd)
        if differ:
            out.append("[readonly] %s changed while vdisk-img and qemu-img only read it "
                       "(info, map, check, compare, convert)" % ", ".join(differ))
        else:
            try:
                out += commit(chain, qd, vd)
            except Exception as e:                # a helper's assert: a finding too
                out.append("[commit] %s: %s" % (type(e).__name__, e))
    return chain, out


def report(seed, chain, mismatches):
    """The failure message: seed, how to replay it, the commands, the mismatches."""
    return ("seed %d: %d mismatch(es)\nreplay: VDISK_SEED=%d pytest-3 -q -p no:cacheprovider "
            "tests/functional/test_random_chain.py\n  or: %s tests/functional/random_chain.py %d\n"
            "chain commands (run in an empty directory):\n%s\n\n%s" % (
                seed, len(mismatches), seed, PYTHON, seed, chain.script(),
                "\n".join(mismatches)))


# ---- small helpers ----

def drop_disk_size(text):
    """info without the file-system dependent disk size."""
    text = re.sub(r"(?m)^disk size: .*\n", "", text)
    return re.sub(r'(?m)^\s*"actual-size": \d+,?\n', "", text)


def first_difference(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x, y = fa.read(MB), fb.read(MB)
            if x != y:
                n = min(len(x), len(y))
                return off + next((i for i in range(n) if x[i] != y[i]), n)
            if not x:
                return None
            off += len(x)


def pretty(entries):
    return "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)


def diff(what, q, v, qname="qemu-img", vname="vdisk-img", limit=40):
    if q == v:
        return ""
    lines = list(difflib.unified_diff(q.splitlines(), v.splitlines(), "%s (%s)" % (what, qname),
                                      "%s (%s)" % (what, vname), lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + ["... %d more lines" % (len(lines) - limit)]
    return "".join("  " + l + "\n" for l in lines)


def main():
    seed = int(sys.argv[1])
    d = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="chain-%d-" % seed)
    t = time.time()
    chain, mismatches = check_seed(seed, d)
    print(report(seed, chain, mismatches) if mismatches else
          "seed %d: no mismatch\n%s" % (seed, chain.script()))
    print("\n(built and judged in %s, %.1f s)" % (d, time.time() - t))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
