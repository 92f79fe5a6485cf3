# SPDX-License-Identifier: BSD-3-Clause
"""Every command that walks an image, on the images where walks go wrong:
(a) nothing allocated, (b) every cluster allocated, (c) a size that is not
a multiple of the cluster size, (d) chains whose layers have different
cluster sizes.  Each is built twice by qemu-img and qemu-io; qemu-img runs
on one copy and vdisk-img on the other: same messages and exit codes, and
images that read the same, check clean and map the same."""
import pytest

from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format, run
from chain_helpers import MB, QEMU_IO, make_chain, run_both, same_images, same_messages

UNALIGNED = 4 * MB + 1536          # ends 1.5 KiB into a 64 KiB cluster

CASES = {
    "empty": [
        ("b.qcow2", "qcow2", 4 * MB, None, []),
        ("t.qcow2", "qcow2", 4 * MB, "b.qcow2", []),
    ],
    "empty-raw-base": [
        ("b.raw", "raw", 4 * MB, None, []),
        ("t.qcow2", "qcow2", 4 * MB, "b.raw", []),
    ],
    "empty-3": [
        ("b.qcow2", "qcow2", 4 * MB, None, [], "cluster_size=2M"),
        ("m.qcow2", "qcow2", 4 * MB, "b.qcow2", [], "cluster_size=512"),
        ("t.qcow2", "qcow2", 4 * MB, "m.qcow2", []),
    ],
    "full": [
        ("b.qcow2", "qcow2", 4 * MB, None, ["write -P 1 0 4M"]),
        ("t.qcow2", "qcow2", 4 * MB, "b.qcow2", ["write -P 2 0 4M"]),
    ],
    "full-small-clusters": [
        ("b.qcow2", "qcow2", 1 * MB, None, ["write -P 1 0 1M"], "cluster_size=512"),
        ("t.qcow2", "qcow2", 1 * MB, "b.qcow2", ["write -P 2 0 1M", "write -z 4096 8192"],
         "cluster_size=512,refcount_bits=64"),
    ],
    "unaligned": [
        ("b.qcow2", "qcow2", UNALIGNED, None,
         ["write -P 1 0 1M", "write -P 5 4190000 5840"]),
        ("t.qcow2", "qcow2", UNALIGNED, "b.qcow2",
         ["write -P 3 4194304 1536", "write -P 4 1000 3000", "write -z 2M 100k"]),
    ],
    "unaligned-shorter-base": [
        ("b.qcow2", "qcow2", 2 * MB + 512, None, ["write -P 1 0 2M", "write -P 2 2M 512"]),
        ("t.qcow2", "qcow2", UNALIGNED, "b.qcow2", ["write -P 3 2M 4096"],
         "cluster_size=4096"),
    ],
    "mixed-clusters": [
        ("b.qcow2", "qcow2", 6 * MB, None,
         ["write -P 1 0 3M", "write -P 9 5M 100"], "cluster_size=512"),
        ("m.qcow2", "qcow2", 6 * MB, "b.qcow2",
         ["write -P 2 1M 1M", "write -z 2500000 700000", "write -P 8 4194000 1000"],
         "cluster_size=2M"),
        ("t.qcow2", "qcow2", 6 * MB, "m.qcow2",
         ["write -P 3 1500000 70000", "write -P 4 5M 4096", "discard 0 64k"],
         "cluster_size=4096,refcount_bits=1"),
    ],
}


def base_of(spec):
    """The bottom image of the chain and its format."""
    return spec[0][0], spec[0][1]


