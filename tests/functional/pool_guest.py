# SPDX-License-Identifier: BSD-3-Clause
"""The logical and disk pool tests run in the session's test guest
(guest.py): this machine's kernel may lack device-mapper and partition
scanning on loop devices.  The guest gets lvm2, parted, blkid, vdisk-pool,
qemu-img and a libvirtd (9.0, with only its storage driver and the logical,
disk and dir backends: dir pools hold the sources and targets of copies
into and out of LVs and partitions, which libvirt makes with qemu-img) run
as root with a private configuration; virsh reaches it as storage:///system.
LVM runs without udev and dmeventd (an lvm.conf the setup writes turns udev
and monitoring off, so LVM makes its device nodes itself), thin pools
without thin_check, and libvirt calls the lvm2 programs as /sbin/NAME, so
the setup links them there.

Each test gives one list of verbs to both programs in turn, on the same
loop devices: virsh first (pool-define-as ... pool-undefine), then
vdisk-pool, one guest command for each program; the outputs are compared
after masking uuids, LVM uuids and timestamps."""
import os
import re
import shlex
import shutil

import pytest

from conftest import BUILD

VDISK_POOL = os.path.join(BUILD, "tools", "pool", "vdisk-pool")
LIBVIRT = "/usr/lib/x86_64-linux-gnu/libvirt"
LVM_CMDS = ("pvcreate", "pvremove", "pvs", "vgcreate", "vgremove", "vgs", "vgscan",
            "vgchange", "lvcreate", "lvremove", "lvresize", "lvs", "lvchange")


def pool_guest_programs():
    """What the guest needs for these tests (those present here)."""
    progs = [VDISK_POOL, "/usr/sbin/lvm", "/usr/sbin/parted", "/usr/sbin/blkid",
             "/usr/sbin/losetup", "/usr/sbin/libvirtd", "/usr/bin/virsh",
             LIBVIRT + "/connection-driver/libvirt_driver_storage.so",
             LIBVIRT + "/connection-driver/libvirt_driver_secret.so",
             LIBVIRT + "/storage-backend/libvirt_storage_backend_logical.so",
             LIBVIRT + "/storage-backend/libvirt_storage_backend_disk.so",
             LIBVIRT + "/storage-backend/libvirt_storage_backend_fs.so",
             LIBVIRT + "/storage-file/libvirt_storage_file_fs.so",
             "/usr/lib/libvirt/libvirt_parthelper", "/usr/bin/qemu-img"]
    return [p for p in progs if os.path.exists(p)]


SETUP = r"""
set -e
echo root:x:0:0:root:/root:/bin/sh >/etc/passwd
echo root:x:0: >/etc/group
mkdir -p /root /etc/lvm /etc/libvirt /run/lvm
for c in %(lvm)s; do ln -sf /usr/sbin/lvm /sbin/$c; done
ln -sf /usr/sbin/parted /sbin/parted
cat >/etc/lvm/lvm.conf <<'EOF'
devices { obtain_device_list_from_udev = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { thin_check_executable = "" }
EOF
[ -x /usr/sbin/libvirtd ] || { echo "no libvirtd in the guest"; exit 0; }
printf 'auth_unix_rw = "none"\nauth_unix_ro = "none"\n' >/etc/libvirt/libvirtd.conf
libvirtd --config /etc/libvirt/libvirtd.conf >/tmp/libvirtd.log 2>&1 &
i=0
until virsh -c storage:///system uri >/dev/null 2>&1; do
    i=$((i+1)); [ $i -gt 300 ] && { echo "libvirtd did not come up"; cat /tmp/libvirtd.log; exit 0; }
    sleep 0.1
done
echo libvirtd up
"""


class PoolGuest:
    """The guest with the pool programs set up."""

    def __init__(self, guest):
        self.g = guest
        r = guest.run(SETUP % {"lvm": " ".join(LVM_CMDS)}, timeout=120)
        assert r.returncode == 0, r.stderr
        self.libvirt = "libvirtd up" in r.stdout
        self.why = r.stdout.strip()
        self.n = 0

    def run(self, script, timeout=120):
        """script in the guest, the system directories first in PATH (the
        util-linux programs, not busybox's)."""
        return self.g.run("export PATH=/sbin:/usr/sbin:/bin:/usr/bin\n" + script,
                          timeout=timeout)

    def loops(self, tmp_path, sizes):
        """Loop devices over new sparse files in the guest's /tmp (RAM,
        faster than the 9p share): their paths."""
        self.n += 1
        names = ["/tmp/pg%d-%d.img" % (self.n, i) for i in range(len(sizes))]
        script = "set -e\n" + "".join(
            "rm -f %s; truncate -s %d %s; /usr/sbin/losetup -f --show %s\n" % (n, s, n, n)
            for n, s in zip(names, sizes))
        r = self.run(script)
        assert r.returncode == 0, r.stderr
        self.files = names
        return r.stdout.split()

    def free_loops(self, devs):
        """Detach the loop devices and remove their files and the state
        folders of the sequences run since: the guest's /tmp is its RAM, and
        what a test leaves there fills it for the tests after it."""
        self.run("for d in %s; do /usr/sbin/losetup -d $d; done; rm -rf %s /tmp/vp*; true"
                 % (" ".join(devs), " ".join(self.files)))

    def sequence(self, tool, verbs, between=None):
        """Run each verb (argument list) with tool ('virsh' or
        'vdisk-pool') in one guest command, after each the shell line in
        between[i] if given: a list of (verb, rc, stdout, stderr, extra)."""
        self.n += 1
        state = "/tmp/vp%d" % self.n
        if tool == "virsh":
            prog = "virsh -c storage:///system"
            env = ""
        else:
            prog = VDISK_POOL
            env = "export VDISK_POOL_CONFIG_DIR=%s/cfg VDISK_POOL_RUN_DIR=%s/run\n" % (
                state, state)
        lines = [env, "mkdir -p %s; cd %s\n" % (state, state)]
        for i, v in enumerate(verbs):
            # libvirtd's secrets are its secret driver's (the storage
            # driver's connection has none)
            p = prog
            if tool == "virsh" and v[0].startswith("secret-"):
                p = "virsh -c secret:///system"
            cmd = "%s %s" % (p, " ".join(shlex.quote(str(a)) for a in v))
            lines.append("%s >o 2>e; rc=$?\necho \"@@@ rc $rc\"; cat o; echo \"@@@ err\"; "
                         "cat e; echo \"@@@ extra\"\n" % cmd)
            if between and between.get(i):
                lines.append("(%s) 2>&1\n" % between[i])
            lines.append("echo \"@@@ end\"\n")
        r = self.run("".join(lines), timeout=600)
        assert r.returncode == 0, r.stderr
        out = []
        for v, chunk in zip(verbs, r.stdout.split("@@@ end\n")):
            m = re.match(r"@@@ rc (\d+)\n(.*)@@@ err\n(.*)@@@ extra\n(.*)\Z", chunk, re.S)
            assert m, chunk
            out.append((v, int(m.group(1)), m.group(2), m.group(3), m.group(4)))
        assert len(out) == len(verbs), r.stdout
        return out


