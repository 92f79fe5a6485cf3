# SPDX-License-Identifier: BSD-3-Clause
"""More verbs compared with virsh: transient pools, non-empty deletes,
--physical, names with spaces, downloads of images."""
import os

from pool_helpers import peer  # noqa: F401
from test_pool import pair, started  # noqa: F401


def test_transient_pool(pair):
    n = pair.name
    pair.same("pool-create", "@/pool.xml")
    pair.same("pool-create", "@/pool.xml", "--build")
    pair.same("pool-info", n, sizes=True)
    pair.same("pool-list", "--transient", "--name")
    pair.same("pool-undefine", n)
    pair.same("pool-autostart", n, "--disable")
    pair.same("pool-dumpxml", "--inactive", n, sizes=True)
    pair.same("pool-destroy", n)
    pair.same("pool-info", n)


def test_delete_nonempty_and_physical(pair):
    n = pair.name
    started(pair)
    pair.same("vol-create-as", n, "with space.qcow2", "1M", "--format", "qcow2")
    pair.same("vol-list", n, "--details")
    pair.same("vol-info", "--pool", n, "with space.qcow2", "--physical", "--bytes")
    pair.same("vol-download", "--pool", n, "with space.qcow2", "@/dl.bin")
    with open(os.path.join(pair.lp, "dl.bin"), "rb") as a, \
            open(os.path.join(pair.vp, "dl.bin"), "rb") as b:
        assert a.read() == b.read()
    pair.same("pool-destroy", n)
    pair.same("pool-delete", n)
    pair.same("pool-start", n, "--build")
    pair.same("pool-build", n)


def test_backing_and_options(pair):
    n = pair.name
    started(pair)
    pair.same("vol-create-as", n, "base.raw", "4M")
    pair.same("vol-create-as", n, "top.qcow2", "4M", "--format", "qcow2",
              "--backing-vol", "@/pool/base.raw", "--backing-vol-format", "raw")
    pair.same("vol-create-as", n, "top2.qcow2", "8M", "--format", "qcow2",
              "--backing-vol", "base.raw")
    pair.same("vol-create-as", n, "top3.qcow2", "8M", "--format", "qcow2",
              "--backing-vol", "nonexist")
    pair.same("vol-create-as", n, "--name", "o.raw", "--capacity", "1MiB", "--allocation=512KB")
    pair.same("vol-create-as", n, "p.raw", "1M", "--bogus")
    pair.same("vol-create-as", n, "p.raw")
    pair.same("vol-create-as", n, "p.raw", "1M", "extra")
    pair.same("vol-create-as", n, "p.qcow2", "1M", "0", "qcow2")
    pair.same("vol-info", "p.qcow2", n, "--bytes")
    pair.same("vol-resize", "p.qcow2", "2M", n)
    pair.same("vol-wipe", "p.qcow2", n, "zero")
    pair.same("pool-list", "dir")
    pair.same("vol-list", n, "--details", "extra")
    pair.same("vol-create-as", n, "p.raw", "1M", "--print-xml")
    pair.same("pool-define-as", "x", "dir", "--target", "/a", "--print-xml")
    pair.same("pool-refresh", n)
    for v in ("top.qcow2", "top2.qcow2", "o.raw"):
        pair.same("vol-dumpxml", "--pool", n, v)
    pair.same("vol-list", n, "--details")


def test_vol_xml_path_outside_pool(pair):
    """A target path in volume XML does not move the volume out of the pool."""
    started(pair)
    pair.xml("out.xml", "<volume><name>o.raw</name><capacity>4096</capacity>"
             "<target><path>@/outside.raw</path></target></volume>")
    pair.same("vol-create", pair.name, "@/out.xml")
    pair.same("vol-path", "--pool", pair.name, "o.raw")
    for root in (pair.lp, pair.vp):
        assert not os.path.exists(os.path.join(root, "outside.raw"))
    pair.xml("dots.xml", "<volume><name>../x.raw</name><capacity>4096</capacity></volume>")
    pair.same("vol-create", pair.name, "@/dots.xml")
    pair.same("vol-list", pair.name)


def test_pool_capabilities_dir_and_fs_as_libvirt(pair):
    """The dir, fs and netfs blocks are libvirt's; other types are marked
    unsupported."""
    l, v = pair.both("pool-capabilities")
    assert v[0] == 0

    def block(out, t):
        return out.split("<pool type='%s'" % t)[1].split("</pool>")[0]
    for t in ("dir", "fs", "netfs"):
        assert block(v[1], t) == block(l[1], t)
    assert "<pool type='iscsi' supported='no'>" in v[1]
