# SPDX-License-Identifier: BSD-3-Clause
"""Helpers of the commit and rebase tests: build the same backing chain
twice (once for qemu-img, once for vdisk-img), run the same command on each
and compare what they print and the images they leave."""
import hashlib
import json
import os
import re
import shutil
import subprocess

from conftest import QEMU_IMG, VDISK_IMG, qimg, run, same_output

QEMU_IO = shutil.which("qemu-io")
MB = 1 << 20


def qio(img, *cmds, fmt=None, cwd=None):
    """Run qemu-io commands on img."""
    args = [QEMU_IO]
    if fmt:
        args += ["-f", fmt]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run(args + [str(img)], capture_output=True, text=True, cwd=cwd)
    assert p.returncode == 0, p.stderr


def layers(spec):
    """The (name, fmt, size, backing, cmds) of each layer of spec; a layer
    may carry a sixth element, its create options."""
    return [tuple(l[:5]) for l in spec]


def make_chain(d, spec):
    """Create images in directory d from spec: a list of
    (name, fmt, size, backing name or None, [qemu-io commands]
    [, create options])."""
    os.makedirs(d, exist_ok=True)
    for layer in spec:
        name, fmt, size, backing, cmds = layer[:5]
        args = ["create", "-q", "-f", fmt]
        if len(layer) > 5 and layer[5]:
            args += ["-o", layer[5]]
        if backing:
            bfmt = [f for n, f, _, _, _ in layers(spec) if n == backing][0]
            args += ["-b", backing, "-F", bfmt]
        p = subprocess.run([QEMU_IMG] + args + [name, str(size)], capture_output=True,
                           text=True, cwd=d)
        assert p.returncode == 0, p.stderr
        if cmds:
            qio(name, *cmds, fmt=fmt, cwd=d)


def copy_extents(src, dst):
    """Copy file src to dst with the same data extents and holes (a copy
    that images made by a program cannot be told from: qemu-img map asks
    the file system where the holes are)."""
    size = os.path.getsize(src)
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.truncate(size)
        for start, end in data_extents(f.fileno(), size):
            f.seek(start)
            g.seek(start)
            left = end - start
            while left:
                b = f.read(min(left, 1 << 20))
                g.write(b)
                left -= len(b)


def data_extents(fd, size):
    """The (start, end) of each data extent of open file fd."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def identical(a, b):
    """Are files a and b the same bytes with the same holes?"""
    size = os.path.getsize(a)
    if size != os.path.getsize(b):
        return False
    with open(a, "rb") as f, open(b, "rb") as g:
        ext = data_extents(f.fileno(), size)
        if ext != data_extents(g.fileno(), size):
            return False
        for start, end in ext:
            f.seek(start)
            g.seek(start)
            left = end - start
            while left:
                n = min(left, 1 << 20)
                if f.read(n) != g.read(n):
                    return False
                left -= n
    return True


def template(tmp_path, kind, key, make):
    """A folder made once per worker by make(folder) for (kind, key), kept
    beside tmp_path: the folder's path."""
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    tmpl = os.path.join(os.path.dirname(str(tmp_path)), kind + "-templates", digest)
    if not os.path.isdir(tmpl):
        part = tmpl + ".part%d" % os.getpid()
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        make(part)
        os.rename(part, tmpl)
    return tmpl


