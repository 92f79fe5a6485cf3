# SPDX-License-Identifier: BSD-3-Clause
"""The copy engine allocates as qemu-img 7.2 does: convert's zero detection
per request (short zero runs at the start or end of a request, or covering
a whole one, stay unallocated) and commit's chunks (the base's cluster size
held to 4..64 KiB, whole chunks copied, zeroes only over whole base
clusters).  Each case runs qemu-img and vdisk-img on identical images and
wants the same map (without host offsets), content and a clean check."""
import pytest

from conftest import needs_vdisk_format
from chain_helpers import MB, QEMU_IO, run_both, same_images, same_messages

K = 1024


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    if QEMU_IO is None:
        pytest.skip("qemu-io is not installed")
    needs_vdisk_format("qcow2")


def differential(tmp_path, spec, args, outputs=()):
    """Run args on both sides; same messages, same images (outputs too)."""
    q, v, qd, vd = run_both(tmp_path, spec, args)
    same_messages(q, v)
    same_images(qd, vd, spec + [(o, o.rsplit(".", 1)[1], 0, None, []) for o in outputs])


CONVERT_CASES = {
    # a 2 KiB zero run that is a whole request (the source's last cluster)
    "short-zero-at-end": [("s.qcow2", "qcow2", 1050624, None,
                           ["write -P 0 1048576 2048"])],
    # one 512-byte zero sector, a request of its own
    "zero-sector": [("s.qcow2", "qcow2", MB, None, ["write -P 0 4096 512"],
                     "cluster_size=512")],
    # zeroes at the start and end of a request around data
    "zero-edges": [("s.qcow2", "qcow2", MB, None,
                    ["write -P 0 0 64k", "write -P 5 5120 1k", "write -P 0 64k 64k",
                     "write -P 6 70000 100"])],
    # short zero runs inside data, aligned and not
    "zero-inside": [("s.qcow2", "qcow2", MB, None,
                     ["write -P 1 0 128k", "write -z 8k 2k", "write -z 20k 4k",
                      "write -z 33k 7k", "write -z 64k 12k"])],
    # 512-byte source clusters: requests follow the status answers
    "small-clusters": [("s.qcow2", "qcow2", MB, None,
                        ["write -P 1 0 1536", "write -P 0 1536 3k", "write -P 2 5k 512",
                         "write -P 0 8k 8k"], "cluster_size=512")],
    # subclusters end answers inside a cluster
    "subclusters": [("s.qcow2", "qcow2", MB, None,
                     ["write -P 1 0 2k", "write -P 0 2k 2k", "write -P 0 64k 6k",
                      "write -P 3 70k 1k"], "extended_l2=on")],
    # data over a 2 MiB request boundary with zeroes on both sides of it
    "request-boundary": [("s.qcow2", "qcow2", 6 * MB, None,
                          ["write -P 1 64k 4M", "write -z 2113536 3k",
                           "write -z 2162688 1k"])],
}


@pytest.mark.parametrize("case", sorted(CONVERT_CASES))
@pytest.mark.parametrize("opts", [[], ["-S", "6k"], ["-S", "64k"], ["-O", "raw"]],
                         ids=["default", "S6k", "S64k", "raw"])
def test_convert_alloc(tmp_path, case, opts):
    fmt = "raw" if "raw" in opts else "qcow2"
    extra = [] if fmt == "raw" else ["-O", "qcow2"]
    differential(tmp_path, CONVERT_CASES[case],
                 ["convert"] + extra + opts + ["s.qcow2", "o." + fmt], ["o." + fmt])


# Formats that leave the unwritten parts of a block as holes of their file:
# vdisk skips reading the holes, and the outcome must not change (holes at
# and off 4 KiB in the guest, short ones that zero detection folds into
# data, explicit zeroes next to holes, blocks never written).  One worker
# (-m 1) copies 2 MiB of data first, so its buffer holds data where the
# holes of the next request land.
HOLE_CASES = {
    "vhdx": [("s.vhdx", "vhdx", 8 * MB, None,
              ["write -P 7 0 2M", "write -P 1 2M 4k", "write -P 2 2052k 3k",
               "write -P 3 2064k 1k", "write -P 0 2080k 8k", "write -P 4 5M 64k",
               "write -P 5 5188k 512", "write -P 6 7M 1M"], "block_size=1M")],
    # data after a 512-byte bitmap: file holes end off 4 KiB in the guest
    "vpc": [("s.vpc", "vpc", 8 * MB, None,
             ["write -P 7 0 2M", "write -P 1 2M 4k", "write -P 2 2057k 3k",
              "write -P 3 2069k 1k", "write -P 0 2078k 8k", "write -P 4 4M 64k",
              "write -P 5 4168k 512", "write -P 6 6M 1M"])],
}


