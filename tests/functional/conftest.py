# SPDX-License-Identifier: BSD-3-Clause
"""Shared fixtures for the CLI and interop tests.

VDISK_BUILDDIR names the meson build directory whose programs are tested
(default: build/ at the top of the tree)."""
import os
import re
import shutil
import subprocess
import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("VDISK_BUILDDIR", os.path.join(TOP, "build"))
VDISK_IMG = os.path.join(BUILD, "tools", "img", "vdisk-img")
QEMU_IMG = shutil.which("qemu-img")

# The tests read whole images into memory, and each large read lands in
# freshly mapped pages.  Where the first touch of a page is costly (virtual
# machines whose host backs each page only when the guest touches it: 13-16
# us a page was measured), that was half of the faults of a run.  With
# pytest-xdist the controller sets glibc's transparent-huge-page malloc (one
# fault per 2 MiB) before it starts its workers, and the workers put the
# caller's setting back at once, so the programs under test run as they
# would anywhere.  Without xdist nothing changes.
_TUNABLES = "VDISK_TEST_SAVED_GLIBC_TUNABLES"
if os.environ.get("PYTEST_XDIST_WORKER") is not None and _TUNABLES in os.environ:
    if os.environ[_TUNABLES]:
        os.environ["GLIBC_TUNABLES"] = os.environ[_TUNABLES]
    else:
        os.environ.pop("GLIBC_TUNABLES", None)
    del os.environ[_TUNABLES]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "once: runs in the sanitized pass of make check only (VDISK_SKIP_ONCE)")
    workers = getattr(config.option, "numprocesses", None)
    if os.environ.get("PYTEST_XDIST_WORKER") is not None or not workers \
            or _TUNABLES in os.environ:
        return
    os.environ[_TUNABLES] = os.environ.get("GLIBC_TUNABLES", "")
    os.environ["GLIBC_TUNABLES"] = ":".join(
        t for t in (os.environ[_TUNABLES], "glibc.malloc.hugetlb=1") if t)

def run(args, check=False, input=None, env=None, timeout=300):
    """Run a command, return CompletedProcess with text stdout/stderr."""
    p = subprocess.run(args, capture_output=True, text=True, input=input,
                       env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (args, p.returncode, p.stderr))
    return p


def vimg(*args, **kw):
    return run([VDISK_IMG] + [str(a) for a in args], **kw)


