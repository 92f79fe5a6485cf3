# SPDX-License-Identifier: BSD-3-Clause
"""How make check splits the suite between its plain and sanitized passes
(conftest.py): every collected test runs in at least one pass; a large
matrix's sampled cases run only in the sanitized pass and the rest only in
the plain one; non-parametrized tests and small matrices run in the
sanitized pass only, but in both where their module behaves per build; the
tests that run once run in the sanitized pass only."""
import os
import types

import conftest


class FakeItem:
    """What conftest's collection hook reads of a pytest item."""

    def __init__(self, path, name, param=None, once=False, group=None):
        self.fspath = path
        self.originalname = name
        self.nodeid = "%s::%s%s" % (path, name, "" if param is None else "[%s]" % param)
        self.callspec = None if param is None else types.SimpleNamespace(id=param)
        self._once = once
        self._group = group

    def get_closest_marker(self, name):
        return object() if name == "once" and self._once else None

    def iter_markers(self, name):
        if name == "xdist_group" and self._group:
            return [types.SimpleNamespace(args=(self._group,))]
        return []


def collection():
    items = [FakeItem("test_a.py", "test_plain"),
             FakeItem("test_a.py", "test_small", "x"),
             FakeItem("test_a.py", "test_small", "y"),
             FakeItem("test_a.py", "test_once", once=True),
             FakeItem("test_b.py", "test_in_guest", group="guest"),
             FakeItem("test_b.py", "test_once_matrix", "p1", once=True),
             FakeItem("test_b.py", "test_once_matrix", "p2", once=True),
             FakeItem("test_b.py", "test_once_matrix", "p3", once=True),
             FakeItem("test_c.py", "test_per_build"),
             FakeItem("test_c.py", "test_per_build_small", "x")]
    items += [FakeItem("test_a.py", "test_big", "case%d" % i) for i in range(40)]
    items += [FakeItem("test_b.py", "test_wide", "w%d" % i) for i in range(5)]
    return items


def selected(monkeypatch, env):
    """The ids left after the hook, with env set as scripts/check sets it."""
    for k in ("VDISK_SKIP_ONCE", "VDISK_SKIP_SAMPLED", "VDISK_SANITIZED",
              "VDISK_SANITIZED_ALL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # test_c.py stands for a module whose tests behave per build
    monkeypatch.setattr(conftest, "module_depends_on_build", lambda p: p == "test_c.py")
    items = collection()
    dropped = []
    config = types.SimpleNamespace(hook=types.SimpleNamespace(
        pytest_deselected=lambda items: dropped.extend(items)))
    conftest.pytest_collection_modifyitems(config, items)
    assert not {it.nodeid for it in items} & {it.nodeid for it in dropped}
    return {it.nodeid for it in items}


PLAIN = {"VDISK_SKIP_ONCE": "1", "VDISK_SKIP_SAMPLED": "1"}
SANITIZED = {"VDISK_SANITIZED": "1"}


def test_passes_cover_everything_once_per_matrix_case(monkeypatch):
    everything = {it.nodeid for it in collection()}
    plain = selected(monkeypatch, PLAIN)
    sanitized = selected(monkeypatch, SANITIZED)
    assert plain | sanitized == everything
    big = {i for i in everything if "test_big[" in i or "test_wide[" in i}
    # Each case of a large matrix runs in exactly one pass, and the sample
    # is a real part of it.
    assert not plain & sanitized & big
    assert 2 <= len(sanitized & big) < len(big) / 2
    assert {i for i in sanitized if "test_wide[" in i}
    # Tests that are not a large matrix run in the sanitized pass only,
    # but in both where the module behaves per build; the once ones and
    # the guest's in the sanitized pass only.
    for name in ("test_plain", "test_small[x]", "test_small[y]"):
        assert "test_a.py::" + name in sanitized - plain
    for name in ("test_per_build", "test_per_build_small[x]"):
        assert "test_c.py::" + name in plain & sanitized
    once = {i for i in everything if "once" in i or "guest" in i}
    assert once <= sanitized and not once & plain


def test_modules_that_behave_per_build_are_found():
    """The module text decides: prlimit caps, VDISK_SANITIZED and the
    read-only format helpers (their hostile_convert) keep a module's single
    tests in both passes."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("test_vpc.py", "test_curl.py", "test_cloop.py", "test_vhdx_log.py",
                 "test_qed_crash.py"):
        assert conftest.module_depends_on_build(os.path.join(here, name)), name
    for name in ("test_commit.py", "test_rebase.py", "test_qcow2_resize.py"):
        assert not conftest.module_depends_on_build(os.path.join(here, name)), name


def test_sample_is_stable_and_full_runs_keep_all(monkeypatch):
    a = selected(monkeypatch, SANITIZED)
    assert a == selected(monkeypatch, SANITIZED)
    everything = {it.nodeid for it in collection()}
    assert selected(monkeypatch, {}) == everything
    assert selected(monkeypatch, dict(SANITIZED, VDISK_SANITIZED_ALL="1")) == everything

