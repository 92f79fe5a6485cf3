# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-img convert: images written equal qemu-img's (content and
allocation) for every copy option, concatenation, -n targets, progress,
salvage, injected read/write errors, ENOSPC, and every usage error worded
and exited as qemu-img does."""
import os
import random
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from filemap import allocated_bytes
from conftest import QEMU_IMG, VDISK_IMG, qimg, vimg, vimg_traced, needs_vdisk_format
from test_cli import differential, nobody_prefix

MIB = 1 << 20


def make_mixed(path, mib=8, seed=7):
    """Per MiB: random data, written zeros, a hole or text (as mkmixed)."""
    rng = random.Random(seed)
    text = (b"lorem ipsum dolor sit amet 0123456789\n" * 30000)[:MIB]
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
        for i in range(mib):
            kind = i % 4
            if kind == 2:
                continue
            f.seek(i * MIB)
            if kind == 0:
                f.write(rng.randbytes(MIB))
            elif kind == 1:
                f.write(bytes(MIB))
            else:
                f.write(text)
        # small islands inside a hole and a zero run, unaligned
        f.seek(2 * MIB + 12345)
        f.write(b"island")
        f.seek(5 * MIB - 700)
        f.write(b"\x01" * 1400)
    return path


def allocated(path):
    """Bytes of the file with storage behind them."""
    return allocated_bytes(path)


def layout(path):
    """Where the file has data and holes, as qemu-img map sees it."""
    return qimg("map", "--output=json", "-f", "raw", path, check=True).stdout.replace(
        str(path), "")


def same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


@pytest.fixture
def work(tmp_path):
    """A directory with a mixed image, an all-zero one and odd-sized ones."""
    make_mixed(tmp_path / "m.raw")
    with open(tmp_path / "z.raw", "wb") as f:
        f.truncate(MIB)
    with open(tmp_path / "u1.raw", "wb") as f:
        f.write(os.urandom(1000))
    with open(tmp_path / "u2.raw", "wb") as f:
        f.write(os.urandom(700))
    with open(tmp_path / "d.raw", "wb") as f:
        f.write(b"\x11" * MIB)
    (tmp_path / "rd.conf").write_text('[inject-error]\nevent = "read_aio"\nerrno = "5"\n')
    (tmp_path / "wr.conf").write_text('[inject-error]\nevent = "write_aio"\nerrno = "28"\n')
    return tmp_path


def both(work, args, out_q="q.raw", out_v="v.raw"):
    """Convert with both programs (same arguments, own outputs)."""
    for o in (out_q, out_v):
        if os.path.exists(work / o):
            os.unlink(work / o)
    q = subprocess.run([QEMU_IMG, "convert"] + args + [out_q], cwd=work,
                       capture_output=True, text=True, timeout=300)
    v = subprocess.run([VDISK_IMG, "convert"] + args + [out_v], cwd=work,
                       capture_output=True, text=True, timeout=300)
    return q, v


@pytest.mark.parametrize("opts", [
    [], ["-W"], ["-m", "1"], ["-m", "16", "-W"], ["-S", "0"], ["-S", "64k"],
    ["-S", "512"], ["-S", "16M"], ["-t", "none", "-T", "none"],
    ["-t", "writeback"], ["-f", "raw", "-O", "raw"], ["-r", "1G"], ["-C"],
    ["-U"], ["-q"],
])
def test_output_equals_qemu(work, needs_qemu, opts):
    q, v = both(work, opts + ["m.raw"])
    assert q.returncode == 0 and v.returncode == 0, v.stderr
    assert v.stdout == "" and v.stderr == ""
    assert same_content(work / "q.raw", work / "v.raw")
    assert same_content(work / "m.raw", work / "v.raw")
    if "-C" not in opts:       # qemu-img's copy offloading keeps other extents
        assert layout(work / "v.raw") == layout(work / "q.raw")
        assert qimg("compare", "-s", work / "q.raw", work / "v.raw").returncode == 0
    assert qimg("compare", work / "q.raw", work / "v.raw").returncode == 0


def test_holes_and_zeros_stay_sparse(work):
    assert vimg("convert", "-O", "raw", work / "m.raw", work / "v.raw").returncode == 0
    # 8 MiB: 2 MiB random + 2 MiB text + islands are data; zeros become holes
    assert allocated(work / "v.raw") < 5 * MIB
    assert same_content(work / "m.raw", work / "v.raw")


def test_sparse_zero_fully_allocates(work):
    assert vimg("convert", "-S", "0", work / "z.raw", work / "v.raw").returncode == 0
    assert allocated(work / "v.raw") >= MIB


def test_concatenation(work, needs_qemu):
    q, v = both(work, ["m.raw", "u1.raw", "u2.raw", "z.raw"])
    assert q.returncode == v.returncode == 0
    assert same_content(work / "q.raw", work / "v.raw")
    with open(work / "v.raw", "rb") as f:
        data = f.read()
    # each source is padded to whole 512-byte sectors, as in qemu-img
    assert len(data) == 8 * MIB + 1024 + 1024 + MIB
    assert data[8 * MIB:8 * MIB + 1000] == (work / "u1.raw").read_bytes()
    assert data[8 * MIB + 1024:8 * MIB + 1724] == (work / "u2.raw").read_bytes()


def test_existing_target_n(work):
    tgt = work / "t.raw"
    with open(tgt, "wb") as f:
        f.write(b"\xee" * (10 * MIB))
    p = vimg("convert", "-n", work / "m.raw", tgt)
    assert p.returncode == 0, p.stderr
    data = tgt.read_bytes()
    assert data[:8 * MIB] == (work / "m.raw").read_bytes()
    assert data[8 * MIB:] == b"\xee" * (2 * MIB)       # tail untouched


def test_target_is_zero_skips_zero_writes(work):
    tgt = work / "t.raw"
    with open(tgt, "wb") as f:
        f.write(b"\xee" * (8 * MIB))
    p = vimg("convert", "-n", "--target-is-zero", work / "m.raw", tgt)
    assert p.returncode == 0
    # the promise was false: zero ranges of the source were not written
    assert tgt.read_bytes()[2 * MIB:2 * MIB + 16] == b"\xee" * 16
    p = vimg("convert", "-n", work / "m.raw", tgt)
    assert same_content(tgt, work / "m.raw")


def test_image_opts_both_sides(work):
    tgt = work / "t.raw"
    with open(tgt, "wb") as f:
        f.truncate(8 * MIB)
    p = vimg("convert", "--image-opts", "-n", "--target-image-opts",
             "driver=raw,file.filename=%s" % (work / "m.raw"),
             "driver=raw,file.filename=%s" % tgt)
    assert p.returncode == 0, p.stderr
    assert same_content(tgt, work / "m.raw")


def test_progress_line(work, needs_qemu):
    v = differential("convert", "-p", "-O", "raw", "z.raw", "p.raw", cwd=work)
    # text mode reads "\r" and "\r\n" as "\n"
    assert v.stdout == "    (0.00/100%)\n    (100.00/100%)\n"
    raw = subprocess.run([VDISK_IMG, "convert", "-p", "z.raw", "p.raw"], cwd=work,
                         capture_output=True).stdout
    assert raw == b"    (0.00/100%)\r    (100.00/100%)\r\n"
    v = differential("convert", "-q", "-p", "-O", "raw", "z.raw", "p.raw", cwd=work)
    assert v.stdout == ""


def test_progress_reaches_100(work):
    p = subprocess.run([VDISK_IMG, "convert", "-p", work / "m.raw", work / "v.raw"],
                       capture_output=True)
    assert p.returncode == 0
    steps = p.stdout.decode().split("\r")
    assert steps[0] == "    (0.00/100%)" and steps[-2] == "    (100.00/100%)"
    assert steps[-1] == "\n"
    pct = [float(x.strip()[1:].split("/")[0]) for x in steps[:-1]]
    assert pct == sorted(pct) and len(pct) >= 3


def test_rate_limit_slows_down(work):
    t = time.monotonic()
    p = vimg("convert", "-r", "4M", work / "m.raw", work / "v.raw")
    assert p.returncode == 0
    assert time.monotonic() - t >= 0.5        # ~4.1 MiB of data at 4 MiB/s
    assert same_content(work / "m.raw", work / "v.raw")


def test_preallocation_option(work):
    p = vimg("convert", "-o", "preallocation=full", work / "z.raw", work / "v.raw")
    assert p.returncode == 0, p.stderr
    assert allocated(work / "v.raw") >= MIB


def test_salvage_matches_qemu(work, needs_qemu):
    with open(work / "s.raw", "wb") as f:
        f.write(b"\x22" * 4096)
    v = differential("convert", "--salvage", "-O", "raw", "blkdebug:rd.conf:s.raw",
                     "r.raw", cwd=work)
    assert v.returncode == 0
    assert v.stderr.count("warning: error while reading offset") == 8
    assert (work / "r.raw").read_bytes() == bytes(4096)


@pytest.mark.parametrize("args", [
    ["-O", "raw", "blkdebug:rd.conf:d.raw", "r.raw"],
    ["-n", "-O", "raw", "d.raw", "blkdebug:wr.conf:z.raw"],
    ["-n", "--target-image-opts", "d.raw",
     "driver=raw,file.driver=blkdebug,file.config=wr.conf,file.image.filename=z.raw"],
    ["-O", "raw", "d.raw", "blkdebug:wr.conf:x.raw"],
])
def test_io_errors_match_qemu(work, needs_qemu, args):
    v = differential("convert", *args, cwd=work)
    assert v.returncode == 1 and v.stderr.startswith("vdisk-img: ")


def test_enospc_on_small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.strip())
    try:
        src = make_mixed(tmp_path / "m.raw", mib=4)
        p = vimg("convert", "-O", "raw", src, mnt / "out.raw")
        assert p.returncode == 1
        assert "error while writing at byte" in p.stderr
        assert p.stderr.rstrip().endswith("No space left on device")
    finally:
        subprocess.run(["umount", str(mnt)])


def test_read_only_target_directory(work):
    prefix = nobody_prefix()
    if prefix is None:
        pytest.skip("cannot drop privileges (no setpriv)")
    top = tempfile.mkdtemp(prefix="vdisk-ro-")
    try:
        os.chmod(top, 0o755)
        ro = os.path.join(top, "ro")
        os.mkdir(ro, 0o555)
        src = os.path.join(top, "z.raw")
        shutil.copy(work / "z.raw", src)
        os.chmod(src, 0o644)
        out = []
        for prog in ([QEMU_IMG] if QEMU_IMG else []) + [VDISK_IMG]:
            out.append(subprocess.run(prefix + [prog, "convert", src,
                                                os.path.join(ro, "x.raw")],
                                      capture_output=True, text=True))
    finally:
        shutil.rmtree(top)
    ro = type(work)(ro)
    v = out[-1]
    assert v.returncode == 1
    assert "Could not create '%s': Permission denied" % (ro / "x.raw") in v.stderr
    if len(out) == 2:
        assert v.stderr == out[0].stderr.replace("qemu-img", "vdisk-img")


@pytest.mark.parametrize("args", [
    [], ["z.raw"], ["-O", "foo", "z.raw", "o.raw"], ["-f", "foo", "z.raw", "o.raw"],
    ["missing.raw", "o.raw"], ["-n", "z.raw", "missing2.raw"],
    ["-c", "-O", "raw", "z.raw", "o.raw"], ["-B", "x", "-O", "raw", "z.raw", "o.raw"],
    ["-m", "0", "z.raw", "o.raw"], ["-m", "17", "z.raw", "o.raw"],
    ["-m", "08", "z.raw", "o.raw"], ["-m", "x", "z.raw", "o.raw"],
    ["-S", "x", "z.raw", "o.raw"], ["-S", "511", "z.raw", "o.raw"],
    ["-S", "16777728", "z.raw", "o.raw"], ["--target-is-zero", "z.raw", "o.raw"],
    ["-l", "foo", "z.raw", "o.raw"], ["-l", "snapshot.foo=1", "z.raw", "o.raw"],
    ["-s", "foo", "z.raw", "o.raw"], ["-r", "x", "z.raw", "o.raw"],
    ["--bitmaps", "z.raw", "o.raw"], ["--skip-broken-bitmaps", "z.raw", "o.raw"],
    ["-o", "help"], ["-O", "raw", "-o", "help", "z.raw", "o.raw"], ["-o", "?"],
    ["-O", "foo", "-o", "help"], ["-O", "raw", "-o", "foo=bar", "z.raw", "o.raw"],
    ["-o", "size=x", "z.raw", "o.raw"], ["-o", ",,", "z.raw", "o.raw"],
    ["-x", "z.raw", "o.raw"], ["--foo", "z.raw", "o.raw"], ["--salvage=1", "a", "b"],
    ["-t", "bogus", "z.raw", "o.raw"], ["-T", "bogus", "z.raw", "o.raw"],
    ["-t", "bogus", "missing.raw", "o.raw"], ["z.raw", "-O"],
    ["-C", "-c", "z.raw", "o.raw"], ["-C", "-S", "4k", "z.raw", "o.raw"],
    ["-C", "--salvage", "z.raw", "o.raw"],
    ["--target-image-opts", "z.raw", "o.raw"], ["-o", "x", "-n", "z.raw", "o.raw"],
    ["--image-opts", "-f", "raw", "driver=raw,file.filename=z.raw", "o.raw"],
    ["--image-opts", "z.raw", "o.raw"],
    ["-n", "--target-image-opts", "-O", "raw", "z.raw", "driver=raw,file.filename=z.raw"],
    ["-O", "raw", "z.raw", "/nonexistent-dir/x.raw"],
    ["-n", "-O", "raw", "m.raw", "z.raw"], ["-n", "z.raw", "u1.raw"],
])
def test_usage_errors_match_qemu(work, needs_qemu, args):
    v = differential("convert", *args, cwd=work)
    if ("help" in args or "?" in args) and "foo" not in args:
        assert v.returncode == 0 and "size=<size>" in v.stdout
    else:
        assert v.returncode == 1 and v.stderr.startswith("vdisk-img: ")


def test_source_not_modified_when_target_is_source(work, needs_qemu):
    before = (work / "m.raw").read_bytes()
    v = differential("convert", "-O", "raw", "m.raw", "m.raw", cwd=work)
    assert 'Failed to get "write" lock' in v.stderr
    assert (work / "m.raw").read_bytes() == before


def test_qcow2_source_and_backing(work, needs_qemu):
    needs_vdisk_format("qcow2")
    qimg("convert", "-O", "qcow2", work / "m.raw", work / "m.qcow2", check=True)
    q, v = both(work, ["m.qcow2"])
    assert q.returncode == v.returncode == 0
    assert same_content(work / "v.raw", work / "m.raw")
    v = differential("convert", "-n", "--target-is-zero", "-B", "z.raw", "-F", "raw",
                     "-O", "qcow2", "z.raw", "m.qcow2", cwd=work)
    assert v.returncode == 0 and "backing file" in v.stderr


def traced_convert(work, syscall, src, dst, *args):
    """Convert src to dst (raw to raw, in work) under strace, tracing one
    system call (strings cut short): the log's text."""
    log = work / ("trace-" + syscall)
    p = vimg_traced(log, syscall, "convert", *args, "-f", "raw", "-O", "raw",
                    work / src, work / dst)
    assert p.returncode == 0, p.stderr
    assert same_content(work / src, work / dst)
    return log.read_text()


