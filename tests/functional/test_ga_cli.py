# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-ga's command line and configuration file against qemu-ga 7.2:
--dump-conf byte-identical for many configuration files and option sets,
the RPC list of -b help, and the same messages and exit codes for bad
configuration files and options."""
import re

import pytest

from conftest import run
from ga_helpers import QEMU_GA, VDISK_GA, env_with_conf, needs_qemu_ga


def norm(text):
    """Mask what differs between runs and programs: pids, clock times,
    program names."""
    text = re.sub(r"\(process:\d+\)", "(process:P)", text)
    text = re.sub(r"\*\*: \d\d:\d\d:\d\d\.\d\d\d:", "**: T:", text)
    text = text.replace(VDISK_GA, "PROG").replace(QEMU_GA, "PROG")
    return text.replace("qemu-ga", "PROG").replace("vdisk-ga", "PROG")


def both(tmp_path, conf_text, args):
    """Run both agents with conf_text (None: no file) and args."""
    needs_qemu_ga()
    conf = tmp_path / "qemu-ga.conf"
    if conf_text is not None:
        conf.write_text(conf_text)
    env = env_with_conf(conf)
    v = run([VDISK_GA] + args, env=env, timeout=30)
    q = run([QEMU_GA] + args, env=env, timeout=30)
    return v, q


def assert_same(v, q):
    assert v.returncode == q.returncode, (v.stderr, q.stderr)
    assert norm(v.stdout) == norm(q.stdout)
    assert norm(v.stderr) == norm(q.stderr)


CONFS = [
    None,
    "",
    "# only a comment\n",
    "[general]\ndaemon=1\nmethod = unix-listen\npath=/run/x\nverbose=true\n",
    "[general]\nblock-rpcs=guest-ping,guest-info\n",
    "[general]\nblacklist=guest-ping,guest-info\nblock-rpcs=guest-sync\n",
    "[general]\nblock-rpcs=,a,,b,\n",
    "[general]\nblock-rpcs=a;b;c\n",
    "[general]\ndaemon=1\ndaemon=0\n",
    "[general]\ndaemon=false \nverbose=0\nretry-path=1\n",
    "[general]\npath=a;b\\sc\\n\\\\\nlogfile= spaced \nkey[de]=x\n",
    "  [general]  \n  path  =  x  \n\n\r\n",
    "[other]\nmethod=isa-serial\n[general]\nmethod=isa-serial\n[other]\npath=zz\n",
    "[general]\nmethod=isa-serial\n[general]\npidfile=/p\nstatedir=rel\n",
    "[general]\nfsfreeze-hook=/h\nlogfile=/l\n",
    "[general]\nmethod=unix-listen\npath=\\s\\tlead\\ttab\n",
    "[general]\nmethod=foo\n",
    "[general]\ndaemon=yes\n",
    "[general]\nverbose=2\n",
    "garbage\n",
    "a=b\n",
    "[general]\npath=a\\qb\n",
    "[general]\npath=a\\\n",
    "[general]\n=x\n",
    "[gen\n",
    "[general] x\n",
]


@pytest.mark.parametrize("idx", range(len(CONFS)))
def test_dump_conf_files(tmp_path, idx):
    v, q = both(tmp_path, CONFS[idx], ["-D"])
    assert_same(v, q)


ARGSETS = [
    ["-D", "-b", "a,b", "-b", "c", "-F", "-l", "/l", "-f", "/p", "-t", "/s"],
    ["-D", "-Fhook", "-r", "-v"],
    ["--block-rpcs=x", "--fsfreeze-hook", "--daemonize", "--verbose",
     "--retry-path", "--logfile=L", "--pidfile=P", "--statedir=S",
     "--path=PP", "--method=M", "-D"],
    ["--fsfreeze-hook=X", "-D"],
    ["-F", "-FY", "-D"],
    ["-p", "  lead", "-D"],
    ["-b", " a,b\\c", "-D"],
    ["--blacklist=x", "--dump", "extra"],
    ["-m", "isa-serial", "-D"],
    ["-m", "unix-listen", "-D"],
    ["-m", "vsock-listen", "-D"],
    ["-m", "foo", "-D"],
    ["-b", "a,?", "-m", "isa-serial", "-D"],
]


@pytest.mark.parametrize("idx", range(len(ARGSETS)))
def test_dump_conf_args(tmp_path, idx):
    conf = "[general]\nblock-rpcs=k1,k2\nmethod=unix-listen\npath=/c\n"
    v, q = both(tmp_path, conf if idx % 2 else None, ARGSETS[idx])
    assert_same(v, q)


@pytest.mark.parametrize("arg", ["?", "help"])
def test_block_help(tmp_path, arg):
    v, q = both(tmp_path, None, ["-b", arg])
    assert_same(v, q)
    assert "guest-fsfreeze-freeze" in v.stdout


@pytest.mark.parametrize("args", [["-x"], ["-b"], ["--bogus"], ["-m"]])
def test_bad_options(tmp_path, args):
    v, q = both(tmp_path, None, args)
    assert v.returncode == q.returncode == 1
    assert norm(v.stderr) == norm(q.stderr)


def test_version_and_help(tmp_path):
    v = run([VDISK_GA, "-V"])
    assert v.returncode == 0 and v.stdout.startswith("vdisk-ga ")
    h = run([VDISK_GA, "--help"])
    assert h.returncode == 0
    for opt in ["--method", "--path", "--logfile", "--pidfile", "--fsfreeze-hook",
                "--statedir", "--verbose", "--version", "--daemonize",
                "--block-rpcs", "--dump-conf", "--retry-path", "--help"]:
        assert opt in h.stdout


def test_startup_errors(tmp_path):
    """Channels that cannot be opened: the same exit status."""
    for args in (["-m", "unix-listen", "-p", str(tmp_path / "no" / "s")],
                 ["-m", "vsock-listen", "-p", "xx"],
                 ["-m", "virtio-serial", "-p", str(tmp_path / "none")],
                 ["-m", "isa-serial", "-p", str(tmp_path / "none")],
                 ["-m", "bogus", "-p", "x"],
                 ["-m", "unix-listen", "-p", str(tmp_path / "s"),
                  "-l", str(tmp_path / "no" / "log")]):
        v, q = both(tmp_path, None, args + ["-t", str(tmp_path)])
        assert v.returncode == q.returncode, args


def test_no_pidfile_without_daemon(tmp_path):
    """The pid file is written only with -d (as qemu-ga does): a failing
    channel exits before anything else, and no pid file appears."""
    pid = tmp_path / "ga.pid"
    v, _ = both(tmp_path, None, ["-m", "isa-serial", "-p", str(tmp_path / "none"),
                                 "-f", str(pid), "-t", str(tmp_path)])
    assert v.returncode == 1
    assert not pid.exists()


def test_manpage_matches_help():
    """docs/vdisk-ga.8 names every option --help shows, and no other."""
    import os
    from conftest import TOP
    with open(os.path.join(TOP, "docs", "vdisk-ga.8")) as f:
        man = re.sub(r"\\f[BIRP]", "", f.read().replace("\\-", "-"))
    helptext = run([VDISK_GA, "--help"]).stdout
    opts = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", helptext)) - {"-F/var"}
    man_opts = set(re.findall(r"(?<![\w/-])(--?[A-Za-z][a-z-]*)", man.split(".SH OPTIONS")[1]
                              .split(".SH FILES")[0]))
    assert sorted(o for o in opts if o not in man_opts) == []
    assert sorted(o for o in man_opts - opts if o not in ("--blacklist",)) == []


def test_daemonize_pidfile(tmp_path):
    """-d: both fork away and write their pid in the pid file."""
    import os
    import signal
    import socket
    import time
    needs_qemu_ga()
    for name, binary in (("v", VDISK_GA), ("q", QEMU_GA)):
        d = tmp_path / name
        d.mkdir()
        pid, sock = d / "ga.pid", d / "ga.sock"
        p = run([binary, "-d", "-m", "unix-listen", "-p", str(sock), "-t", str(d),
                 "-f", str(pid)], env=env_with_conf(d / "none.conf"), timeout=30)
        assert p.returncode == 0, p.stderr
        deadline = time.monotonic() + 90
        # Both write "PID\n": wait for the whole line, never a part of it.
        while not (pid.exists() and pid.read_text().endswith("\n")):
            assert time.monotonic() < deadline, name
            time.sleep(0.02)
        n = int(pid.read_text())
        try:
            s = socket.socket(socket.AF_UNIX)
            while True:
                try:
                    s.connect(str(sock))
                    break
                except OSError:
                    assert time.monotonic() < deadline, name
                    time.sleep(0.02)
            s.sendall(b'{"execute":"guest-ping"}')
            got = b""
            while not got.endswith(b"\n"):
                got += s.recv(100)
            assert got == b'{"return": {}}\n'
            s.close()
        finally:
            os.kill(n, signal.SIGTERM)
        # vdisk-ga removes its pid file on the way out.  qemu-ga does too,
        # but on a loaded machine qemu-ga 7.2 was seen to stay up after
        # SIGTERM for good: give it a while, then kill it, and judge the
        # removal on vdisk-ga alone.
        stop = time.monotonic() + (90 if name == "v" else 20)
        while pid.exists() and time.monotonic() < stop:
            time.sleep(0.02)
        if name == "v":
            assert not pid.exists(), "vdisk-ga left its pid file"
        elif pid.exists():
            try:
                os.kill(n, signal.SIGKILL)
            except ProcessLookupError:
                pass