def commands(case):
    """The commands run on case: one list of arguments each."""
    spec = CASES[case]
    b, bf = base_of(spec)
    cmds = [
        ["commit", "t.qcow2"],
        ["commit", "-d", "t.qcow2"],
        ["rebase", "-b", "", "t.qcow2"],
        ["rebase", "-u", "-b", "", "t.qcow2"],
        ["resize", "t.qcow2", "+1M"],
        ["resize", "--shrink", "t.qcow2", str(2 * MB + 1024)],
        ["convert", "-O", "qcow2", "t.qcow2", "o.qcow2"],
        ["convert", "-O", "raw", "t.qcow2", "o.raw"],
        ["convert", "-c", "-O", "qcow2", "-o", "cluster_size=4k", "t.qcow2", "o.qcow2"],
        ["convert", "-O", "qcow2", "-B", b, "-F", bf, "t.qcow2", "o.qcow2"],
        ["compare", b, "t.qcow2"],
        ["compare", "-s", b, "t.qcow2"],
        ["map", "t.qcow2"],
        ["map", "--output=json", "t.qcow2"],
        ["measure", "-O", "qcow2", "t.qcow2"],
        ["measure", "--output=json", "-O", "qcow2", "-o", "cluster_size=512", "t.qcow2"],
        ["check", "t.qcow2"],
        ["check", "--output=json", "t.qcow2"],
        ["info", "--backing-chain", "--output=json", "t.qcow2"],
    ]
    if len(spec) > 2:
        cmds += [["commit", "-b", b, "t.qcow2"],
                 ["rebase", "-b", b, "-F", bf, "t.qcow2"],
                 ["rebase", "-u", "-b", b, "-F", bf, "t.qcow2"]]
    if bf == "qcow2":
        cmds += [["check", b], ["map", "--output=json", b]]
    return cmds


PARAMS = [(c, i) for c in CASES for i in range(len(commands(c)))]


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def outputs(args):
    """The images a command writes besides the chain."""
    return [(a, a.split(".")[1], 0, None, []) for a in args if a.startswith("o.")]


def no_disk_size(text):
    """info without what the file system decides."""
    return "\n".join(l for l in text.splitlines()
                     if "disk size" not in l and "actual-size" not in l)


@pytest.mark.parametrize("case,i", PARAMS,
                         ids=["%s-%s" % (c, " ".join(commands(c)[i])) for c, i in PARAMS])
def test_degenerate(tmp_path, case, i):
    spec = CASES[case]
    args = commands(case)[i]
    q, v, qd, vd = run_both(tmp_path, spec, args)
    if args[0] == "info":
        q.stdout, v.stdout = no_disk_size(q.stdout), no_disk_size(v.stdout)
    same_messages(q, v)
    same_images(qd, vd, spec + outputs(args), top="t.qcow2")


# Images whose block status answers end in different places: an L2 table
# covers 32 KiB (512 B clusters), 2 MiB (4 KiB), 512 MiB (64 KiB) or more.
STRICT_IMAGES = {
    "e2m.qcow2": ("qcow2", "cluster_size=2M", "4M", []),
    "e512.qcow2": ("qcow2", "cluster_size=512", "4M", []),
    "e64.qcow2": ("qcow2", "", "4M", []),
    "d512.qcow2": ("qcow2", "cluster_size=512", "4M", ["write -P 1 0 1M", "write -z 2M 64k"]),
    "d64.qcow2": ("qcow2", "", "4M", ["write -P 1 0 1M", "write -z 2M 64k"]),
    "r4.raw": ("raw", "", "4M", []),
    "d.raw": ("raw", "", "4M", ["write -P 1 0 1M"]),
    "x64k.qcow2": ("qcow2", "", "100M", ["write -P 1 0 64k"]),
    "x4k.qcow2": ("qcow2", "cluster_size=4k", "100M", ["write -P 1 0 64k"]),
    "e4k.qcow2": ("qcow2", "cluster_size=4k", "100M", []),
    "e64big.qcow2": ("qcow2", "", "100M", []),
}


def test_strict_compare_status_lengths(tmp_path):
    """compare -s compares every block status flag, EOF included, so each
    answer must end where QEMU's does: one L2 table at a time (QEMU's L2
    cache entry), not one cache slice of vdisk's."""
    spec = [(name, fmt, size, None, cmds, opts)
            for name, (fmt, opts, size, cmds) in STRICT_IMAGES.items()]
    make_chain(str(tmp_path), spec)
    groups = [[n for n in STRICT_IMAGES if STRICT_IMAGES[n][2] == size]
              for size in ("4M", "100M")]
    bad = []
    for group in groups:
        for a in group:
            for b in group:
                q = run([QEMU_IMG, "compare", "-s", tmp_path / a, tmp_path / b])
                v = run([VDISK_IMG, "compare", "-s", tmp_path / a, tmp_path / b])
                if (q.returncode, q.stdout) != (v.returncode, v.stdout):
                    bad.append((a, b, q.stdout, v.stdout))
    assert bad == []
