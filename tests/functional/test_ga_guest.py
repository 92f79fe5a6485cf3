# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-ga against qemu-ga 7.2 inside a QEMU guest (ga_guest.py), for the
commands that change the machine: the same requests give the same answers
and the same effects (the guest's clock and RTC, /etc/shadow,
authorized_keys, trimmed bytes, the disks fsinfo finds, QMP events for
suspend and shutdown)."""
import base64
import json
import os
import re
import time
import warnings

import pytest

from ga_guest import DISKS, ga_guest  # noqa: F401
from ga_helpers import STRAY_FENCE, fsinfo_by_mountpoint

pytestmark = pytest.mark.xdist_group("ga-guest")
# Each test that takes the guest down costs a boot: with a sanitizer build
# only vdisk-ga's side runs (qemu-ga's does not change with the build;
# both are held to the same expected effects).
DESTRUCTIVE_AGENTS = ["vdisk-ga"] if os.environ.get("VDISK_SANITIZED") \
    else ["vdisk-ga", "qemu-ga"]


def agents_of(g):
    return (("vdisk-ga", g.v), ("qemu-ga", g.q))


def answer(a, req):
    """The first answer to one request (a dict or raw bytes)."""
    data = req if isinstance(req, bytes) else json.dumps(req).encode()
    out = a.fenced(data)
    return json.loads(STRAY_FENCE.sub(b"", out).split(b"\n")[0])


def guest_clock(g):
    return int(g.run("date +%s"))


def test_set_time(ga_guest):
    g = ga_guest.live()
    target = 1900000000                  # 2030-03-17: far from any real now
    replies = {}
    try:
        for name, a in agents_of(g):
            r = [answer(a, {"execute": "guest-set-time",
                            "arguments": {"time": target * 10**9 + 5}})]
            # The clock and then the RTC were set.
            assert abs(guest_clock(g) - target) < 120, name
            rtc = int(g.run("cat /sys/class/rtc/rtc0/since_epoch"))
            assert abs(rtc - target) < 120, name
            got = a.cmd("guest-get-time")["return"] // 10**9
            assert abs(got - target) < 120, name
            # Without a time: the clock from the RTC.
            g.run("date -s @1000000000 >/dev/null")
            r.append(answer(a, {"execute": "guest-set-time"}))
            assert abs(guest_clock(g) - target) < 120, name
            # Refused times.
            r.append(answer(a, {"execute": "guest-set-time",
                                "arguments": {"time": 5000000000 * 10**9}}))
            replies[name] = r
    finally:
        now = time.time_ns()
        g.v.cmd("guest-set-time", {"time": now})
    assert replies["vdisk-ga"] == replies["qemu-ga"]
    assert replies["vdisk-ga"][0] == {"return": {}}


def shadow_field(g, user):
    for line in g.run("cat /etc/shadow").splitlines():
        f = line.split(":")
        if f[0] == user:
            return f[1]
    raise AssertionError("no %s in the guest's /etc/shadow" % user)


def crypt_verifies(password, hashed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    return crypt.crypt(password, hashed) == hashed


def b64(s):
    return base64.b64encode(s.encode()).decode()


def test_set_user_password(ga_guest):
    g = ga_guest.live()
    crypted = "$6$vdisksalt$" + "x" * 86          # any string chpasswd -e takes
    replies = {}
    for name, a in agents_of(g):
        pw = "pass word %s!" % name
        r = [answer(a, {"execute": "guest-set-user-password",
                        "arguments": {"username": "tester", "password": b64(pw),
                                      "crypted": False}})]
        h = shadow_field(g, "tester")
        assert h.startswith("$") and crypt_verifies(pw, h), (name, h)
        r.append(answer(a, {"execute": "guest-set-user-password",
                            "arguments": {"username": "tester", "password": b64(crypted),
                                          "crypted": True}}))
        assert shadow_field(g, "tester") == crypted, name
        # chpasswd fails: a user the guest does not have.
        r.append(answer(a, {"execute": "guest-set-user-password",
                            "arguments": {"username": "nobody2", "password": b64("a"),
                                          "crypted": False}}))
        replies[name] = r
    assert replies["vdisk-ga"] == replies["qemu-ga"]
    assert replies["vdisk-ga"][:2] == [{"return": {}}] * 2


KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 one@host",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC two@host",
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY three@host"]


def ssh_state(g):
    """The tester's ~/.ssh: modes, owners and the authorized_keys text."""
    return g.run("cd /home/tester && stat -c '%n %a %u %g' .ssh .ssh/authorized_keys "
                 "&& cat .ssh/authorized_keys")


def test_ssh_authorized_keys(ga_guest):
    g = ga_guest.live()
    steps = [
        ("guest-ssh-add-authorized-keys", {"keys": KEYS[:2]}),
        ("guest-ssh-add-authorized-keys", {"keys": KEYS[1:]}),
        ("guest-ssh-get-authorized-keys", {}),
        ("guest-ssh-remove-authorized-keys", {"keys": [KEYS[0], "ssh-rsa nothere"]}),
        ("guest-ssh-get-authorized-keys", {}),
        ("guest-ssh-add-authorized-keys", {"keys": [KEYS[0]], "reset": True}),
        ("guest-ssh-get-authorized-keys", {}),
        ("guest-ssh-add-authorized-keys", {"keys": [], "reset": True}),
        ("guest-ssh-get-authorized-keys", {}),
        ("guest-ssh-get-authorized-keys", {"username": "root"}),
    ]
    seen = {}
    for name, a in agents_of(g):
        g.run("rm -rf /home/tester/.ssh /root/.ssh")
        out = []
        for cmd, args in steps:
            args = dict({"username": "tester"}, **args)
            out.append(answer(a, {"execute": cmd, "arguments": args}))
            if cmd != "guest-ssh-get-authorized-keys":
                out.append(ssh_state(g))
        seen[name] = out
    assert seen["vdisk-ga"] == seen["qemu-ga"]
    assert "\n".join(KEYS) in seen["vdisk-ga"][3]