def test_copy_offload_copies_inside_the_host(work):
    """-C copies data ranges with copy_file_range and keeps holes."""
    log = traced_convert(work, "copy_file_range", "m.raw", "c.raw", "-C")
    calls = [l for l in log.splitlines() if "copy_file_range(" in l]
    assert calls and all("= -1" not in l for l in calls)
    assert allocated(work / "c.raw") <= allocated(work / "m.raw")


def traced_write_sizes(work, *args):
    """Sizes of the pwrite64 calls a convert of 4 MiB of random data makes."""
    with open(work / "d4.raw", "wb") as f:
        f.write(os.urandom(4 * MIB))
    log = traced_convert(work, "pwrite64", "d4.raw", "t.raw", *args)
    # The size argument (a call another thread interrupts ends its line
    # "<unfinished ...>"; its arguments are on that line).
    return [int(m.group(1)) for m in
            re.finditer(r'pwrite64\(\d+, "[^"]*"(?:\.\.\.)?, (\d+), \d+', log)]


def test_buffered_writes_in_256k_pieces(work):
    """Buffered writes to a regular file go in pieces of at most 256 KiB
    (smaller page-cache folios); with -t none (O_DIRECT) they are not cut."""
    sizes = traced_write_sizes(work)
    # (the first block may be written once more at create)
    assert sizes.count(256 << 10) == 16 and max(sizes) == 256 << 10
    try:
        fd = os.open(work / "probe", os.O_CREAT | os.O_WRONLY | os.O_DIRECT)
        os.close(fd)
    except OSError:
        return
    sizes = traced_write_sizes(work, "-t", "none")
    assert sum(sizes) >= 4 * MIB and max(sizes) > 256 << 10


