# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-pool's disk pools (partition tables through parted) against
libvirt 9.0, in the test guest (pool_guest.py): the same verbs given to
virsh and to vdisk-pool on the same loop device give the same outputs,
errors and exit codes, and the same partition tables (parted's listing
after each step)."""
import pytest

from pool_guest import (ENC, LUKS_DIR, SECRET, compare, decrypt, luks_files,  # noqa: F401
                        pool_guest)

pytestmark = pytest.mark.xdist_group("guest")

MIB = 1 << 20
PRINT = "parted -s -m %s unit B print"


@pytest.fixture
def loop(pool_guest, tmp_path):
    devs = pool_guest.loops(tmp_path, [64 * MIB])
    yield devs[0]
    pool_guest.free_loops(devs)


def blank(pg, dev):
    def run():
        r = pg.run("dd if=/dev/zero of=%s bs=1M count=1 2>/dev/null; "
                   "dd if=/dev/zero of=%s bs=1M seek=63 count=1 2>/dev/null; true"
                   % (dev, dev))
        assert r.returncode == 0
    return run


def part(dev, n):
    return dev.split("/")[-1] + "p%d" % n


def check_delete_differs(a, b, dev, num):
    """libvirt 9.0 runs `parted DEV rm pN` for a partition named DEVpN
    (every loop device, nvme, mmcblk) and fails; vdisk-pool removes
    partition N.  a, b: virsh's and vdisk-pool's results of vol-delete,
    b's extra output parted's listing after it."""
    assert a[1] == 1 and "rm --script p%d) unexpected exit status 1" % num in a[3]
    assert b[1] == 0 and b[2] == "Vol %s deleted\n\n" % part(dev, num)
    assert not [r for r in b[4].splitlines() if r.startswith("%d:" % num)]


@pytest.mark.parametrize("fmt", ["gpt", "dos"])
def test_disk_lifecycle_same_as_virsh(pool_guest, loop, fmt):
    p1, p2, p3 = part(loop, 1), part(loop, 2), part(loop, 3)
    verbs = [
        ["pool-define-as", "vdisk", "disk", "--source-dev", loop, "--target", "/dev",
         "--source-format", fmt],
        ["pool-build", "vdisk"],
        ["pool-start", "vdisk"],
        ["pool-info", "--bytes", "vdisk"],
        ["pool-dumpxml", "vdisk"],
        ["vol-create-as", "vdisk", p1, "8M"],
        ["vol-create-as", "vdisk", p2, "10000000"],
        ["vol-create-as", "vdisk", p3, "1G"],
        ["vol-list", "vdisk", "--details"],
        ["vol-dumpxml", "--pool", "vdisk", p1],
        ["vol-info", "--bytes", "--pool", "vdisk", p2],
        ["pool-info", "--bytes", "vdisk"],
        ["pool-dumpxml", "vdisk"],
        ["vol-resize", "--pool", "vdisk", p1, "16M"],
        ["pool-refresh", "vdisk"],
        ["pool-list", "--details"],
        ["pool-destroy", "vdisk"],
        ["pool-start", "vdisk"],
        ["vol-list", "vdisk"],
        # from here on libvirt's state differs (see check_delete_differs)
        ["vol-delete", "--pool", "vdisk", p1],
        ["pool-destroy", "vdisk"],
        ["pool-build", "vdisk"],
        ["pool-delete", "vdisk"],
        ["pool-undefine", "vdisk"],
    ]
    pr = PRINT % loop
    between = {1: pr, 6: pr, 7: pr, 19: pr, 22: "blkid -p %s; echo $?" % loop}
    a, b = compare(pool_guest, verbs, blank(pool_guest, loop), between, differs={19})
    check_delete_differs(a[19], b[19], loop, 1)
    label = "gpt" if fmt == "gpt" else "msdos"
    assert ":%s:" % label in b[1][4]
    # two partitions made, the second of at least 10000000 bytes
    rows = [r for r in b[6][4].splitlines() if r[:1].isdigit()]
    assert len(rows) == 2
    assert int(rows[1].split(":")[3].rstrip("B")) >= 10000000
    assert b[7][1] == 1                     # 1G does not fit
    assert b[22][4] == "2\n"               # pool-delete wiped the label


def test_disk_extended_logical_same_as_virsh(pool_guest, loop):
    names = [part(loop, n) for n in (1, 2, 3, 4, 5, 6)]
    xml = "/tmp/vdext.xml"
    pool_guest.run("cat >%s <<'EOF'\n<volume>\n  <name>%s</name>\n"
                   "  <capacity unit='MiB'>24</capacity>\n  <target>\n"
                   "    <format type='extended'/>\n  </target>\n</volume>\nEOF"
                   % (xml, names[3]))
    verbs = [
        ["pool-define-as", "vdisk", "disk", "--source-dev", loop, "--target", "/dev",
         "--source-format", "dos"],
        ["pool-build", "vdisk"],
        ["pool-start", "vdisk"],
        ["vol-create-as", "vdisk", names[0], "4M"],
        ["vol-create-as", "vdisk", names[1], "4M"],
        ["vol-create-as", "vdisk", names[2], "4M"],
        ["vol-create", "vdisk", xml],
        ["vol-create", "vdisk", xml],
        ["vol-create-as", "vdisk", names[4], "4M"],
        ["vol-create-as", "vdisk", names[5], "4M"],
        ["vol-create-as", "vdisk", "big", "100M"],
        # libvirt re-reads the extended partition's node only on a refresh
        ["pool-refresh", "vdisk"],
        ["vol-list", "vdisk", "--details"],
        ["vol-dumpxml", "--pool", "vdisk", names[3]],
        ["vol-dumpxml", "--pool", "vdisk", names[4]],
        ["pool-info", "--bytes", "vdisk"],
        ["pool-dumpxml", "vdisk"],
        ["pool-destroy", "vdisk"],
        ["pool-undefine", "vdisk"],
    ]
    between = {9: PRINT % loop}
    _, b = compare(pool_guest, verbs, blank(pool_guest, loop), between)
    assert b[9][1] == 0 and b[7][1] == 1 and b[10][1] == 1
    assert len([r for r in b[9][4].splitlines() if r[:1].isdigit()]) == 6


def test_disk_failures_same_as_virsh(pool_guest, loop):
    verbs = [
        ["pool-define-as", "nodev", "disk", "--source-dev", "/dev/nosuch", "--target", "/dev"],
        ["pool-build", "nodev"],
        ["pool-start", "nodev"],
        ["pool-undefine", "nodev"],
        ["pool-define-as", "vdisk", "disk", "--source-dev", loop, "--target", "/dev",
         "--source-format", "gpt"],
        ["pool-start", "vdisk"],
        ["pool-build", "vdisk"],
        ["pool-build", "vdisk"],
        ["pool-undefine", "vdisk"],
        ["pool-define-as", "vdisk", "disk", "--source-dev", loop, "--target", "/dev"],
        ["pool-build", "vdisk"],
        ["pool-build", "--overwrite", "vdisk"],
        ["pool-start", "vdisk"],
        ["pool-dumpxml", "vdisk"],
        # a name other than the partition's: refused, the partition removed
        # again (libvirt 9.0 cannot remove it on loop devices, see above)
        ["vol-create-as", "vdisk", "wrongname", "4M"],
        ["pool-destroy", "vdisk"],
        ["pool-undefine", "vdisk"],
    ]
    a, b = compare(pool_guest, verbs, blank(pool_guest, loop), {14: PRINT % loop},
                   differs={14})
    assert b[7][1] == 1 and b[11][1] == 0
    assert a[14][3] == b[14][3] == (
        "error: Failed to create vol wrongname\nerror: invalid argument: invalid partition "
        "name 'wrongname', expected '%s'\n" % part(loop, 1))
    assert a[14][1] == b[14][1] == 1
    assert not [r for r in b[14][4].splitlines() if r[:1].isdigit()]


def test_capabilities_logical_and_disk_as_libvirt(pool_guest):
    """pool-capabilities' logical and disk blocks are libvirt's (the
    guest's libvirtd has those two backends and the dir one)."""
    if not pool_guest.libvirt:
        pytest.skip("libvirtd does not run in the guest: " + pool_guest.why)
    (_, rc1, l, _, _), = pool_guest.sequence("virsh", [["pool-capabilities"]])
    (_, rc2, v, _, _), = pool_guest.sequence("vdisk-pool", [["pool-capabilities"]])
    assert rc1 == rc2 == 0

    def block(out, t):
        return out.split("<pool type='%s'" % t)[1].split("</pool>")[0]
    for t in ("logical", "disk"):
        assert block(v, t) == block(l, t)
        assert block(v, t).startswith(" supported='yes'>")


def test_disk_copies_same_as_virsh(pool_guest, loop):
    """vol-create-from and vol-clone into and out of a disk pool (the
    source copied as raw into a partition of the larger capacity),
    vol-upload and vol-download on partitions; the bytes compared with
    cmp in the guest."""
    if not pool_guest.libvirt:
        pytest.skip("libvirtd does not run in the guest: " + pool_guest.why)
    p1, p2, p3 = part(loop, 1), part(loop, 2), part(loop, 3)
    s, d, dev = "/tmp/vdsrcd", "/tmp/vdcopyd", "/dev/"
    r = pool_guest.run(
        "set -e; rm -rf %s; mkdir %s; cd %s\n"
        "dd if=/dev/urandom of=src.raw bs=1M count=3 2>/dev/null; truncate -s 5M src.raw\n"
        "dd if=/dev/urandom of=part bs=1M count=4 2>/dev/null\n"
        "dd if=/dev/urandom of=up bs=64k count=3 2>/dev/null\n"
        "dd if=/dev/urandom of=up bs=64k seek=10 count=2 conv=notrunc 2>/dev/null\n"
        "truncate -s 1M up\n"
        "printf \"<volume><name>%s</name><capacity unit='M'>2</capacity></volume>\" >p2.xml\n"
        "printf \"<volume><name>frompart</name><capacity unit='M'>1</capacity></volume>\" "
        ">frompart.xml\n" % (s, s, s, p2))
    assert r.returncode == 0, r.stderr

    def setup():
        blank(pool_guest, loop)()
        r = pool_guest.run("rm -rf %s /tmp/vdd*; mkdir %s; cp %s/src.raw %s/" % (d, d, s, d))
        assert r.returncode == 0

    verbs = [
        ["pool-define-as", "vdisk", "disk", "--source-dev", loop, "--target", "/dev",
         "--source-format", "gpt"],
        ["pool-build", "vdisk"],
        ["pool-start", "vdisk"],
        ["pool-create-as", "vdcopy", "dir", "--target", d],
        ["vol-create-as", "vdisk", p1, "4M"],
        # 5 MiB of source in a partition asked 2 MiB: 5 MiB
        ["vol-create-from", "vdisk", s + "/p2.xml", "--inputpool", "vdcopy", "src.raw"],
        ["vol-clone", "--pool", "vdisk", p1, p3],
        ["vol-create-from", "vdcopy", s + "/frompart.xml", "--inputpool", "vdisk", p1],
        ["vol-list", "vdisk", "--details"],
        ["vol-dumpxml", "--pool", "vdisk", p2],
        ["vol-info", "--bytes", "--pool", "vdisk", p3],
        ["vol-dumpxml", "--pool", "vdcopy", "frompart"],
        ["pool-info", "--bytes", "vdisk"],
        ["vol-upload", "--pool", "vdisk", p3, s + "/up", "--sparse", "--offset", "65536"],
        ["vol-upload", "--pool", "vdisk", p3, s + "/up", "--offset", "5000000"],
        ["vol-download", "--pool", "vdisk", p3, "/tmp/vdd1", "--sparse", "--offset",
         "65536", "--length", "1048576"],
        ["vol-download", "--pool", "vdisk", p3, "/tmp/vdd2", "--offset", "4194305"],
        ["pool-destroy", "vdcopy"],
        ["pool-destroy", "vdisk"],
        ["pool-undefine", "vdisk"],
    ]
    pr = PRINT % loop
    between = {
        4: "dd if=%s/part of=%s%s bs=1M 2>/dev/null" % (s, dev, p1),
        6: pr + "; cmp -n 5242880 %s/src.raw %s%s && cmp %s%s %s%s && echo same"
           % (s, dev, p2, dev, p1, dev, p3),
        7: "cmp %s%s %s/frompart && echo same" % (dev, p1, d),
        13: "cmp -n 1048576 %s/up %s%s 0 65536 && cmp -n 65536 %s/part %s%s && echo same"
            % (s, dev, p3, s, dev, p3),
        15: "cmp %s/up /tmp/vdd1 && echo same" % s,
        16: "ls /tmp/vdd2",
    }
    try:
        _, b = compare(pool_guest, verbs, setup, between)
    finally:
        pool_guest.run("rm -rf %s %s /tmp/vdd*" % (s, d))
    for i in (6, 7, 13, 15):
        assert b[i][4].endswith("same\n"), b[i]
    # the partition made from 5 MiB of source holds 5 MiB
    rows = [r.split(":") for r in b[6][4].splitlines() if r[:1].isdigit()]
    assert [int(r[3].rstrip("B")) for r in rows] == [4 * MIB, 5 * MIB, 4 * MIB]
    assert b[14][1] == 1 and "Unable to seek %s%s to 5000000" % (dev, p3) in b[14][3]
    assert b[16][1] == 1 and "No such file" in b[16][4]


def test_disk_luks_same_as_virsh(pool_guest, loop):
    """Encrypted partitions: libvirt makes the partition 2 MiB larger than
    asked, formats it as LUKS (with qemu-img; vdisk-pool with libvdisk)
    and shows it 2 MiB smaller, with its <encryption>, until a refresh; a
    clone is a byte copy in a partition as large again; only LUKS is
    accepted."""
    p1, p2 = part(loop, 1), part(loop, 2)
    d = LUKS_DIR
    luks_files(pool_guest, [(p1, 8, ENC % ("luks", SECRET, "")),
                            ("q", 8, ENC % ("qcow", SECRET, ""))])
    verbs = [
        ["secret-define", d + "/s.xml"],
        ["secret-set-value", SECRET, "c2VjcmV0"],
        ["pool-define-as", "vdisk", "disk", "--source-dev", loop, "--target", "/dev",
         "--source-format", "dos"],
        ["pool-build", "vdisk"],
        ["pool-start", "vdisk"],
        ["vol-create", "vdisk", d + "/%s.xml" % p1],
        ["vol-create", "vdisk", d + "/q.xml"],
        ["vol-list", "vdisk", "--details"],
        ["vol-dumpxml", "--pool", "vdisk", p1],
        ["vol-info", "--bytes", "--pool", "vdisk", p1],
        ["pool-info", "--bytes", "vdisk"],
        ["vol-clone", "--pool", "vdisk", p1, p2],
        ["vol-dumpxml", "--pool", "vdisk", p2],
        ["pool-refresh", "vdisk"],
        ["vol-dumpxml", "--pool", "vdisk", p1],
        ["pool-destroy", "vdisk"],
        ["pool-undefine", "vdisk"],
        ["secret-undefine", SECRET],
    ]
    pr = PRINT % loop
    size1 = 10704896                        # 8 + 2 MiB in whole cylinders
    # (the header is opened with the passphrase in the logical test)
    between = {5: pr + "; " + decrypt("/dev/" + p1, opened=False), 6: pr,
               11: pr + "; cmp -n %d /dev/%s /dev/%s && echo same" % (size1, p1, p2)}
    try:
        _, b = compare(pool_guest, verbs, blank(pool_guest, loop), between)
    finally:
        pool_guest.run("rm -rf " + LUKS_DIR)
    rows = [r.split(":") for r in b[5][4].splitlines() if r[:1].isdigit()]
    assert [int(r[3].rstrip("B")) for r in rows] == [size1]
    assert '"format": "luks"' in b[5][4] and '"payload-offset": 2068480' in b[5][4]
    assert b[6][1] == 1 and "only supports LUKS" in b[6][3]
    assert "<capacity unit='bytes'>%d</capacity>" % (size1 - 2 * MIB) in b[8][2]
    assert "<encryption format='luks'>" in b[8][2]
    assert "Capacity:       %d bytes" % (size1 - 2 * MIB) in b[9][2]
    assert b[11][4].endswith("same\n")
    assert "<capacity unit='bytes'>%d</capacity>" % size1 in b[14][2]
    assert "<encryption" not in b[14][2]
