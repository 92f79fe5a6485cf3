# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-ga and qemu-ga side by side in the test guest (guest.py), for the
commands whose success this machine cannot show: set-time, shutdown,
suspend, set-user-password, the ssh keys, fstrim and fsinfo on real SCSI,
NVMe and virtio disks.

Each agent listens on its own virtio-serial port; the host talks to it
through the port's chardev socket.  The guest has a QMP socket and stays
paused when it powers off or reboots, so a test sees the SHUTDOWN event
and its reason.  One guest per session (marked xdist_group("ga-guest")),
booted again after a test that shuts it down."""
import glob
import os
import shlex
import shutil
import socket
import subprocess
import time

import pytest

import guest as guestmod
from ga_helpers import QEMU_GA, VDISK_GA, Agent

# Modules for the agents' port and the disks (crc32c: ext4 checksums).
MODULES = ["virtio_console", "virtio_scsi", "sd_mod", "nvme", "virtio_blk",
           "ext4", "crc32c_generic"]
# The disks: (name, QEMU device arguments, serial), each an ext4 file
# system mounted at /mnt/NAME in the guest.
DISKS = [("scsi", "scsi-hd,bus=scsi0.0,scsi-id=2,lun=1", "vdisk-scsi-0"),
         ("nvme", "nvme", "vdisk-nvme-1"),
         ("vblk", "virtio-blk-pci", "vdisk-vblk-2")]
PORTS = {"v": "org.qemu.guest_agent.0", "q": "org.qemu.guest_agent.1"}
# The guest's users: root and "tester" (uid 1000) with a home.
PASSWD = "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n"
SHADOW = "root:*:19000:0:99999:7:::\ntester:!:19000:0:99999:7:::\n"
GROUP = "root:x:0:\ntester:x:1000:\n"
# /sbin/shutdown of the guest: notes its arguments on the console (where
# the host reads them) and does what they ask.
SHUTDOWN = r'''#!/bin/sh
echo "guest-shutdown-args: $*" >/dev/console
what=
for arg; do
    case $arg in
        -P) what=poweroff ;;
        -H) what=halt ;;
        -r) what=reboot ;;
    esac
done
[ -n "$what" ] && exec $what -f
exit 1
'''


# chpasswd hands a plain password to PAM: pam_unix writes the hash.
PAM_CHPASSWD = "password required pam_unix.so sha512\n"


def extra_programs():
    """The passwd package's chpasswd and the PAM modules it needs."""
    chpasswd = shutil.which("chpasswd") or "/usr/sbin/chpasswd"
    if not os.path.exists(chpasswd):
        pytest.skip("chpasswd is not installed (package passwd)")
    pam = [p for p in glob.glob("/lib/*/security/pam_unix.so") +
           glob.glob("/usr/lib/*/security/pam_unix.so")]
    if not pam:
        pytest.skip("pam_unix.so is not installed (package libpam-modules)")
    return [chpasswd] + pam


class PortAgent(Agent):
    """An agent in the guest, reached through its port's chardev socket
    (Agent's fenced() and cmd() work on it)."""

    def __init__(self, binary, sock):
        self.binary, self.sock = binary, sock
        self.conn, self.fence, self.proc = None, 0, None
        self.connect()

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        s.settimeout(120)
        self.conn = s

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


def make_disk(path):
    subprocess.run(["truncate", "-s", "64M", path], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", path], check=True,
                   stdout=subprocess.DEVNULL)