def vimg_traced(log, syscall, *args, timeout=300):
    """vdisk-img under strace -f, tracing syscall (a strace -e trace= list,
    strings cut short) into the file log; skips the test without strace.
    LeakSanitizer cannot run under ptrace, so leak checking is off."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    return run([strace, "-f", "-qq", "-s", "0", "-o", str(log), "-e", "trace=" + syscall,
                VDISK_IMG] + [str(a) for a in args], env=env, timeout=timeout)


def qimg(*args, **kw):
    return run([QEMU_IMG] + [str(a) for a in args], **kw)


def qimg_retry(*args):
    """qemu-img 7.2 fails some LUKS creates and measures with 'Unable to
    get accurate CPU usage' (its PBKDF2 timing), with sha1 several times
    in a row: retry that error only."""
    for _ in range(12):
        p = qimg(*args)
        if "Unable to get accurate CPU usage" not in p.stderr:
            return p
    return p


def same_output(vout, qout):
    """vdisk-img prints its own name where qemu-img prints 'qemu-img'."""
    return vout == qout.replace("qemu-img", "vdisk-img")


_formats = None


def vdisk_formats():
    """The formats vdisk-img --help lists as supported."""
    global _formats
    if _formats is None:
        out = vimg("--help").stdout
        line = [l for l in out.splitlines() if l.startswith("Supported formats:")]
        _formats = set(line[0].split(":", 1)[1].split()) if line else set()
    return _formats


def needs_vdisk_format(fmt):
    if fmt not in vdisk_formats():
        pytest.skip("vdisk has no %s driver yet" % fmt)


@pytest.fixture
def needs_qemu():
    if QEMU_IMG is None:
        pytest.skip("qemu-img is not installed")


def write_pattern(path, off, length, byte):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes([byte]) * length)


# A passed test's tmp_path is removed at its end: a full run writes tens of
# GiB of images, which would otherwise stay on disk (and be written back to
# it) until pytest drops the whole folder three runs later.  A failed
# test's folder stays for a look.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "setup" and rep.failed:
        item._vdisk_keep = True
    elif rep.when == "call" and not rep.passed:
        item._vdisk_keep = True
    elif rep.when == "teardown":
        path = (getattr(item, "funcargs", None) or {}).get("tmp_path")
        if path is not None and rep.passed and not getattr(item, "_vdisk_keep", False):
            shutil.rmtree(str(path), ignore_errors=True)


# The session's Linux guest under QEMU, for kernel features this machine
# lacks (guest.py).
from guest import guest  # noqa: E402,F401


# Under the sanitizer build (VDISK_SANITIZED, set by scripts/check) a large
# parameter matrix runs a fixed sample of its cases: what the sanitizers
# look for (memory and UB errors on the code paths) is reached by a
# sample.  A test function with more than SANITIZED_KEEP_ALL cases keeps
# every SANITIZED_STRIDE-th case by a stable hash of its id (never fewer
# than SANITIZED_KEEP_ALL); the choice is the same on every run.
# VDISK_SANITIZED_ALL=1 runs everything.  scripts/check's plain pass sets
# VDISK_SKIP_SAMPLED=1 and leaves that sample out, so each case of a
# matrix runs once per make check, against one build or the other.  The
# tests that run once (below) run every case: the plain pass leaves them
# out.
SANITIZED_KEEP_ALL = 2
SANITIZED_STRIDE = 8


def _stable_hash(text):
    import zlib
    return zlib.crc32(text.encode())


# Some tests spend their time in a peer, a server or an emulated guest,
# the same in both passes of make check: the tests that boot a QEMU guest
# (xdist groups "guest" and "ga-guest"), and those marked "once" (libvirt's
# LUKS copies, a cluster made to fail, a timeout waited out).  scripts/check
# sets VDISK_SKIP_ONCE=1 for its plain pass, so they run once, against the
# sanitized build, which checks both what they compare and memory errors.
GUEST_GROUPS = ("guest", "ga-guest")


def _once(item):
    return item.get_closest_marker("once") is not None or \
        any(m.args and m.args[0] in GUEST_GROUPS for m in item.iter_markers("xdist_group"))


# A single test (no parameters, or a matrix of at most SANITIZED_KEEP_ALL
# cases) runs once too, in the sanitized pass: that run checks all the
# plain one would, and memory errors besides.  But where the module's
# tests do something else in one build than in the other, they run in
# both passes: a module that reads VDISK_SANITIZED (SANITIZED, SAN), caps
# a program's memory with prlimit (limited(), which only a plain build can
# run under: the sanitizers reserve terabytes of address space) or uses
# roformat_helpers (whose hostile_convert does).
_BUILD_DEPENDENT = re.compile(r"VDISK_SANITIZED|\bSANITIZED\b|\bSAN\b|prlimit|PRLIMIT|"
                              r"\blimited\(|roformat_helpers")
_module_texts = {}


def module_depends_on_build(path):
    """Does the test module at path behave differently per build?"""
    path = str(path)
    if path not in _module_texts:
        try:
            with open(path) as f:
                _module_texts[path] = bool(_BUILD_DEPENDENT.search(f.read()))
        except OSError:
            _module_texts[path] = False
    return _module_texts[path]


def _matrices(items):
    """The parametrized tests (not once), each a list of its cases, by
    (module, function)."""
    groups = {}
    for item in items:
        if getattr(item, "callspec", None) is not None and not _once(item):
            groups.setdefault((item.fspath, item.originalname), []).append(item)
    return groups


def _single_once(items, groups):
    """The ids of the single tests that run in the sanitized pass only."""
    out = set()
    for item in items:
        if _once(item) or module_depends_on_build(item.fspath):
            continue
        group = groups.get((item.fspath, getattr(item, "originalname", None)))
        if group is None or len(group) <= SANITIZED_KEEP_ALL:
            out.add(id(item))
    return out


def _deselect(config, items, drop):
    if drop:
        config.hook.pytest_deselected(items=[it for it in items if id(it) in drop])
        items[:] = [it for it in items if id(it) not in drop]


def _matrix_sample(groups):
    """The ids of the matrix cases the sanitized pass runs, and of those
    it leaves out."""
    keep, drop = set(), set()
    for group in groups.values():
        if len(group) <= SANITIZED_KEEP_ALL:
            continue
        ranked = sorted(group, key=lambda it: _stable_hash(it.nodeid))
        kept = [it for it in ranked if _stable_hash(it.nodeid) % SANITIZED_STRIDE == 0]
        if len(kept) < SANITIZED_KEEP_ALL:
            kept = ranked[:SANITIZED_KEEP_ALL]
        keep.update(id(it) for it in kept)
        drop.update(id(it) for it in group if it not in kept)
    return keep, drop


def pytest_collection_modifyitems(config, items):
    groups = _matrices(items)
    if os.environ.get("VDISK_SKIP_ONCE"):
        _deselect(config, items, {id(it) for it in items if _once(it)} |
                  _single_once(items, groups))
    if os.environ.get("VDISK_SKIP_SAMPLED") and not os.environ.get("VDISK_SANITIZED"):
        _deselect(config, items, _matrix_sample(groups)[0])
    if not os.environ.get("VDISK_SANITIZED") or os.environ.get("VDISK_SANITIZED_ALL"):
        return
    _deselect(config, items, _matrix_sample(groups)[1])
