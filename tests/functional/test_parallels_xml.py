# SPDX-License-Identifier: BSD-3-Clause
"""parallels disks described by a DiskDescriptor.xml (the format of
QEMU's docs/interop/prl-xml.txt), opened with -f parallels on the
descriptor.  qemu-img 7.2 does not read descriptors (it says the file is
not in Parallels format), so the reference is qemu-img reading each image
the descriptor names (plain images as raw, expanding ones as parallels):
the disk reads as those images one after the other, the top snapshot's
image is the one read, writes land in it.  Descriptors are generated here;
hostile ones end with a clear error."""
import os
import subprocess

import pytest

from conftest import QEMU_IMG, VDISK_IMG, needs_vdisk_format
from roformat_helpers import PRLIMIT, SANITIZED, run

K, M = 1 << 10, 1 << 20
ZERO_GUID = "{00000000-0000-0000-0000-000000000000}"


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("parallels")


def guid(n):
    return "{%08x-0000-4000-8000-%012x}" % (n, n)


def descriptor(sectors, storages, shots=None):
    """storages: [(start, end, [(guid, type, file), ...])]; shots:
    [(guid, parent)] (default: one shot, the first image's)."""
    if shots is None:
        shots = [(storages[0][2][0][0], ZERO_GUID)]
    st = "".join(
        "<Storage><Start>%d</Start><End>%d</End><Blocksize>2048</Blocksize>%s</Storage>" % (
            a, b, "".join("<Image><GUID>%s</GUID><Type>%s</Type><File>%s</File></Image>" % im
                          for im in images))
        for a, b, images in storages)
    sh = "".join("<Shot><GUID>%s</GUID><ParentGUID>%s</ParentGUID></Shot>" % s for s in shots)
    return ("<?xml version='1.0' encoding='UTF-8'?>\n"
            "<Parallels_disk_image Version=\"1.0\">\n"
            "  <Disk_Parameters><Disk_size>%d</Disk_size><Cylinders>1</Cylinders>"
            "<Heads>16</Heads><Sectors>63</Sectors><Padding>0</Padding>"
            "<UID>%s</UID><Name>disk</Name></Disk_Parameters>\n"
            "  <StorageData>%s</StorageData>\n"
            "  <Snapshots>%s</Snapshots>\n"
            "</Parallels_disk_image>\n") % (sectors, guid(999), st, sh)


def qemu_read(d, name, fmt):
    """An image's guest bytes as qemu-img reads them."""
    p = run(QEMU_IMG, "convert", "-f", fmt, "-O", "raw", name, "ref.raw", cwd=d)
    assert p.returncode == 0, p.stderr
    data = (d / "ref.raw").read_bytes()
    os.unlink(d / "ref.raw")
    return data


def vdisk_read(d, name="DiskDescriptor.xml"):
    p = run(VDISK_IMG, "convert", "-f", "parallels", "-O", "raw", name, "out.raw", cwd=d)
    assert p.returncode == 0, p.stderr
    return (d / "out.raw").read_bytes()


def test_plain_single_storage(tmp_path):
    """One plain image: the disk is that file; qemu-img refuses the
    descriptor (it reads no descriptors), vdisk-img opens it; info and map
    name the descriptor and the image."""
    data = os.urandom(2 * M)
    (tmp_path / "disk.hds").write_bytes(data)
    (tmp_path / "DiskDescriptor.xml").write_text(
        descriptor(4096, [(0, 4096, [(guid(1), "Plain", "disk.hds")])]))
    q = run(QEMU_IMG, "info", "-f", "parallels", "DiskDescriptor.xml", cwd=tmp_path)
    assert q.returncode == 1 and "Image not in Parallels format" in q.stderr
    assert vdisk_read(tmp_path) == qemu_read(tmp_path, "disk.hds", "raw") == data
    p = run(VDISK_IMG, "info", "--output=json", "-f", "parallels", "DiskDescriptor.xml",
            cwd=tmp_path)
    assert p.returncode == 0 and '"virtual-size": 2097152' in p.stdout
    p = run(VDISK_IMG, "map", "-f", "parallels", "DiskDescriptor.xml", cwd=tmp_path)
    assert p.returncode == 0 and "disk.hds" in p.stdout, p.stdout + p.stderr
    # the disk's directory names its descriptor (qemu-img: not a regular file)
    (tmp_path / "disk.hdd").mkdir()
    os.rename(tmp_path / "disk.hds", tmp_path / "disk.hdd" / "disk.hds")
    os.rename(tmp_path / "DiskDescriptor.xml", tmp_path / "disk.hdd" / "DiskDescriptor.xml")
    q = run(QEMU_IMG, "info", "-f", "parallels", "disk.hdd", cwd=tmp_path)
    assert q.returncode == 1
    assert vdisk_read(tmp_path, "disk.hdd") == data
    os.rename(tmp_path / "disk.hdd" / "DiskDescriptor.xml", tmp_path / "DiskDescriptor.xml")
    # without -f both probe the descriptor as a raw file
    q = run(QEMU_IMG, "info", "--output=json", "DiskDescriptor.xml", cwd=tmp_path)
    v = run(VDISK_IMG, "info", "--output=json", "DiskDescriptor.xml", cwd=tmp_path)
    assert '"format": "raw"' in q.stdout and '"format": "raw"' in v.stdout