class GaGuest:
    """The guest, the two agents in it and a QMP client."""

    def __init__(self, tmp_path_factory):
        guestmod.skip_without_guest(MODULES)
        if QEMU_GA is None:
            pytest.skip("qemu-ga is not installed (package qemu-guest-agent)")
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("mkfs.ext4 is not installed (package e2fsprogs)")
        self.dir = str(tmp_path_factory.mktemp("ga-guest"))
        devices = ["-device", "virtio-serial-pci,id=vser0",
                   "-device", "virtio-scsi-pci,id=scsi0"]
        for key, name in PORTS.items():
            devices += ["-chardev", "socket,id=ga%s,path=%s,server=on,wait=off"
                        % (key, self.sock(key)),
                        "-device", "virtserialport,bus=vser0.0,chardev=ga%s,name=%s"
                        % (key, name)]
        for name, dev, serial in DISKS:
            img = os.path.join(self.dir, name + ".img")
            make_disk(img)
            devices += ["-drive", "if=none,id=d%s,file=%s,format=raw,discard=unmap"
                        % (name, img.replace(",", ",,")),
                        "-device", "%s,drive=d%s,serial=%s" % (dev, name, serial)]
        self.g = guestmod.start_guest(tmp_path_factory, [VDISK_GA, QEMU_GA] + extra_programs(),
                                      MODULES,
                                      devices, qmp=True)
        self.qmp = self.v = self.q = None
        self.down = False       # set by a test that shut the guest down
        self.setup()

    def sock(self, key):
        return os.path.join(self.dir, key + ".sock")

    def run(self, script, timeout=60):
        """Run a script in the guest; its stdout (it must succeed)."""
        p = self.g.run(script, timeout)
        assert p.returncode == 0, (script, p.stdout, p.stderr)
        return p.stdout

    def setup(self):
        """After a boot: users, tools, file systems, then both agents."""
        mounts = "".join("mkdir -p /mnt/%s && mount -t ext4 -o discard %s /mnt/%s\n"
                         % (name, dev, name) for name, dev in self.devices().items())
        self.run("printf %s >/etc/passwd\nprintf %s >/etc/shadow\nprintf %s >/etc/group\n"
                 % (shlex.quote(PASSWD), shlex.quote(SHADOW), shlex.quote(GROUP))
                 + "chmod 600 /etc/shadow\nmkdir -p /root /home/tester\n"
                 "chown 1000:1000 /home/tester\n"
                 "mkdir -p /etc/pam.d && printf %s >/etc/pam.d/chpasswd\n"
                 % shlex.quote(PAM_CHPASSWD) +
                 "ln -sf /bin/busybox /sbin/hwclock\n"
                 "cat >/sbin/shutdown <<'EOF'\n%sEOF\nchmod 755 /sbin/shutdown\n"
                 % SHUTDOWN + mounts)
        ports = self.run("for p in /sys/class/virtio-ports/*; do "
                         "echo \"$(cat $p/name) /dev/${p##*/}\"; done").split()
        ports = dict(zip(ports[::2], ports[1::2]))
        self.agent_jobs = []
        for key, binary in (("v", VDISK_GA), ("q", QEMU_GA)):
            state = "/run/ga-" + key
            self.agent_jobs.append(self.g.spawn(
                "mkdir -p %s && QGA_CONF=/nonexistent exec %s -m virtio-serial -p %s "
                "-t %s -l %s/log" % (state, binary, ports[PORTS[key]], state, state),
                timeout=24 * 3600))
        self.v = PortAgent(VDISK_GA, self.sock("v"))
        self.q = PortAgent(QEMU_GA, self.sock("q"))
        self.qmp = guestmod.Qmp(self.g.qmp_path)
        for a in (self.v, self.q):
            self.wait_agent(a)

    def wait_agent(self, a):
        """Until the agent answers (it may not be up yet)."""
        end = time.monotonic() + 60 * self.g.slow
        a.conn.settimeout(1)
        while True:
            try:
                a.fenced()
                break
            except (TimeoutError, AssertionError):
                if time.monotonic() > end:
                    raise
        a.conn.settimeout(120)

    def devices(self):
        """{disk name: its device node in the guest}, found by serial."""
        out = self.run(
            "for b in /sys/block/*; do s=; "
            "for f in $b/serial $b/device/serial $b/device/vpd_pg80; do "
            "[ -r $f ] && s=$(tr -dc 'a-z0-9-' <$f) && [ -n \"$s\" ] && break; done; "
            "echo \"${b##*/} $s\"; done")
        by_serial = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                by_serial[parts[1]] = "/dev/" + parts[0]
        found = {}
        for name, _, serial in DISKS:
            dev = next((d for s, d in by_serial.items() if s.endswith(serial)), None)
            assert dev, "no disk with serial %s in the guest: %s" % (serial, out)
            found[name] = dev
        return found

    def live(self):
        """The guest, booted again first if a test shut it down."""
        if self.down:
            self.down = False
            self.restart()
        return self

    def restart(self):
        """Boot again (after a shutdown) and start the agents again."""
        for a in (self.v, self.q):
            a.close()
        self.qmp.close()
        self.g.restart()
        self.setup()

    def console(self):
        with open(self.g.console, errors="replace") as f:
            return f.read()

    def close(self):
        for a in (self.v, self.q):
            if a:
                a.close()
        if self.qmp:
            self.qmp.close()
        self.g.close()


@pytest.fixture(scope="session")
def ga_guest(tmp_path_factory):
    g = GaGuest(tmp_path_factory)
    print("agent test guest up in %.1f s (%s)" % (g.g.boot_seconds, g.g.accel))
    yield g
    g.close()
