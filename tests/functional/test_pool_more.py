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