@pytest.mark.parametrize("case", sorted(HOLE_CASES))
@pytest.mark.parametrize("opts", [[], ["-S", "64k"], ["-O", "raw"]],
                         ids=["default", "S64k", "raw"])
def test_convert_alloc_holes(tmp_path, case, opts):
    fmt = "raw" if "raw" in opts else "qcow2"
    extra = [] if fmt == "raw" else ["-O", "qcow2"]
    spec, out = HOLE_CASES[case], "o." + fmt
    q, v, qd, vd = run_both(tmp_path, spec,
                            ["convert", "-m", "1"] + extra + opts + [spec[0][0], out])
    same_messages(q, v)
    same_images(qd, vd, [(out, fmt, 0, None, [])])


def test_convert_alloc_backing(tmp_path):
    """-B: zero runs of the top's data requests become zero clusters alike."""
    spec = [("b.qcow2", "qcow2", MB, None, ["write -P 9 0 1M"]),
            ("t.qcow2", "qcow2", MB, "b.qcow2",
             ["write -P 0 4k 2k", "write -P 1 64k 8k", "write -z 66k 1k"], "cluster_size=4k")]
    differential(tmp_path, spec, ["convert", "-O", "qcow2", "-B", "b.qcow2", "-F", "qcow2",
                                  "t.qcow2", "o.qcow2"], ["o.qcow2"])


COMMIT_CASES = {
    # raw base: 64 KiB chunks, the whole chunk copied
    "raw-base": [("b.raw", "raw", MB, None, []),
                 ("t.qcow2", "qcow2", MB, "b.raw", ["write -P 1 128k 4k"], "cluster_size=4096")],
    # extended-L2 base: its 64 KiB cluster is the chunk, copied whole
    "extl2-base": [("b.qcow2", "qcow2", MB, None, [], "extended_l2=on"),
                   ("t.qcow2", "qcow2", MB, "b.qcow2", ["write -P 1 32k 4k"],
                    "cluster_size=4096")],
    # data that reads as zero is still data to commit
    "zero-detect": [("b.qcow2", "qcow2", MB, None, [], "cluster_size=4096"),
                    ("t.qcow2", "qcow2", MB, "b.qcow2",
                     ["write -P 1 32k 4k", "write -c -P 2 192k 64k"])],
    # zero clusters of the top cover parts of chunks: those parts are copied
    "zero-partial-chunk": [("b.qcow2", "qcow2", MB, None, [], "cluster_size=4096"),
                           ("t.qcow2", "qcow2", MB, "b.qcow2", ["discard 66048 64512"],
                            "cluster_size=512")],
    # zeroes over base clusters larger than a chunk are copied, not zeroed
    "big-base-clusters": [("b.qcow2", "qcow2", 8 * MB, None, ["write -P 7 0 8M"],
                           "cluster_size=2M"),
                          ("t.qcow2", "qcow2", 8 * MB, "b.qcow2",
                           ["write -z 1M 3M", "write -P 1 5M 4k", "write -z 6M 2M"])],
    # a chain of three, data only in the middle layer, an unaligned end
    "middle-layer": [("b.qcow2", "qcow2", 3 * MB + 3 * K, None, ["write -P 5 0 1M"],
                      "cluster_size=16k"),
                     ("m.qcow2", "qcow2", 3 * MB + 3 * K, "b.qcow2",
                      ["write -P 2 100k 3k", "write -z 1M 200k", "write -P 3 3M 3k"],
                      "cluster_size=1k"),
                     ("t.qcow2", "qcow2", 3 * MB + 3 * K, "m.qcow2", ["write -P 4 2M 1k"])],
    # more than one 16 MiB group of chunks
    "groups": [("b.qcow2", "qcow2", 40 * MB, None, [], "cluster_size=8k"),
               ("t.qcow2", "qcow2", 40 * MB, "b.qcow2",
                ["write -P 1 1M 20M", "write -z 4M 1M", "write -P 0 30M 3M"])],
}


@pytest.mark.parametrize("case", sorted(COMMIT_CASES))
def test_commit_alloc(tmp_path, case):
    spec = COMMIT_CASES[case]
    args = ["commit", "t.qcow2"]
    if case == "middle-layer":
        args = ["commit", "-b", "b.qcow2", "t.qcow2"]
    differential(tmp_path, spec, args)
