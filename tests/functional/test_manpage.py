# SPDX-License-Identifier: BSD-3-Clause
"""docs/vdisk-img.1 documents every command and option that
`vdisk-img --help` shows, and is well-formed roff."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import TOP, vimg

MANPAGE = os.path.join(TOP, "docs", "vdisk-img.1")


def help_text():
    p = vimg("--help")
    assert p.returncode == 0
    return p.stdout


def man_text():
    """The page with roff escapes for '-' undone and font requests removed."""
    with open(MANPAGE) as f:
        text = f.read()
    text = text.replace("\\-", "-")
    return re.sub(r"\\f[BIRP]", "", text)


def help_options(text):
    """Every -x / --long option appearing in the help's syntax lines."""
    syntax = text.split("Command syntax:")[1].split("Command parameters:")[0]
    head = text.split("Command syntax:")[0]
    opts = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", syntax + head))
    return opts


def test_every_help_option_in_manpage():
    man = man_text()
    missing = [o for o in sorted(help_options(help_text()))
               if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(o), man)]
    assert missing == []


def test_every_command_has_a_section():
    man = man_text()
    commands = re.findall(r"^  (\w+) ", help_text().split("Command syntax:")[1],
                          re.M)
    assert len(commands) == 15
    for cmd in commands:
        assert re.search(r"^\.SS %s$" % cmd, man, re.M), cmd


def test_required_sections():
    man = man_text()
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS",
                    "EXAMPLES", "SEE ALSO"):
        assert re.search(r"^\.SH %s$" % section, man, re.M), section


def test_exit_codes_of_check_documented():
    man = man_text()
    assert "63" in man and "leaked clusters" in man


def test_roff_is_clean():
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", MANPAGE],
                       capture_output=True, text=True)
    assert p.returncode == 0
    assert p.stderr == ""
