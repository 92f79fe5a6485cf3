# SPDX-License-Identifier: BSD-3-Clause
"""convert -c: compressed qcow2 output written by every copy worker, read
back by qemu-img (check clean, compare identical to the source and to
qemu-img's own -c output) and no larger than qemu's."""
import os
import subprocess
import sys

import pytest

from conftest import TOP, qimg, vimg, needs_vdisk_format
from test_cli import differential
from chain_helpers import allocation

MKMIXED = os.environ.get("MKMIXED", os.path.join(os.path.dirname(TOP), "shared", "bench",
                                                 "mkmixed"))
MB = 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("qcow2")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """32 MiB of the benchmark's mixed data (or a stand-in without mkmixed)."""
    path = tmp_path_factory.mktemp("mixed") / "mixed.raw"
    if os.path.exists(MKMIXED):
        subprocess.run([sys.executable, MKMIXED, str(path), "32"], check=True,
                       capture_output=True)
    else:
        with open(path, "wb") as f:
            for i in range(32):
                kind = i % 5
                f.write(os.urandom(MB) if kind < 2 else b"\0" * MB if kind == 2
                        else (b"the quick brown fox %d\n" % i) * (MB // 22) +
                        b"\n" * (MB % 22) if kind == 3 else b"\0" * MB)
    return path


def compressed_pair(tmp_path, src, *opts, fmt=None):
    """qemu-img's and vdisk-img's `convert -c opts src`; both checked."""
    outs = []
    for name, tool in (("q.qcow2", qimg), ("v.qcow2", vimg)):
        out = tmp_path / name
        args = ["convert", "-c", "-O", "qcow2"] + list(opts)
        if fmt:
            args += ["-f", fmt]
        p = tool(*(args + [src, out]))
        assert p.returncode == 0, p.stderr
        outs.append(out)
    p = qimg("check", outs[1])
    assert p.returncode == 0, p.stdout
    assert qimg("compare", outs[0], outs[1]).returncode == 0
    return outs


@pytest.mark.parametrize("opts", [[], ["-o", "compression_type=zstd"], ["-W"], ["-m", "1"],
                                  ["-o", "cluster_size=2M"], ["-o", "cluster_size=4k"],
                                  ["-S", "0"], ["-o", "extended_l2=on"]])
def test_compress_mixed(tmp_path, mixed, opts):
    q, v = compressed_pair(tmp_path, mixed, *opts)
    assert qimg("compare", "-F", "raw", v, mixed).returncode == 0
    # Compressed clusters are packed in the order workers finish them; with
    # huge clusters on a small image that may cost a cluster or two.
    slack = 2 * (2 * MB) if "cluster_size=2M" in opts else 0
    assert os.path.getsize(v) <= os.path.getsize(q) * 1.02 + slack
    assert "compressed clusters" in qimg("check", v).stdout


def test_compress_zero_clusters_unallocated(tmp_path, mixed):
    """All-zero clusters (holes and written zeroes) are left out, as qemu."""
    q, v = compressed_pair(tmp_path, mixed)
    assert allocation(str(q), "qcow2") == allocation(str(v), "qcow2")


def test_compress_odd_sizes_and_sources(tmp_path):
    """Sources that end inside a cluster: clusters span two sources; the
    last cluster is short."""
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    a.write_bytes(os.urandom(1000) + b"A" * 99000)
    b.write_bytes(b"B" * 300000 + os.urandom(12345))
    outs = []
    for name, tool in (("q.qcow2", qimg), ("v.qcow2", vimg)):
        p = tool("convert", "-c", "-O", "qcow2", a, b, tmp_path / name)
        assert p.returncode == 0, p.stderr
        outs.append(tmp_path / name)
    assert qimg("check", outs[1]).returncode == 0
    assert qimg("compare", outs[0], outs[1]).returncode == 0


def test_compress_with_backing(tmp_path, mixed):
    """-B: only what differs from the backing file is written."""
    base = tmp_path / "base.qcow2"
    qimg("convert", "-O", "qcow2", mixed, base, check=True)
    src = tmp_path / "src.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", src, check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 3M", "-c", "write -z 8M 1M",
                    str(src)], check=True, capture_output=True)
    outs = []
    for name, tool in (("q.qcow2", qimg), ("v.qcow2", vimg)):
        p = tool("convert", "-c", "-O", "qcow2", "-B", base, "-F", "qcow2", src,
                 tmp_path / name)
        assert p.returncode == 0, p.stderr
        outs.append(tmp_path / name)
    assert qimg("check", outs[1]).returncode == 0
    assert qimg("compare", outs[0], outs[1]).returncode == 0
    assert qimg("compare", outs[1], src).returncode == 0


def test_compress_onto_existing_target(tmp_path, mixed):
    """-n onto a longer target: clusters past the data keep their bytes."""
    tgt = tmp_path / "t.qcow2"
    qimg("create", "-q", "-f", "qcow2", tgt, "40M", check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x77 32M 8M", str(tgt)], check=True,
                   capture_output=True)
    small = tmp_path / "s.raw"
    small.write_bytes(os.urandom(1000) + b"x" * 99000)
    p = vimg("convert", "-c", "-n", "-O", "qcow2", small, tgt)
    assert p.returncode == 0, p.stderr
    assert qimg("check", tgt).returncode == 0
    p = subprocess.run(["qemu-io", "-c", "read -P 0x78 1000 99000", "-c",
                        "read -P 0 100000 31M", "-c", "read -P 0x77 32M 8M", str(tgt)],
                       capture_output=True, text=True)
    assert "Pattern verification failed" not in p.stdout, p.stdout


@pytest.mark.parametrize("fmt", ["raw", "nosuch"])
def test_compress_unsupported_format(tmp_path, fmt):
    src = tmp_path / "s.raw"
    src.write_bytes(b"\0" * 65536)
    p = differential("convert", "-c", "-O", fmt, src, tmp_path / "out")
    assert p.returncode == 1
    assert not (tmp_path / "out").exists()


def test_compress_copy_offload_refused(tmp_path):
    src = tmp_path / "s.raw"
    src.write_bytes(b"\0" * 65536)
    p = differential("convert", "-c", "-C", "-O", "qcow2", src, tmp_path / "out")
    assert p.returncode == 1