@pytest.fixture(scope="session")
def pool_guest(guest):
    if not os.path.exists(VDISK_POOL):
        pytest.skip("vdisk-pool is not built")
    return PoolGuest(guest)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LVM_UUID = re.compile(r"\b[0-9A-Za-z]{6}(-[0-9A-Za-z]{4}){5}-[0-9A-Za-z]{6}\b")
_TIME = re.compile(r"<(atime|mtime|ctime)>[0-9.]+</")


def mask(text):
    """uuids (libvirt's and LVM's) and timestamps made neutral."""
    text = _UUID.sub("UUID", text)
    text = _LVM_UUID.sub("LVMUUID", text)
    return _TIME.sub(r"<\1>T</", text)


QIMG_TIMING = "Unable to get accurate CPU usage"

def compare(pg, verbs, setup=None, between=None, differs=()):
    """Run verbs with virsh, then (after setup again) with vdisk-pool;
    assert every output, error and exit status is the same, but for the
    verbs whose index is in differs (differences meant and documented,
    which the caller checks).  The results: (virsh's, vdisk-pool's).
    virsh's turn is run again (after setup) when the qemu-img libvirt ran
    to make a LUKS volume failed its PBKDF2 timing (conftest.qimg_retry)."""
    if not pg.libvirt:
        pytest.skip("libvirtd does not run in the guest: " + pg.why)
    for _ in range(6):
        if setup:
            setup()
        a = pg.sequence("virsh", verbs, between)
        if not any(QIMG_TIMING in r[3] for r in a):
            break
    if setup:
        setup()
    b = pg.sequence("vdisk-pool", verbs, between)
    bad = []
    for i, ((v, rc1, o1, e1, x1), (_, rc2, o2, e2, x2)) in enumerate(zip(a, b)):
        if i in differs:
            continue
        got = (rc2, mask(o2), mask(e2), mask(x2))
        want = (rc1, mask(o1), mask(e1), mask(x1))
        if got != want:
            bad.append("%s:\n  virsh:      %r\n  vdisk-pool: %r" % (" ".join(v), want, got))
    assert not bad, "\n".join(bad)
    return a, b


SECRET = "11111111-2222-4333-8444-555555555555"
LUKS_DIR = "/tmp/vdluks"
ENC = "<encryption format='%s'><secret type='passphrase' uuid='%s'/>%s</encryption>"
# LUKS volumes: a cipher of their own (the PBKDF2 hash sha256: qemu-img's
# timing of sha1 fails more often)
CIPHER = ("<cipher name='twofish' size='128' mode='cbc' hash='sha256'/>"
          "<ivgen name='essiv' hash='sha256'/>")


def luks_files(pg, names):
    """The secret's XML and the volume XMLs (name, MiB, <encryption>) in
    the guest, the same for both programs."""
    text = ["set -e; rm -rf %s; mkdir %s; cd %s" % (LUKS_DIR, LUKS_DIR, LUKS_DIR),
            "echo \"<secret><uuid>%s</uuid></secret>\" >s.xml" % SECRET]
    for name, mib, enc in names:
        text.append("echo \"<volume><name>%s</name><capacity unit='M'>%d</capacity>"
                    "<target>%s</target></volume>\" >%s.xml" % (name, mib, enc, name))
    r = pg.run("\n".join(text) + "\n")
    assert r.returncode == 0, r.stderr


def decrypt(dev, opened=True):
    """Shell lines: the LUKS header's cipher choices (qemu-img info) and
    (opened) the payload's size once opened with the passphrase."""
    info = ("qemu-img info --output=json %s | grep -E '\"(format|cipher-alg|cipher-mode|"
            "hash-alg|ivgen-alg|ivgen-hash-alg|payload-offset)\"'" % dev)
    return info + ("; qemu-img convert --object secret,id=k,data=secret --image-opts "
                   "driver=luks,key-secret=k,file.filename=%s -O raw /tmp/vddec && "
                   "wc -c </tmp/vddec; rm -f /tmp/vddec" % dev if opened else "")


def have_guest_tools():
    return shutil.which("lvm") and shutil.which("parted")