def remount(g):
    g.run("".join("umount /mnt/%s && mount -t ext4 -o discard %s /mnt/%s\n"
                  % (name, dev, name) for name, dev in g.devices().items()))


def test_fstrim(ga_guest):
    g = ga_guest.live()
    g.run("for d in /mnt/*; do dd if=/dev/zero of=$d/f bs=1M count=8 2>/dev/null; "
          "rm $d/f; done; sync")
    replies = {}
    for name, a in agents_of(g):
        r = []
        for args in ({}, {"minimum": 1 << 20}):
            remount(g)                  # ext4 trims a group once per mount
            r.append(answer(a, {"execute": "guest-fstrim", "arguments": args}))
        replies[name] = r
    assert replies["vdisk-ga"] == replies["qemu-ga"]
    paths = {p["path"]: p for p in replies["vdisk-ga"][0]["return"]["paths"]}
    for name, _, _ in DISKS:
        assert paths["/mnt/" + name]["trimmed"] > 0, paths


def test_fsinfo_disks(ga_guest):
    g = ga_guest.live()
    v, q = fsinfo_by_mountpoint(g.v), fsinfo_by_mountpoint(g.q)
    assert v == q
    buses = {m: [d["bus-type"] for d in fs["disk"]] for m, fs in v.items()}
    assert buses["/mnt/scsi"] == ["scsi"] and buses["/mnt/nvme"] == ["nvme"] \
        and buses["/mnt/vblk"] == ["virtio"], buses
    # The NVMe SMART log: the counters move with the guest's I/O between
    # the two requests, so they are masked (their names are compared).
    disks = []
    for a in (g.v, g.q):
        d = a.cmd("guest-get-disks")["return"]
        for entry in d:
            smart = entry.get("smart", {})
            for k in smart:
                if k.endswith(("-lo", "-hi")):
                    smart[k] = "N"
        disks.append(d)
    assert disks[0] == disks[1]
    assert {e["name"]: e["address"]["bus-type"] for e in disks[0]} == \
        {"/dev/sda": "scsi", "/dev/nvme0n1": "nvme", "/dev/vda": "virtio"}
    assert [e["smart"]["type"] for e in disks[0] if "smart" in e] == ["nvme"]


# Every test below leaves the guest down: the next one boots it again.
@pytest.mark.parametrize("agent", DESTRUCTIVE_AGENTS)
def test_suspend_ram(ga_guest, agent):
    """Suspend to RAM reaches QEMU: a SUSPEND event, the VM suspended (it
    is not woken: the guest does not come back under TCG)."""
    g = ga_guest.live()
    a = dict(agents_of(g))[agent]
    g.qmp.events.clear()
    g.down = True
    a.send(b'{"execute":"guest-suspend-ram"}')
    g.qmp.event("SUSPEND", 60)
    assert g.qmp.command("query-status")["status"] == "suspended"


SHUTDOWN_ARGS = {"powerdown": "-P", "halt": "-H", "reboot": "-r"}


@pytest.mark.parametrize("mode", ["powerdown", "reboot", "halt"])
@pytest.mark.parametrize("agent", DESTRUCTIVE_AGENTS)
def test_shutdown(ga_guest, agent, mode):
    """/sbin/shutdown gets the same arguments from both agents, and the
    machine does what the mode says: QEMU's SHUTDOWN event with the guest's
    reason for powerdown and reboot, a halted kernel for halt."""
    g = ga_guest.live()
    a = dict(agents_of(g))[agent]
    g.qmp.events.clear()
    g.down = True
    a.send(json.dumps({"execute": "guest-shutdown", "arguments": {"mode": mode}}))
    if mode == "halt":
        end = time.monotonic() + 60
        while "reboot: System halted" not in g.console():
            assert time.monotonic() < end, g.console()[-2000:]
            time.sleep(0.1)
    else:
        ev = g.qmp.event("SHUTDOWN", 60)
        assert ev["data"] == {"guest": True, "reason": "guest-shutdown"
                              if mode == "powerdown" else "guest-reset"}
    assert re.findall(r"guest-shutdown-args: (.*)", g.console()) == \
        ["-h %s +0 hypervisor initiated shutdown" % SHUTDOWN_ARGS[mode]]


def test_suspend(ga_guest):
    """No swap: hibernation fails in the kernel; sysfs has no hybrid mode.
    Last: a failed hibernation can leave the guest unable to suspend."""
    g = ga_guest.live()
    errors = {}
    for name, a in agents_of(g):
        errors[name] = [answer(a, {"execute": c})
                        for c in ("guest-suspend-disk", "guest-suspend-hybrid")]
    assert errors["vdisk-ga"] == errors["qemu-ga"]
    assert errors["vdisk-ga"] == [
        {"error": {"class": "GenericError", "desc": "child process has failed to suspend"}},
        {"error": {"class": "GenericError",
                   "desc": "the requested suspend mode is not supported by the guest"}}]