def test_buffered_writes_one_at_a_time(work):
    """The copy engine's workers write a regular file one request at a time
    (the kernel would serialise them anyway, spinning its waiters on the
    CPU): no pwrite64 starts while another thread's is unfinished."""
    with open(work / "d32.raw", "wb") as f:
        f.write(os.urandom(32 * MIB))
    log = traced_convert(work, "pwrite64", "d32.raw", "t.raw", "-m", "8")
    busy, starts = set(), 0
    for line in log.splitlines():
        tid = line.split(None, 1)[0]
        if re.match(r"\d+ +pwrite64\(", line):
            assert not busy - {tid}, line
            starts += 1
            if line.endswith("<unfinished ...>"):
                busy.add(tid)
        elif "<... pwrite64 resumed>" in line:
            busy.discard(tid)
    assert starts >= 128


def worker_threads(work, *args):
    """Threads a convert of 32 MiB of random data starts."""
    if not (work / "d32.raw").exists():
        with open(work / "d32.raw", "wb") as f:
            f.write(os.urandom(32 * MIB))
    log = traced_convert(work, "clone,clone3", "d32.raw", "t.raw", *args)
    return len(re.findall(r"\bclone3?\(", log))


def test_default_workers_two_per_processor(work):
    """Without -m the copy engine runs two workers per processor, at most
    eight: the threads it starts are those of -m with that number."""
    n = min(8, 2 * os.sysconf("SC_NPROCESSORS_ONLN"))
    default = worker_threads(work)
    assert default == worker_threads(work, "-m", str(n))
    assert default < worker_threads(work, "-m", str(n + 1))


def test_copy_offload_rejects_sparse_option(work, needs_qemu):
    differential("convert", "-C", "-S", "4k", "-O", "raw", "m.raw", "c.raw", cwd=work)


def test_sigusr1_reports_progress(work):
    """Without -p, SIGUSR1 makes convert print one progress line."""
    import signal
    p = subprocess.Popen([VDISK_IMG, "convert", "-r", "2M", "-f", "raw", "-O", "raw",
                          str(work / "m.raw"), str(work / "v.raw")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "/100%)" in out
    assert same_content(work / "m.raw", work / "v.raw")