def copy_folder(src, dst):
    """Copy the files of folder src into folder dst, hole for hole."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        copy_extents(os.path.join(src, name), os.path.join(dst, name))


def build_chain(tmp_path, d, spec):
    """make_chain(d, spec), the chain built once per spec and worker and
    copied (many tests run their commands on the same few chains).  Specs
    naming absolute backing paths or subfolders are built in place."""
    if any(l[3] and os.path.isabs(l[3]) for l in spec) or any("/" in l[0] for l in spec):
        make_chain(d, spec)
        return
    copy_folder(template(tmp_path, "chain", spec, lambda t: make_chain(t, spec)), d)


def run_both(tmp_path, spec, args, cwd_sub=None):
    """Build spec in tmp/q and tmp/v, run qemu-img args in q and vdisk-img
    args in v; returns (qemu result, vdisk result, q dir, v dir)."""
    res = []
    for side, prog in (("q", QEMU_IMG), ("v", VDISK_IMG)):
        d = str(tmp_path / side)
        build_chain(tmp_path, d, spec)
        cwd = os.path.join(d, cwd_sub) if cwd_sub else d
        os.makedirs(cwd, exist_ok=True)
        res.append(subprocess.run([prog] + [str(a) for a in args], capture_output=True,
                                  text=True, cwd=cwd, timeout=300))
    return res[0], res[1], str(tmp_path / "q"), str(tmp_path / "v")


def same_messages(q, v):
    """Same stdout, stderr (up to the program name) and exit code."""
    assert same_output(v.stdout, q.stdout), (q.stdout, v.stdout)
    assert same_output(v.stderr, q.stderr), (q.stderr, v.stderr)
    assert v.returncode == q.returncode, (q.returncode, v.returncode)


def chain_info(d, top):
    """info --backing-chain of top, without the host-dependent disk size."""
    p = subprocess.run([QEMU_IMG, "info", "--backing-chain", top], capture_output=True,
                       text=True, cwd=d)
    assert p.returncode == 0, p.stderr
    return re.sub(r"(?m)^disk size: .*\n", "", p.stdout)


def alone(path, fmt):
    """A json: name opening path without its backing file."""
    return 'json:{"driver": "%s", "backing": null, "file": {"driver": "file", ' \
           '"filename": "%s"}}' % (fmt, path)


def opens(path):
    """Does the image open with its backing chain?"""
    return qimg("info", "--backing-chain", path).returncode == 0


def allocation(path, fmt):
    """qemu-img map of path without host offsets (layouts may differ)."""
    if fmt == "raw":
        p = qimg("map", "--output=json", "-f", fmt, path)
    else:
        p = qimg("map", "--output=json", path if opens(path) else alone(path, fmt))
    assert p.returncode == 0, p.stderr
    out = []
    for e in json.loads(p.stdout):
        e.pop("offset", None)
        if out and all(out[-1][k] == e[k] for k in e if k not in ("start", "length")):
            out[-1]["length"] += e["length"]
        else:
            out.append(e)
    return out


def same_images(qd, vd, spec, top=None):
    """Every image of spec: identical content (read alone, as a raw file
    reads for raw), qemu-img check clean; info --backing-chain of top equal.
    A layer that is the same file in both (bytes and holes), as is every
    layer before it (its backing files are among them), reads, checks and
    maps as its twin does: qemu-img's reports of it are not asked for."""
    same_so_far = True
    for name, fmt, _, _, _ in layers(spec):
        qf, vf = os.path.join(qd, name), os.path.join(vd, name)
        same_so_far = same_so_far and os.path.exists(qf) and os.path.exists(vf) \
            and identical(qf, vf)
        if same_so_far:
            continue
        if fmt == "raw" or (opens(qf) and opens(vf)):
            p = qimg("compare", "-f", fmt, "-F", fmt, qf, vf)
        else:
            p = qimg("compare", alone(qf, fmt), alone(vf, fmt))
        assert p.returncode == 0, (name, p.stdout, p.stderr)
        if fmt != "raw":
            p = qimg("check", vf if opens(vf) else alone(vf, fmt))
            assert p.returncode == 0, (name, p.stdout, p.stderr)
        assert allocation(qf, fmt) == allocation(vf, fmt), name
    if same_so_far:
        return
    if top and opens(os.path.join(qd, top)):
        assert chain_info(qd, top) == chain_info(vd, top)
    elif top:
        assert [qimg("info", alone(os.path.join(d, top), "qcow2")).stdout.replace(d, "")
                for d in (qd, vd)] == [qimg("info", alone(os.path.join(qd, top), "qcow2"))
                                      .stdout.replace(qd, "")] * 2
