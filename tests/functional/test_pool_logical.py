# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-pool's logical pools (LVM volume groups) against libvirt 9.0,
in the test guest (pool_guest.py): the same verbs given to virsh and to
vdisk-pool on the same loop devices give the same outputs, errors and
exit codes, and the same volume groups and LVs (lvs and vgs after each
step)."""
import re

import pytest

from pool_guest import (CIPHER, ENC, LUKS_DIR, SECRET, compare, decrypt,  # noqa: F401
                        luks_files, pool_guest)

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


COPY_DIR = "/tmp/vdcopy"


def copy_sources(pg):
    """The dir pool's source volumes (a raw file with 3 MiB of data in
    5 MiB, its qcow2 copy) and the bytes written into LVs and uploaded,
    made once: the same for both programs."""
    r = pg.run("set -e; rm -rf /tmp/vdsrc; mkdir /tmp/vdsrc; cd /tmp/vdsrc\n"
               "dd if=/dev/urandom of=src.raw bs=1M count=3 2>/dev/null\n"
               "truncate -s 5M src.raw\n"
               "qemu-img convert -f raw -O qcow2 src.raw src.qcow2\n"
               "dd if=/dev/urandom of=lv bs=1M count=4 2>/dev/null\n"
               # data, a hole, data: what vol-upload --sparse sends
               "dd if=/dev/urandom of=up bs=64k count=3 2>/dev/null\n"
               "dd if=/dev/urandom of=up bs=64k seek=10 count=2 conv=notrunc 2>/dev/null\n"
               "truncate -s 1M up\n"
               "printf \"<volume><name>lvc</name><capacity unit='M'>2</capacity></volume>\" "
               ">lvc.xml\n"
               "sed s/lvc/lvq/ lvc.xml >lvq.xml\n"
               "printf \"<volume><name>fromlv</name><capacity unit='M'>1</capacity>"
               "</volume>\" >fromlv.xml\n"
               "printf \"<volume><name>fromlvq</name><capacity unit='M'>8</capacity>"
               "<allocation>0</allocation><target><format type='qcow2'/></target>"
               "</volume>\" >fromlvq.xml\n")
    assert r.returncode == 0, r.stderr


def test_logical_copies_same_as_virsh(pool_guest, loops):
    """vol-create-from and vol-clone into and out of a logical pool (the
    source copied as raw into an LV of the larger capacity), vol-upload
    and vol-download on LVs; the bytes compared with cmp in the guest."""
    a, _ = loops
    if not pool_guest.libvirt:
        pytest.skip("libvirtd does not run in the guest: " + pool_guest.why)
    copy_sources(pool_guest)

    def setup():
        wipe(pool_guest, loops)()
        r = pool_guest.run("rm -rf %s /tmp/vdd*; mkdir %s; cp /tmp/vdsrc/src.* %s/"
                           % (COPY_DIR, COPY_DIR, COPY_DIR))
        assert r.returncode == 0

    s, lv = "/tmp/vdsrc", "/dev/vdtest/"
    verbs = [
        ["pool-define-as", "vdtest", "logical", "--source-name", "vdtest",
         "--source-dev", a, "--target", "/dev/vdtest"],
        ["pool-build", "vdtest"],
        ["pool-start", "vdtest"],
        ["pool-create-as", "vdcopy", "dir", "--target", COPY_DIR],
        ["vol-create-as", "vdtest", "lv1", "4M"],
        # 5 MiB of source in an LV asked 2 MiB: 8 MiB (the source's
        # capacity, in whole extents)
        ["vol-create-from", "vdtest", s + "/lvc.xml", "--inputpool", "vdcopy", "src.raw"],
        ["vol-create-from", "vdtest", s + "/lvq.xml", "--inputpool", "vdcopy", "src.qcow2"],
        ["vol-clone", "--pool", "vdtest", "lv1", "lv1c"],
        ["vol-clone", "--pool", "vdtest", "lv1", "lv1c"],
        ["vol-clone", "--pool", "vdtest", "lv1", "big", "--prealloc-metadata"],
        ["vol-create-from", "vdcopy", s + "/fromlv.xml", "--inputpool", "vdtest", "lv1"],
        ["vol-create-from", "vdcopy", s + "/fromlvq.xml", "--inputpool", "vdtest", "lv1"],
        ["vol-list", "vdtest", "--details"],
        ["vol-dumpxml", "--pool", "vdtest", "lvc"],
        ["vol-info", "--bytes", "--pool", "vdtest", "lv1c"],
        ["vol-dumpxml", "--pool", "vdcopy", "fromlv"],
        ["vol-info", "--pool", "vdcopy", "fromlvq"],
        ["pool-info", "--bytes", "vdtest"],
        # a hole of the file is written as zeros: a device has no holes
        ["vol-upload", "--pool", "vdtest", "lv1", s + "/up", "--sparse", "--offset", "65536"],
        ["vol-upload", "--pool", "vdtest", "lv1", s + "/up", "--offset", "5000000"],
        ["vol-upload", "--pool", "vdtest", "lv1", s + "/up", "--offset", "4000000"],
        ["vol-download", "--pool", "vdtest", "lv1", "/tmp/vdd1", "--sparse", "--offset",
         "1000", "--length", "300000"],
        ["vol-download", "--pool", "vdtest", "lv1", "/tmp/vdd2", "--offset", "5000000"],
        ["vol-download", "--pool", "vdtest", "lv1c", "/tmp/vdd3", "--length", "5000000"],
        ["pool-destroy", "vdcopy"],
        ["pool-destroy", "vdtest"],
        ["pool-delete", "vdtest"],
        ["pool-undefine", "vdtest"],
    ]
    lvs = LVS % "vdtest"
    between = {
        4: "dd if=%s/lv of=%slv1 bs=1M 2>/dev/null" % (s, lv),
        7: lvs + "; cmp %slv1 %slv1c && cmp -n 5242880 %slvc %s/src.raw && "
                 "cmp -n 5242880 %slvq %s/src.raw && echo same" % (lv, lv, lv, s, lv, s),
        10: "cmp %slv1 %s/fromlv && echo same" % (lv, COPY_DIR),
        11: "qemu-img compare -f raw -F qcow2 %slv1 %s/fromlvq" % (lv, COPY_DIR),
        18: "cmp -n 1048576 %s/up %slv1 0 65536 && cmp -n 65536 %s/lv %slv1 && echo same"
            % (s, lv, s, lv),
        20: "cmp -n 194304 %s/up %slv1 0 4000000 && echo same" % (s, lv),
        21: "wc -c </tmp/vdd1; cmp -n 300000 %slv1 /tmp/vdd1 1000 0 && echo same" % lv,
        22: "ls /tmp/vdd2",
        23: "wc -c </tmp/vdd3; cmp %slv1c /tmp/vdd3 && echo same" % lv,
    }
    try:
        a, b = compare(pool_guest, verbs, setup, between, differs={20})
    finally:
        pool_guest.run("rm -rf /tmp/vdsrc /tmp/vdd* " + COPY_DIR)
    # the copies are the bytes of their sources
    for i in (7, 10, 18, 23):
        assert b[i][4].endswith("same\n"), b[i]
    assert "Images are identical." in b[11][4]
    assert [r.split()[:2] for r in b[7][4].splitlines()[:-1]] == [
        ["lv1", str(4 * MIB)], ["lv1c", str(4 * MIB)], ["lvc", str(8 * MIB)],
        ["lvq", str(8 * MIB)]]
    assert b[8][1] == b[9][1] == 1
    # uploaded past the end of the LV: the part that fits, then ENOSPC;
    # virsh reports it when sending or when closing the stream, as its
    # daemon's writer gets to it
    assert a[20][1] == b[20][1] == 1 and b[20][3] == (
        "error: cannot send data to volume lv1\nerror: Unable to write %slv1: No space "
        "left on device\n" % lv)
    assert a[20][3].split("\n")[1:] == b[20][3].split("\n")[1:]
    assert a[20][3].split("\n")[0] in ("error: cannot send data to volume lv1",
                                       "error: cannot close volume lv1")
    assert a[20][4] == b[20][4] == "same\n"
    assert b[21][4].startswith("300000\n") and b[23][4].startswith("%d\n" % (4 * MIB))
    assert b[22][1] == 1 and "No such file" in b[22][4]


def test_logical_thin_and_snapshots_same_as_virsh(pool_guest, loops):
    """A volume group with a thin pool, a thin volume and its snapshot,
    an LV and a snapshot of it, made with lvm2 itself: libvirt 9.0 lists
    neither the thin pool nor the thin volumes (no devices in lvs), and
    shows a snapshot with its origin as backing store; so does vdisk-pool."""
    a, _ = loops

    def setup():
        wipe(pool_guest, loops)()
        r = pool_guest.run(
            "set -e; pvcreate -q %s; vgcreate -q vdtest %s\n"
            "lvcreate -q --type thin-pool -L 8M -n tpool vdtest\n"
            "lvcreate -q -V 16M --thinpool tpool -n thin1 vdtest\n"
            "lvcreate -q -s -kn -n tsnap vdtest/thin1\n"
            "lvcreate -q -L 4M -n plain vdtest\n"
            "lvcreate -q -s -L 4M -n snap vdtest/plain\n"
            "lvcreate -q -n sp -L 4M --type snapshot --virtualsize 16M vdtest\n"
            "vgchange -q -aln vdtest" % (a, a))
        assert r.returncode == 0, r.stderr

    verbs = [
        ["pool-define-as", "vdtest", "logical", "--source-name", "vdtest",
         "--target", "/dev/vdtest"],
        ["pool-start", "vdtest"],
        ["vol-list", "vdtest", "--details"],
        ["pool-info", "--bytes", "vdtest"],
        ["vol-dumpxml", "--pool", "vdtest", "snap"],
        ["vol-info", "--pool", "vdtest", "thin1"],
        ["vol-create-as", "vdtest", "lv1", "4M"],
        ["vol-list", "vdtest"],
        # libvirt 9.0 clones a snapshot as a snapshot of its origin, and a
        # sparse LV as a sparse one, and fails; vdisk-pool copies them into
        # plain LVs (see the README)
        ["vol-clone", "--pool", "vdtest", "snap", "snapc"],
        ["vol-clone", "--pool", "vdtest", "sp", "spc"],
        ["pool-destroy", "vdtest"],
        ["pool-undefine", "vdtest"],
    ]
    lvs = LVS % "vdtest"
    between = {1: lvs, 8: lvs + "; cmp /dev/vdtest/snap /dev/vdtest/snapc && echo same",
               9: lvs + "; cmp /dev/vdtest/sp /dev/vdtest/spc && echo same"}
    a, b = compare(pool_guest, verbs, setup, between, differs={8, 9})
    assert "thin1" in b[1][4] and "tpool" in b[1][4]
    names = [r.split()[0] for r in b[2][2].splitlines()[2:] if r.strip()]
    assert names == ["plain", "snap", "sp"]
    assert "<backingStore>\n    <path>/dev/vdtest/plain</path>" in b[4][2]
    assert b[5][1] == 1 and b[6][1] == 0
    check_snapshot_clone(a[8], b[8], "snap", 4 * MIB)
    check_snapshot_clone(a[9], b[9], "sp", 16 * MIB)
    assert "cannot sync data to file '/dev/vdtest/spc': Input/output error" in a[9][3]


def check_snapshot_clone(a, b, src, size):
    """vol-clone of a classic snapshot or a sparse LV: libvirt 9.0 makes a
    snapshot (of the origin, or of a virtual one) and copies all of the
    source into it, which fills its copy-on-write space or lvcreate
    refuses: it fails and the new LV is removed; vdisk-pool makes a plain
    LV of size bytes with the source's bytes.  a, b: virsh's and
    vdisk-pool's results, lvs and cmp after it."""
    new = src + "c"
    assert a[1] == 1 and a[3].startswith("error: Failed to clone vol from %s\nerror: " % src)
    assert not [r for r in a[4].splitlines() if r.split()[:1] == [new]]
    assert b[1] == 0 and b[2] == "Vol %s cloned from %s\n\n" % (new, src)
    row = [r.split() for r in b[4].splitlines() if r.split()[:1] == [new]]
    assert row and row[0][1] == str(size) and row[0][2].startswith("-wi")
    assert b[4].endswith("same\n")


