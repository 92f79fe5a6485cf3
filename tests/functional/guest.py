# SPDX-License-Identifier: BSD-3-Clause
"""A Linux guest booted under QEMU, for the tests of kernel features this
machine may lack (the nbd module today; device-mapper and iscsi_tcp can
follow by naming their modules and programs).

The guest is a Debian kernel (scripts/install-deps installs
linux-image-amd64) with an initramfs that tests/guest/mkguest builds at
test time: busybox, the modules, the programs under test with their
libraries.  The session's pytest temporary folder is shared over 9p at the
same path, so a test's tmp_path names the same files on both sides.
Commands go through a control folder in it (see tests/guest/agent) and
come back as CompletedProcess objects with the exit status, stdout and
stderr.  One guest per session (per xdist worker that needs one), started
at first use, powered off at the end: mark the tests that use it
@pytest.mark.xdist_group("guest") (scripts/check runs --dist loadgroup)
so they all go to one worker.  Tests of another kernel feature add its
modules to GUEST_MODULES and its programs to guest_programs().  Another
configuration (more devices, a QMP socket, see Guest) gets its own
session fixture and xdist group, as ga_guest.py does."""
import glob
import itertools
import lzma
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
import zlib

import pytest

MKGUEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "guest", "mkguest")
QEMU = shutil.which("qemu-system-x86_64")
# The modules every guest loads: virtio and 9p for the shared folder.
BASE_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
# Passed on to the commands run in the guest (the sanitizer build's).
PASSED_ENV = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "VDISK_SANITIZED")
# Seconds a KVM guest's kernel may take to print its banner (early, on
# the serial line) before TCG is tried instead.
KVM_LIMIT = 5


def kvm_usable():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def version_key(kver):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", kver)]


def find_kernel(modules):
    """(vmlinuz, version) of the newest kernel in /boot whose modules
    directory has every module in modules, or (None, why not)."""
    found = []
    for vmlinuz in glob.glob("/boot/vmlinuz-*"):
        kver = vmlinuz[len("/boot/vmlinuz-"):]
        try:
            with open("/lib/modules/%s/modules.dep" % kver) as f:
                names = {re.sub(r"\.ko.*", "", os.path.basename(line.split(":")[0]))
                         .replace("-", "_") for line in f}
            with open("/lib/modules/%s/modules.builtin" % kver) as f:
                names |= {re.sub(r"\.ko.*", "", os.path.basename(line.strip()))
                          .replace("-", "_") for line in f}
        except OSError:
            continue
        if all(m.replace("-", "_") in names for m in modules):
            found.append((version_key(kver), vmlinuz, kver))
    if not found:
        return None, ("no kernel in /boot with the modules %s (scripts/install-deps "
                      "installs linux-image-amd64)" % " ".join(modules))
    _, vmlinuz, kver = max(found)
    if not os.access(vmlinuz, os.R_OK):
        return None, "%s is not readable (run as root)" % vmlinuz
    return vmlinuz, kver