def test_storages_and_snapshots(tmp_path):
    """Two storages, one plain and one expanding (made and written by
    qemu-img); a snapshot chain whose top image is read; a plain image
    shorter than its storage reads zeroes past its end."""
    a = os.urandom(M)
    (tmp_path / "a.hds").write_bytes(a)
    (tmp_path / "old.hds").write_bytes(b"\x55" * M)
    assert run(QEMU_IMG, "create", "-f", "parallels", "b.hdd", "1M", cwd=tmp_path).returncode == 0
    (tmp_path / "src.raw").write_bytes(os.urandom(M // 2))
    p = run(QEMU_IMG, "convert", "-n", "-f", "raw", "-O", "parallels", "src.raw", "b.hdd",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (tmp_path / "short.hds").write_bytes(b"\x77" * 1000)
    (tmp_path / "DiskDescriptor.xml").write_text(descriptor(
        2048 + 2048 + 8,
        [(0, 2048, [(guid(1), "Plain", "old.hds"), (guid(2), "Plain", "a.hds")]),
         (2048, 4096, [(guid(1), "Plain", "old.hds"), (guid(2), "Compressed", "b.hdd")]),
         (4096, 4104, [(guid(1), "Plain", "short.hds"), (guid(2), "Plain", "short.hds")])],
        shots=[(guid(1), ZERO_GUID), (guid(2), guid(1))]))
    want = (qemu_read(tmp_path, "a.hds", "raw") + qemu_read(tmp_path, "b.hdd", "parallels") +
            b"\x77" * 1000 + bytes(8 * 512 - 1000))
    assert vdisk_read(tmp_path) == want


def test_writes_land_in_the_image(tmp_path):
    """convert -n into the descriptor writes the plain images; qemu-img
    reads them back as written."""
    (tmp_path / "p1.hds").write_bytes(bytes(M))
    (tmp_path / "p2.hds").write_bytes(bytes(M))
    (tmp_path / "DiskDescriptor.xml").write_text(descriptor(
        4096, [(0, 2048, [(guid(1), "Plain", "p1.hds")]),
               (2048, 4096, [(guid(1), "Plain", "p2.hds")])]))
    src = os.urandom(2 * M)
    (tmp_path / "src.raw").write_bytes(src)
    p = run(VDISK_IMG, "convert", "-n", "-f", "raw", "-O", "parallels", "src.raw",
            "DiskDescriptor.xml", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (qemu_read(tmp_path, "p1.hds", "raw") + qemu_read(tmp_path, "p2.hds", "raw")) == src


HOSTILE = {
    "absolute_file": (descriptor(8, [(0, 8, [(guid(1), "Plain", "/etc/passwd")])]),
                      "not a name relative"),
    "dotdot_file": (descriptor(8, [(0, 8, [(guid(1), "Plain", "../x.hds")])]),
                    "not a name relative"),
    "gap": (descriptor(16, [(0, 8, [(guid(1), "Plain", "x.hds")]),
                            (9, 16, [(guid(1), "Plain", "x.hds")])]), "does not continue"),
    "short_storages": (descriptor(16, [(0, 8, [(guid(1), "Plain", "x.hds")])]), "not at Disk_size"),
    "huge_size": (descriptor(1 << 62, [(0, 1 << 62, [(guid(1), "Plain", "x.hds")])]),
                  "not a disk size"),
    "bad_number": (descriptor(8, [(0, 8, [(guid(1), "Plain", "x.hds")])])
                   .replace("<End>8</End>", "<End>-8</End>"), "not a number"),
    "two_tops": (descriptor(8, [(0, 8, [(guid(1), "Plain", "x.hds")])],
                            shots=[(guid(1), ZERO_GUID), (guid(2), ZERO_GUID)]), "top snapshots"),
    "bad_type": (descriptor(8, [(0, 8, [(guid(1), "Sparse", "x.hds")])]), "neither Plain"),
    "not_xml": ("<?xml version='1.0'?><Parallels_disk_image><unclosed>", "not well-formed"),
    "entity_bomb": ("<?xml version='1.0'?>\n<!DOCTYPE p [<!ENTITY a \"aaaaaaaaaa\">"
                    + "".join("<!ENTITY %s \"%s\">" % (chr(98 + i), ("&%s;" % chr(97 + i)) * 10)
                              for i in range(9))
                    + "]>\n<Parallels_disk_image><Disk_Parameters><Disk_size>&j;"
                    "</Disk_size></Disk_Parameters></Parallels_disk_image>",
                    "DiskDescriptor.xml"),
    "too_big": ("<?xml version='1.0'?><Parallels_disk_image>" + " " * (1 << 20) +
                "</Parallels_disk_image>", "larger than"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_descriptor(tmp_path, kind):
    """Each hostile descriptor: exit 1 with a clear message, within the
    memory and CPU limits."""
    text, msg = HOSTILE[kind]
    (tmp_path / "x.hds").write_bytes(bytes(8 * 512))
    (tmp_path / "DiskDescriptor.xml").write_text(text)
    args = [VDISK_IMG, "convert", "-f", "parallels", "-O", "raw", "DiskDescriptor.xml", "o.raw"]
    if PRLIMIT and not SANITIZED:
        args = [PRLIMIT, "--as=%d" % (1 << 30), "--cpu=20", "--"] + args
    p = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert msg in p.stderr, p.stderr
