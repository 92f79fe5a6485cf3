# SPDX-License-Identifier: BSD-3-Clause
"""scripts/demo (make demo) runs to its end on the build under test, and
ends with an error when another tool reads back different data from an
image vdisk-img wrote (here: a qemu-img whose converted output is changed
behind its back)."""
import os
import stat

import pytest

from conftest import BUILD, QEMU_IMG, TOP, VDISK_IMG, run

DEMO = os.path.join(TOP, "scripts", "demo")
pytestmark = pytest.mark.skipif(not os.path.exists(VDISK_IMG), reason="vdisk-img not built")


def demo(tmp_path, path=None):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    if path:
        env["PATH"] = path + ":" + env["PATH"]
    return run([DEMO, BUILD], env=env, timeout=600)


def test_demo_runs(tmp_path):
    p = demo(tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert p.stdout.endswith("demo done\n")
    assert "Images are identical." in p.stdout
    if QEMU_IMG:
        assert "plain.raw and back.raw hold the same bytes" in p.stdout
    assert os.listdir(tmp_path) == []           # its temporary folder is gone


def test_demo_fails_when_read_back_differs(tmp_path):
    if QEMU_IMG is None:
        pytest.skip("qemu-img is not installed")
    fake = tmp_path / "bin"
    fake.mkdir()
    # qemu-img as usual, but one byte of what convert writes is changed
    wrapper = fake / "qemu-img"
    wrapper.write_text('#!/bin/sh\n%s "$@" || exit\n'
                       'if [ "$1" = convert ]; then eval "out=\\${$#}"\n'
                       '    printf X | dd of="$out" bs=1 seek=20971520 conv=notrunc '
                       'status=none\nfi\n' % QEMU_IMG)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    work = tmp_path / "work"
    work.mkdir()
    p = demo(work, str(fake))
    assert p.returncode != 0
    assert "demo done" not in p.stdout
    assert "differ" in p.stdout + p.stderr              # cmp's message
