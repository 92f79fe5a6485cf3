# SPDX-License-Identifier: BSD-3-Clause
"""docs/vdisk-pool.1 documents every command and option that
`vdisk-pool --help` shows, and is well-formed roff."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import TOP, run
from pool_helpers import VDISK_POOL

MANPAGE = os.path.join(TOP, "docs", "vdisk-pool.1")


def help_text():
    p = run([VDISK_POOL, "--help"])
    assert p.returncode == 0
    return p.stdout


def man_text():
    with open(MANPAGE) as f:
        text = f.read()
    return re.sub(r"\\f[BIRP]", "", text.replace("\\-", "-"))


def help_commands(text):
    """(command, [options]) of every synopsis line of the help."""
    out = []
    for m in re.finditer(r"^        ([\w-]+)(.*)$", text, re.M):
        out.append((m.group(1), re.findall(r"--([\w-]+)", m.group(2))))
    return out


def man_sections(text):
    """Text of each '.SS command' section of the page."""
    parts = re.split(r"^\.SS ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def test_every_command_and_option_in_manpage():
    cmds = help_commands(help_text())
    assert len(cmds) == 42
    secs = man_sections(man_text())
    for cmd, opts in cmds:
        assert cmd in secs, cmd
        for o in opts:
            assert re.search(r"^\.B --%s(?![\w-])" % re.escape(o), secs[cmd], re.M), \
                (cmd, o)
    assert set(secs) == {c for c, _ in cmds}


def test_global_options_in_manpage():
    man = man_text()
    for o in re.findall(r"(--?[a-z][\w-]*)", help_text().split("Storage Pool")[0]):
        assert o in man, o


def test_manpage_renders_cleanly():
    if not shutil.which("groff"):
        pytest.skip("groff is not installed")
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", MANPAGE],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