def unpacked_kernel(vmlinuz, out):
    """Write to out the ELF vmlinux inside the bzImage vmlinuz (xz or gzip
    compressed): QEMU boots it directly (PVH entry, CONFIG_PVH), where the
    bzImage's own decompressor takes some 20 s under TCG.  out, or None."""
    with open(vmlinuz, "rb") as f:
        data = f.read()
    for magic, new in ((b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
                       (b"\x1f\x8b\x08", lambda: zlib.decompressobj(31))):
        off = data.find(magic)
        while off >= 0:
            try:
                elf = new().decompress(data[off:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if elf[:4] == b"\x7fELF":
                with open(out, "wb") as f:
                    f.write(elf)
                return out
            off = data.find(magic, off + 1)
    return None


def unavailable(modules):
    """Why a guest with these modules cannot be booted here, or None."""
    if QEMU is None:
        return "qemu-system-x86_64 is not installed (package qemu-system-x86)"
    for prog, pkg in (("busybox", "busybox-static"), ("cpio", "cpio")):
        if shutil.which(prog) is None:
            return "%s is not installed (package %s)" % (prog, pkg)
    vmlinuz, why = find_kernel(modules)
    return why if vmlinuz is None else None


class GuestError(AssertionError):
    pass


def die_with_parent():
    """In QEMU's process before exec: SIGKILL when pytest goes away, so no
    guest outlives a killed test run (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


class Job:
    """A command started in the guest."""

    def __init__(self, guest, n, args, timeout, text):
        self.guest, self.n, self.args = guest, n, args
        self.timeout, self.text = timeout, text
        self.t0 = time.monotonic()
        self.result = None

    def path(self, ext):
        return os.path.join(self.guest.ctl, "%d.%s" % (self.n, ext))

    def stderr_so_far(self):
        try:
            with open(self.path("err")) as f:
                return f.read()
        except OSError:
            return ""

    def poll(self):
        """The CompletedProcess once the command has ended, else None."""
        if self.result is None and os.path.exists(self.path("rc")):
            self.result = self._collect()
        return self.result

    def wait(self, limit=None):
        """Wait for the end of the command: CompletedProcess.  Raises
        subprocess.TimeoutExpired after limit seconds (default: the
        command's own timeout, when the guest kills it)."""
        end = time.monotonic() + (limit if limit is not None
                                  else self.timeout + 15 * self.guest.slow)
        while self.poll() is None:
            if self.guest.proc.poll() is not None:
                raise GuestError("the guest died running %s\n%s"
                                 % (self.args, self.guest.console_tail()))
            if time.monotonic() > end:
                if limit is not None:
                    raise subprocess.TimeoutExpired(self.args, limit)
                raise GuestError("the guest does not answer (%s)\n%s"
                                 % (self.args, self.guest.console_tail()))
            time.sleep(0.01)
        if self.result.returncode == 137 and \
                time.monotonic() - self.t0 >= self.timeout:
            raise subprocess.TimeoutExpired(self.args, self.timeout)
        return self.result

    def _collect(self):
        def read(ext, mode):
            with open(self.path(ext), mode) as f:
                return f.read()
        rc = int(read("rc", "r"))
        mode = "r" if self.text else "rb"
        p = subprocess.CompletedProcess(self.args, rc, read("out", mode), read("err", mode))
        for ext in ("run", "out", "err", "rc"):
            os.unlink(self.path(ext))
        return p


class KvmProbe:
    """A kernel started under KVM alone, to see whether it gets as far as
    its banner within KVM_LIMIT seconds."""

    def __init__(self, vmlinuz, workdir):
        self.log = os.path.join(workdir, "kvm-probe.log")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [QEMU, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
             "-machine", "q35", "-accel", "kvm", "-m", "256", "-kernel", vmlinuz,
             "-append", "console=ttyS0 earlyprintk=serial,ttyS0 loglevel=6 panic=-1",
             "-serial", "file:" + self.log, "-monitor", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.verdict = None

    def banner(self):
        try:
            with open(self.log, "rb") as f:
                return b"Linux version" in f.read()
        except OSError:
            return False

    def works(self):
        """Wait for the banner (or the limit), stop the probe: True if seen."""
        while self.verdict is None:
            if self.banner():
                self.verdict = True
            elif self.proc.poll() is not None or time.monotonic() - self.t0 > KVM_LIMIT:
                self.verdict = self.banner()
            else:
                time.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return self.verdict


class Guest:
    """The QEMU process and its control folder."""

    def __init__(self, share, workdir, programs, modules, devices=(), qmp=False):
        self.share, self.workdir = str(share), str(workdir)
        self.programs, self.modules = programs, BASE_MODULES + list(modules)
        # QEMU arguments added for this configuration (disks, chardevs).
        self.devices = list(devices)
        # With qmp, a QMP socket (self.qmp_path) and a guest that stays
        # paused at power-off and reboot, for a Qmp client to see why.
        self.qmp_path = os.path.join(self.workdir, "qmp.sock") if qmp else None
        self.kernel = self.initrd = None
        self.ctl = tempfile.mkdtemp(prefix="guest-ctl-", dir=self.workdir)
        self.console = os.path.join(self.workdir, "console.log")
        self.accel, self.slow = None, 1
        self.counter = itertools.count()
        self.proc = None
        # The doorbell: a line sent to the guest's second serial port after
        # each script dropped in ctl wakes the agent (tests/guest/agent).
        self.bell_path = os.path.join(self.workdir, "doorbell.sock")
        self.bell = None
        self.boot_seconds = None

    def mkguest(self, kver):
        """Start tests/guest/mkguest: (its process, the initramfs it writes)."""
        out = os.path.join(self.workdir, "initramfs.cpio.gz")
        args = [MKGUEST, "-k", kver, "-o", out]
        for m in self.modules:
            args += ["-m", m]
        return subprocess.Popen(args + self.programs, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True), out

    def qemu_args(self, vmlinuz, initrd, accel):
        for path in (self.share, self.ctl):
            if re.search(r"\s", path):
                raise GuestError("a path with white space cannot be shared: %r" % path)
        # KVM with QEMU's default CPU model: "host" and "max" can fail on
        # nested KVM (MSRs the outer hypervisor refuses).
        cpu = [] if accel == "kvm" else ["-cpu", "max"]
        return [QEMU, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-machine", "q35", "-accel", accel] + cpu + [
                "-m", "512", "-smp", "1",
                "-kernel", vmlinuz, "-initrd", initrd,
                "-append", "console=ttyS0 earlyprintk=serial,ttyS0 loglevel=6 panic=-1 "
                           "vdisk.share=%s vdisk.ctl=%s" % (self.share, self.ctl),
                "-serial", "file:" + self.console, "-monitor", "none",
                "-fsdev", "local,id=share,security_model=none,path="
                          + self.share.replace(",", ",,"),
                "-device", "virtio-9p-pci,fsdev=share,mount_tag=vdisk",
                "-chardev", "socket,id=doorbell,server=on,wait=off,path="
                            + self.bell_path.replace(",", ",,"),
                "-device", "isa-serial,chardev=doorbell"] + self.extra_args()

    def extra_args(self):
        args = list(self.devices)
        if self.qmp_path:
            args += ["-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
                     "-action", "shutdown=pause"]
        return args

    def start(self):
        """Boot: with KVM when /dev/kvm is there and works (a guest up in
        seconds), else with TCG.  Whether KVM works (nested KVM can hang
        before the kernel starts) is probed while the initramfs is built."""
        vmlinuz, kver = find_kernel(self.modules)
        if vmlinuz is None:
            raise GuestError(kver)
        forced = os.environ.get("VDISK_GUEST_ACCEL")
        probe = KvmProbe(vmlinuz, self.workdir) if not forced and kvm_usable() else None
        try:
            mk, initrd = self.mkguest(kver)
            kernels = [unpacked_kernel(vmlinuz, os.path.join(self.workdir, "vmlinux")),
                       vmlinuz]
            try:
                out, _ = mk.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                mk.kill()
                out, _ = mk.communicate()
        finally:
            kvm = probe.works() if probe else False
        if mk.returncode != 0:
            raise GuestError("mkguest failed: %s" % out)
        accels = [forced] if forced else ["kvm", "tcg"] if kvm else ["tcg"]
        why = []
        for accel in accels:
            self.accel, self.slow = accel, 1 if accel == "kvm" else 10
            for kernel in filter(None, kernels):
                t0 = time.monotonic()
                if self.boot(kernel, initrd, accel, accel == "kvm" and not forced):
                    self.boot_seconds = time.monotonic() - t0
                    self.kernel, self.initrd = kernel, initrd
                    return
                why.append("%s %s: %s\n%s" % (accel, kernel, self.qemu_log(),
                                               self.console_tail()))
                if self.proc.returncode <= 0 or self.kernel_started():
                    break               # killed or booted and failed: next accel
                # QEMU refused this kernel: try the next one
        raise GuestError("the guest did not boot\n" + "\n".join(why))

    def kernel_started(self):
        try:
            with open(self.console, "rb") as f:
                return b"Linux version" in f.read()
        except OSError:
            return False

    def boot(self, vmlinuz, initrd, accel, probe):
        """Start QEMU and wait for the agent: True, or False with QEMU
        stopped.  probe: give up early if the kernel does not start."""
        t0 = time.monotonic()
        try:
            os.unlink(os.path.join(self.ctl, "ready"))     # a former boot's
        except OSError:
            pass
        with open(os.path.join(self.workdir, "qemu.log"), "w") as log:
            self.proc = subprocess.Popen(self.qemu_args(vmlinuz, initrd, accel),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent)
        while not os.path.exists(os.path.join(self.ctl, "ready")):
            late = time.monotonic() - t0 > 60 * self.slow or (
                probe and time.monotonic() - t0 > KVM_LIMIT and not self.kernel_started())
            if self.proc.poll() is not None or late:
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
                return False
            time.sleep(0.02)
        self.connect_bell()
        return True

    def connect_bell(self):
        """Connect to the doorbell's socket (without it the agent looks
        for scripts once a second: slow, but it works)."""
        self.close_bell()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.bell_path)
        except OSError as e:
            s.close()
            warnings.warn("guest doorbell: %s: %s" % (self.bell_path, e))
            return
        s.setblocking(False)
        self.bell = s

    def ring(self):
        if self.bell is not None:
            try:
                self.bell.send(b"\n")
            except BlockingIOError:
                pass                # rings are waiting: the agent will look
            except OSError:
                self.close_bell()

    def close_bell(self):
        if self.bell is not None:
            self.bell.close()
            self.bell = None

    def qemu_log(self):
        try:
            with open(os.path.join(self.workdir, "qemu.log")) as f:
                return f.read().strip() or "qemu said nothing"
        except OSError:
            return "no qemu log"

    def console_tail(self, lines=40):
        try:
            with open(self.console, errors="replace") as f:
                return "guest console:\n" + "".join(f.readlines()[-lines:])
        except OSError:
            return "no guest console"

    def spawn(self, script, timeout=60, text=True):
        """Start the shell script in the guest: a Job."""
        if self.proc is None or self.proc.poll() is not None:
            raise GuestError("the guest is not running\n" + self.console_tail())
        n = next(self.counter)
        env = "".join("export %s=%s\n" % (k, shlex.quote(os.environ[k]))
                      for k in PASSED_ENV if k in os.environ)
        timeout = int(timeout * self.slow)
        tmp = os.path.join(self.ctl, "%d.tmp" % n)
        with open(tmp, "w") as f:
            f.write(env + script + "\n")
        os.rename(tmp, os.path.join(self.ctl, "%d.%d.sh" % (n, timeout)))
        self.ring()
        return Job(self, n, script, timeout, text)

    def run(self, script, timeout=60, text=True):
        """Run the shell script in the guest: CompletedProcess."""
        return self.spawn(script, timeout, text).wait()

    def kill(self):
        """Stop QEMU at once (a guest that shut down or hangs)."""
        self.close_bell()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def restart(self):
        """Kill QEMU and boot the same kernel and initramfs again (after a
        test that shut the guest down): the guest's own files are new."""
        self.kill()
        if not self.boot(self.kernel, self.initrd, self.accel, False):
            raise GuestError("the guest did not boot again: %s\n%s"
                             % (self.qemu_log(), self.console_tail()))

    def close(self):
        if self.proc is None:
            return
        if self.qmp_path:
            self.kill()         # it would stay paused after a power-off
        if self.proc.poll() is None:
            try:
                self.spawn("poweroff -f", 10)
                self.proc.wait(10 * self.slow)
            except (GuestError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.close_bell()
        shutil.rmtree(self.ctl, ignore_errors=True)
        for big in ("vmlinux", "initramfs.cpio.gz"):     # the logs stay
            try:
                os.unlink(os.path.join(self.workdir, big))
            except OSError:
                pass


def skip_without_guest(modules):
    """Skip, loudly, when no guest can be booted here."""
    why = unavailable(BASE_MODULES + list(modules))
    if why:
        msg = "KERNEL TESTS NOT RUN: cannot boot the test guest: " + why
        warnings.warn(msg)
        pytest.skip(msg)


def start_guest(tmp_path_factory, programs, modules, devices=(), qmp=False):
    """A started Guest sharing the session's temporary folder (see Guest
    for devices and qmp)."""
    skip_without_guest(modules)
    g = Guest(tmp_path_factory.getbasetemp(), tmp_path_factory.mktemp("guest"),
              programs, modules, devices, qmp)
    g.start()
    return g


# What the session's guest holds: the programs (those that exist) and the
# modules the guest tests need.
GUEST_MODULES = ["nbd"]
# dm-crypt for cryptsetup (test_luks_guest.py): device-mapper, loop devices,
# the kernel crypto API for user space, and every cipher, mode, IV
# generator and hash of LUKS1 that Debian's kernel builds as a module (aes,
# cbc, sha1, sha256 and md5 are built in).  Nothing in the guest loads modules
# on demand: what dm-crypt asks the kernel for is loaded at boot.
GUEST_MODULES += ["dm_mod", "dm_crypt", "loop", "algif_skcipher", "algif_hash",
                  "serpent_generic", "twofish_generic", "cast5_generic",
                  "xts", "ecb", "ctr", "essiv", "sha512_generic", "rmd160"]


def sbin_program(name):
    """The path of an administration program (outside a user's PATH), or None."""
    return shutil.which(name) or next(
        (p for p in ("/usr/sbin/" + name, "/sbin/" + name) if os.path.exists(p)), None)
# The logical and disk pool tests (pool_guest.py): device-mapper
# snapshots, the zero target and thin provisioning (whose metadata
# checksums need a crc32c the kernel would otherwise load on demand).
GUEST_MODULES += ["dm_snapshot", "dm_zero", "crc32c_generic", "dm_thin_pool"]


def guest_programs():
    from nbd_helpers import VDISK_NBD
    progs = [VDISK_NBD, shutil.which("qemu-nbd")]
    progs += [sbin_program(n) for n in ("cryptsetup", "losetup", "dmsetup")]
    from pool_guest import pool_guest_programs
    progs += pool_guest_programs()
    # libvdisk loads its ciphers and TLS from this module (dlopen: ldd
    # does not name it), beside itself as in the build tree.
    from conftest import BUILD
    progs.append(os.path.join(BUILD, "lib", "modules", "vdisk-crypto.so"))
    return [p for p in progs if p and os.path.exists(p)]


@pytest.fixture(scope="session")
def guest(tmp_path_factory):
    """The session's guest (see the top of this file)."""
    g = start_guest(tmp_path_factory, guest_programs(), GUEST_MODULES)
    print("test guest up in %.1f s (%s)" % (g.boot_seconds, g.accel))
    yield g
    g.close()


class Qmp:
    """A client of a guest's QMP socket (Guest(qmp=True)): commands, and the
    events QEMU sends, kept in order."""

    def __init__(self, path, timeout=60):
        import json
        import socket
        self.json = json
        end = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > end:
                    raise GuestError("no QMP socket at %s" % path)
                time.sleep(0.02)
        s.settimeout(timeout)
        self.sock, self.buf, self.timeout = s, b"", timeout
        self.events = []
        self.read()                                     # the greeting
        self.command("qmp_capabilities")

    def read(self):
        """One message (socket.timeout when none comes in time)."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise GuestError("QMP closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return self.json.loads(line)

    def command(self, name, **arguments):
        """The command's "return"; events read meanwhile are kept."""
        self.sock.settimeout(self.timeout)
        req = {"execute": name}
        if arguments:
            req["arguments"] = arguments
        self.sock.sendall(self.json.dumps(req).encode() + b"\n")
        while True:
            msg = self.read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise GuestError("QMP %s: %s" % (name, msg["error"]))
            else:
                return msg["return"]

    def event(self, name, timeout=60):
        """Wait for the next event called name (or one already kept): the
        event, removed from the kept ones with those before it."""
        end = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name:
                    del self.events[:i + 1]
                    return ev
            self.sock.settimeout(max(0.1, end - time.monotonic()))
            try:
                msg = self.read()
            except TimeoutError:
                raise GuestError("no QMP event %s within %d s" % (name, timeout))
            if "event" in msg:
                self.events.append(msg)

    def close(self):
        self.sock.close()
