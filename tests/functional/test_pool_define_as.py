# SPDX-License-Identifier: BSD-3-Clause
"""pool-define-as / pool-create-as --print-xml: the XML built from every
source option is virsh's (libvirt 9.0's virsh on its built-in test driver,
no daemon needed), for a matrix of options, including virsh's rules on
which options open <source>, which <adapter> parent wins and values written
as they are."""
import os
import shutil
import subprocess

import pytest

from pool_helpers import VDISK_POOL

pytestmark = [
    pytest.mark.skipif(not shutil.which("virsh"), reason="needs virsh"),
    pytest.mark.skipif(not os.path.exists(VDISK_POOL), reason="vdisk-pool is not built"),
]

UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
CASES = [
    ["dir", "--target", "/var/lib/p"],
    ["dir", "-", "-", "-", "-", "/tmp/x"],
    ["dir", "/tmp/x"],
    ["netfs", "--source-host", "h1", "--source-path", "/exp", "--source-format", "nfs",
     "--target", "/mnt", "--source-protocol-ver", "4"],
    ["netfs", "--source-host", "h1", "--source-path", "/exp", "--source-format", "glusterfs",
     "--source-name", "vol"],
    ["fs", "--source-dev", "/dev/sdb1", "--source-format", "ext4", "--target", "/mnt/a"],
    ["logical", "--source-name", "vg0", "--source-dev", "/dev/sdc", "--target", "/dev/vg0"],
    ["iscsi", "--source-host", "10.0.0.1", "--source-dev", "iqn.2013-06.com.example:iscsi",
     "--source-initiator", "iqn.2013-06.com.example:client", "--auth-type", "chap",
     "--auth-username", "u", "--secret-usage", "libvirtiscsi"],
    ["iscsi", "--adapter-name", "host1", "--auth-type", "ceph", "--auth-username", "admin",
     "--secret-uuid", UUID],
    ["rbd", "--source-host", "mon", "--source-name", "pool", "--auth-type", "ceph",
     "--auth-username", "admin"],
    ["rbd", "--auth-type", "ceph", "--auth-username", "admin", "--secret-uuid", UUID],
    ["fs", "--source-format", "ext4", "--auth-type", "chap", "--auth-username", "u",
     "--secret-uuid", "not-a-uuid"],
    ["rbd", "--source-protocol-ver", "3"],
    ["rbd", "--source-initiator", "a&b", "--source-protocol-ver", "x'y"],
    ["scsi", "--adapter-wwnn", "20000000c9831b4b", "--adapter-wwpn", "10000000c9831b4b",
     "--adapter-parent", "scsi_host3", "--adapter-parent-wwnn", "1",
     "--adapter-parent-wwpn", "2", "--adapter-parent-fabric-wwn", "3"],
    ["scsi", "--adapter-wwnn", "1", "--adapter-wwpn", "2", "--adapter-parent-wwnn", "3",
     "--adapter-parent-wwpn", "4", "--adapter-parent-fabric-wwn", "5"],
    ["scsi", "--adapter-wwnn", "1", "--adapter-wwpn", "2", "--adapter-parent-wwnn", "3",
     "--adapter-parent-fabric-wwn", "5"],
    ["scsi", "--adapter-wwnn", "1", "--adapter-wwpn", "2"],
    ["scsi", "--adapter-wwnn", "1", "--source-name", "n"],
    ["scsi", "--adapter-name", "host0", "--adapter-wwnn", "1", "--adapter-wwpn", "2"],
    ["scsi", "--adapter-parent", "scsi_host3"],
    ["fs", "--source-host", "h&'", "--source-path", "p&'<", "--source-dev", "d&",
     "--source-name", "n&<", "--source-format", "f&'", "--target", "t&'",
     "--auth-type", "a&'", "--auth-username", "u&'", "--secret-usage", "s&'",
     "--adapter-name", "n&'", "--source-protocol-ver", "v&'"],
    ["rbd", "--secret-usage", "x", "--secret-uuid", "y"],
    ["netfs", "--source-host", "h", "--source-host", "h2"],
    ["netfs", "--bogus", "x"],
]


def run(cmd, tmp_path):
    env = dict(os.environ, VDISK_POOL_CONFIG_DIR=str(tmp_path / "c"),
               VDISK_POOL_RUN_DIR=str(tmp_path / "r"), LC_ALL="C")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("verb", ["pool-define-as", "pool-create-as"])
def test_print_xml_same_as_virsh(tmp_path, verb):
    for case in CASES:
        args = [verb, "p", case[0], "--print-xml"] + case[1:]
        virsh = run(["virsh", "-c", "test:///default"] + args, tmp_path)
        vdisk = run([VDISK_POOL] + args, tmp_path)
        assert vdisk == virsh, case


def test_defined_pool_keeps_source(tmp_path):
    """What pool-define-as writes is the XML --print-xml shows."""
    args = ["netfs", "--source-host", "h1", "--source-path", "/exp", "--source-format",
            "glusterfs", "--target", str(tmp_path / "mnt")]
    assert run([VDISK_POOL, "pool-define-as", "n"] + args, tmp_path)[0] == 0
    rc, out, err = run([VDISK_POOL, "pool-dumpxml", "n"], tmp_path)
    assert rc == 0 and ("<host name='h1'/>\n    <dir path='/exp'/>\n"
                        "    <format type='glusterfs'/>\n") in out