def test_logical_luks_same_as_virsh(pool_guest, loops):
    """Encrypted LVs: libvirt makes the LV 2 MiB larger than asked and
    formats it as LUKS (with qemu-img; vdisk-pool with libvdisk), shows
    the <encryption> until a refresh; a clone is a byte copy of its
    source (header and all) in an LV as large as the source plus the
    header's room; a copy into a plain LV is raw bytes."""
    a, _ = loops
    d = LUKS_DIR
    luks_files(pool_guest, [("enc", 4, ENC % ("luks", SECRET, CIPHER)),
                            ("encq", 4, ENC % ("qcow", SECRET, "")),
                            ("encn", 4, ENC % ("luks", SECRET.replace("1", "9"), "")),
                            ("plain", 4, "")])
    verbs = [
        ["secret-define", d + "/s.xml"],
        ["secret-set-value", SECRET, "c2VjcmV0"],
        ["pool-define-as", "vdtest", "logical", "--source-name", "vdtest",
         "--source-dev", a, "--target", "/dev/vdtest"],
        ["pool-build", "vdtest"],
        ["pool-start", "vdtest"],
        ["vol-create", "vdtest", d + "/enc.xml"],
        ["vol-create", "vdtest", d + "/encq.xml"],
        ["vol-create", "vdtest", d + "/encn.xml"],
        ["vol-dumpxml", "--pool", "vdtest", "enc"],
        ["vol-info", "--bytes", "--pool", "vdtest", "enc"],
        ["vol-clone", "--pool", "vdtest", "enc", "encc"],
        ["vol-dumpxml", "--pool", "vdtest", "encc"],
        ["secret-undefine", SECRET],
        ["vol-create-from", "vdtest", d + "/plain.xml", "--inputpool", "vdtest", "enc"],
        ["pool-refresh", "vdtest"],
        ["vol-dumpxml", "--pool", "vdtest", "enc"],
        ["vol-list", "vdtest", "--details"],
        ["pool-destroy", "vdtest"],
        ["pool-undefine", "vdtest"],
    ]
    lv = "/dev/vdtest/"
    between = {
        5: LVS % "vdtest" + "; " + decrypt(lv + "enc"),
        7: LVS % "vdtest",
        10: LVS % "vdtest" + "; cmp -n %d %senc %sencc && echo same" % (8 * MIB, lv, lv),
        13: LVS % "vdtest" + "; cmp %senc %splain && echo same" % (lv, lv),
    }
    try:
        _, b = compare(pool_guest, verbs, wipe(pool_guest, loops), between)
    finally:
        pool_guest.run("rm -rf " + LUKS_DIR)
    # a 4 MiB volume in an LV of 8 MiB (4 + 2, in whole extents), opened
    # with the passphrase: the payload after the header
    out = b[5][4].split("\n")
    assert out[0].split()[:2] == ["enc", str(8 * MIB)]
    assert '"cipher-alg": "twofish-128"' in b[5][4] and '"ivgen-alg": "essiv"' in b[5][4]
    off = int(re.search(r'"payload-offset": (\d+)', b[5][4]).group(1))
    assert out[-2] == str(8 * MIB - off)
    assert b[6][1] == b[7][1] == 1 and [r.split()[0] for r in b[7][4].splitlines()] == ["enc"]
    assert "<encryption format='luks'>" in b[8][2] and "<cipher name='twofish'" in b[8][2]
    assert "Capacity:       %d bytes" % (8 * MIB) in b[9][2]
    # the clone: 8 + 2 MiB of LV, the source's bytes
    assert b[10][4].split("\n")[1].split()[:2] == ["encc", str(12 * MIB)]
    # the copy of the encrypted LV into a plain one: its bytes, read
    # without its secret (undefined before)
    assert b[10][4].endswith("same\n") and b[13][4].endswith("same\n")
    assert "<encryption" not in b[15][2]
