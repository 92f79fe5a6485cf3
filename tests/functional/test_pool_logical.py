# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-pool's logical pools (LVM volume groups) against libvirt 9.0,
in the test guest (pool_guest.py): the same verbs given to virsh and to
vdisk-pool on the same loop devices give the same outputs, errors and
exit codes, and the same volume groups and LVs (lvs and vgs after each
step)."""
import pytest

from pool_guest import compare, pool_guest  # noqa: F401

pytestmark = pytest.mark.xdist_group("guest")

MIB = 1 << 20
LVS = "lvs --noheadings --units b --nosuffix -o lv_name,lv_size,lv_attr,origin %s"
VGS = "vgs --noheadings --units b --nosuffix -o vg_name,pv_count,vg_size,vg_free %s"


@pytest.fixture
def loops(pool_guest, tmp_path):
    devs = pool_guest.loops(tmp_path, [64 * MIB, 64 * MIB])
    yield devs
    pool_guest.run("vgremove -f vdtest vdother >/dev/null 2>&1; "
                   "for d in %s; do pvremove -ff -y $d >/dev/null 2>&1; done; true"
                   % " ".join(devs))
    pool_guest.free_loops(devs)


def wipe(pg, devs):
    """Back to blank devices before the other program's turn."""
    def run():
        r = pg.run("vgremove -f vdtest vdother >/dev/null 2>&1; for d in %s; do "
                   "pvremove -ff -y $d >/dev/null 2>&1; dd if=/dev/zero of=$d bs=1M "
                   "count=2 2>/dev/null; done; true" % " ".join(devs))
        assert r.returncode == 0
    return run


def test_logical_lifecycle_same_as_virsh(pool_guest, loops):
    a, b = loops
    verbs = [
        ["pool-define-as", "vdtest", "logical", "--source-name", "vdtest",
         "--source-dev", a, "--target", "/dev/vdtest"],
        ["pool-build", "vdtest"],
        ["pool-start", "vdtest"],
        ["pool-info", "vdtest"],
        ["pool-list", "--all", "--details"],
        ["pool-dumpxml", "vdtest"],
        ["vol-create-as", "vdtest", "lv1", "8M"],
        ["vol-create-as", "vdtest", "lv2", "16M", "--allocation", "4M"],
        ["vol-list", "vdtest", "--details"],
        ["vol-info", "--pool", "vdtest", "lv1"],
        ["vol-info", "--bytes", "--pool", "vdtest", "lv2"],
        ["vol-dumpxml", "--pool", "vdtest", "lv1"],
        ["vol-dumpxml", "--pool", "vdtest", "lv2"],
        ["vol-path", "--pool", "vdtest", "lv1"],
        ["pool-info", "--bytes", "vdtest"],
        ["vol-create-as", "vdtest", "a/b", "8M"],
        ["vol-create-as", "vdtest", "..", "8M"],
        ["vol-create-as", "vdtest", "lv1", "8M"],
        ["vol-create-as", "vdtest", "huge", "1G"],
        ["vol-resize", "--pool", "vdtest", "lv1", "12M"],
        ["vol-resize", "--pool", "vdtest", "lv1", "4M"],
        ["vol-info", "--bytes", "--pool", "vdtest", "lv1"],
        ["vol-wipe", "--pool", "vdtest", "lv1"],
        ["vol-delete", "--pool", "vdtest", "lv1"],
        ["vol-list", "vdtest"],
        ["pool-refresh", "vdtest"],
        ["pool-info", "--bytes", "vdtest"],
        ["find-storage-pool-sources", "logical"],
        ["pool-destroy", "vdtest"],
        ["pool-info", "vdtest"],
        ["pool-start", "vdtest"],
        ["vol-list", "vdtest"],
        ["pool-destroy", "vdtest"],
        ["pool-delete", "vdtest"],
        ["pool-undefine", "vdtest"],
    ]
    lvs = LVS % "vdtest"
    between = {7: lvs, 8: VGS % "vdtest", 21: lvs, 24: lvs, 33: "pvs --noheadings " + a}
    _, res = compare(pool_guest, verbs, wipe(pool_guest, loops), between)
    # the results are real: both LVs were there with their sizes
    assert res[7][4].split()[:2] == ["lv1", str(8 * MIB)]
    assert "lv2" in res[7][4]
    # libvirt 9.0 has no resize for LVs: lv1 kept its size
    assert res[19][1] == 1 and str(8 * MIB) in res[21][2]


def test_logical_two_devices_same_as_virsh(pool_guest, loops):
    a, b = loops
    xml = "/tmp/vd2.xml"
    pool_guest.run("cat >%s <<'EOF'\n<pool type='logical'>\n  <name>vdtest</name>\n"
                   "  <source>\n    <device path='%s'/>\n    <device path='%s'/>\n"
                   "  </source>\n</pool>\nEOF" % (xml, a, b))
    verbs = [
        ["pool-define", xml],
        ["pool-build", "vdtest"],
        ["pool-start", "vdtest"],
        ["pool-dumpxml", "vdtest"],
        ["pool-info", "--bytes", "vdtest"],
        ["pool-destroy", "vdtest"],
        ["pool-delete", "vdtest"],
        ["pool-undefine", "vdtest"],
    ]
    _, res = compare(pool_guest, verbs, wipe(pool_guest, loops), {2: VGS % "vdtest"})
    assert res[2][4].split()[:2] == ["vdtest", "2"]


def test_logical_failures_same_as_virsh(pool_guest, loops):
    a, b = loops

    def setup():
        wipe(pool_guest, loops)()
        # b already belongs to another volume group
        r = pool_guest.run("vgcreate vdother %s" % b)
        assert r.returncode == 0, r.stderr

    verbs = [
        ["pool-define-as", "nodev", "logical", "--source-name", "vdtest",
         "--source-dev", "/dev/nosuch", "--target", "/dev/vdtest"],
        ["pool-build", "nodev"],
        ["pool-start", "nodev"],
        ["pool-undefine", "nodev"],
        ["pool-define-as", "taken", "logical", "--source-name", "vdtest",
         "--source-dev", b, "--target", "/dev/vdtest"],
        ["pool-build", "taken"],
        ["pool-build", "--overwrite", "taken"],
        ["pool-start", "taken"],
        ["pool-destroy", "taken"],
        ["pool-delete", "taken"],
        ["pool-undefine", "taken"],
        ["pool-define-as", "other", "logical", "--source-name", "vdother",
         "--target", "/dev/vdother"],
        ["pool-start", "other"],
        ["vol-list", "other"],
        ["pool-destroy", "other"],
        ["pool-undefine", "other"],
    ]
    _, res = compare(pool_guest, verbs, setup, {5: VGS % "vdother"})
    assert res[1][1] == 1 and res[5][1] == 1 and res[6][1] == 0
    assert "vdother" in res[5][4]
