# SPDX-License-Identifier: BSD-3-Clause
"""vdisk-pool against libvirt 9.0: the same pool XML and the same verbs given
to virsh (on a private session libvirtd) and to vdisk-pool give the same
output, messages and exit codes, and the same volumes on disk."""
import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from pool_helpers import peer, mask, mask_pool_sizes, VDISK_POOL  # noqa: F401


def mask_alloc(text):
    """Bytes a file takes on the host: the layout of metadata writes decides
    them (vol-info, vol-dumpxml), not the format."""
    text = re.sub(r"<allocation unit='bytes'>\d+</", "<allocation unit='bytes'>N</", text)
    return re.sub(r"^Allocation:( +).*$", r"Allocation:\1N", text, flags=re.M)

# Under the sanitizers, fewer repetitions of the same code paths.
SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))

POOL_XML = """<pool type="dir">
  <name>{name}</name>
  <target>
    <path>{path}</path>
  </target>
</pool>
"""


class Pair:
    """One pool defined on both sides, under DIR/l (virsh) and DIR/v."""

    def __init__(self, peer, name):
        self.peer, self.name = peer, name
        self.dir = peer.scratch()
        self.lp, self.vp = os.path.join(self.dir, "l"), os.path.join(self.dir, "v")

    def both(self, *args, sizes=False, alloc=False):
        """Run args on both sides; return (virsh, vdisk-pool) masked results."""
        out = []
        for side, fn, root in (("l", self.peer.virsh, self.lp),
                               ("v", self.peer.vpool, self.vp)):
            a = [x.replace("@", root) if isinstance(x, str) else x for x in args]
            p = fn(*a)
            o, e = mask(p.stdout, (root, "@")), mask(p.stderr, (root, "@"))
            if sizes:
                o = mask_pool_sizes(o)
            if alloc:
                o = mask_alloc(o)
            out.append((p.returncode, o, e))
        return out

    def same(self, *args, sizes=False, alloc=False):
        l, v = self.both(*args, sizes=sizes, alloc=alloc)
        assert v == l, "%s\nvirsh: %r\nvdisk: %r" % (args, l, v)
        return l

    def xml(self, name, text):
        for root in (self.lp, self.vp):
            self.peer.write(os.path.join(root, name), text.replace("@", root))

    def cleanup(self):
        for fn in (self.peer.virsh, self.peer.vpool):
            fn("pool-destroy", self.name)
            fn("pool-undefine", self.name)


@pytest.fixture
def pair(peer, request):
    p = Pair(peer, "p" + request.node.name.split("[")[0][-10:].replace("_", ""))
    p.xml("pool.xml", POOL_XML.format(name=p.name, path="@/pool"))
    yield p
    p.cleanup()


def details_cells(res):
    """pool-list --details as cells, the sizes of running pools (the host
    file system's, which also set the column widths) left out."""
    rc, out, err = res
    lines = out.split("\n")
    rows = [re.split(r" {3,}", x.strip()) for x in lines[2:] if x.strip()]
    return rc, err, lines[0].split(), [r[:4] if r[1] == "running" else r for r in rows]


def started(pair):
    pair.same("pool-define", "@/pool.xml")
    pair.same("pool-build", pair.name)
    pair.same("pool-start", pair.name)


def qinfo(path):
    p = subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                       capture_output=True, text=True, check=True)
    j = json.loads(p.stdout)
    for k in ("filename", "actual-size", "dirty-flag"):
        j.pop(k, None)
    data = j.get("format-specific", {}).get("data", {})
    data.pop("cid", None)                      # vmdk: random
    for e in data.get("extents", []):
        e.pop("filename", None)
    if "backing-filename" in j:
        j["backing-filename"] = os.path.basename(j["backing-filename"])
        j.pop("full-backing-filename", None)
    return j


def test_pool_lifecycle(pair):
    n = pair.name
    pair.same("pool-define", "@/pool.xml")
    pair.same("pool-list", "--all")
    pair.same("pool-list", "--all", "--details")
    pair.same("pool-list", "--inactive", "--name")
    pair.same("pool-info", n)
    pair.same("pool-dumpxml", n)
    pair.same("pool-start", n)              # the directory is missing
    pair.same("pool-build", n)
    pair.same("pool-start", n)
    pair.same("pool-start", n)              # already active
    pair.same("pool-info", n, sizes=True)
    pair.same("pool-info", "--bytes", n, sizes=True)
    pair.same("pool-dumpxml", n, sizes=True)
    pair.same("pool-list", "--name")
    l, v = pair.both("pool-list", "--details", "--all")
    assert details_cells(v) == details_cells(l)
    pair.same("pool-list", "--persistent", "--type", "dir")
    pair.same("pool-list", "--transient", "--all")
    pair.same("pool-define", "@/pool.xml")         # same name, no uuid
    pair.same("pool-create", "@/pool.xml")
    pair.same("pool-define-as", n, "dir", "--target", "@/pool")
    pair.same("pool-autostart", n)
    pair.same("pool-list", "--autostart")
    pair.same("pool-info", n, sizes=True)
    pair.same("pool-autostart", n, "--disable")
    pair.same("pool-refresh", n)
    pair.same("pool-undefine", n)
    pair.same("pool-destroy", n)
    pair.same("pool-destroy", n)
    pair.same("pool-delete", n)
    pair.same("pool-undefine", n)
    pair.same("pool-info", n)


def test_pool_define_as_create_as(pair):
    n = pair.name
    pair.same("pool-define-as", n, "dir", "--target", "@/pool")
    pair.same("pool-list", "--all", "--details")
    pair.same("pool-undefine", n)
    pair.same("pool-create-as", n, "dir", "--target", "@/pool")
    pair.same("pool-create-as", n, "dir", "--target", "@/pool", "--build")
    pair.same("pool-info", n, sizes=True)
    pair.same("pool-autostart", n)
    pair.same("pool-destroy", n)


@pytest.mark.parametrize("xml", [
    "<pool><name>a</name></pool>",
    "<pool type='foo'><name>a</name></pool>",
    "<pool type='dir'><target><path>/x</path></target></pool>",
    "<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>",
    "<pool type='dir'><name>a</name><uuid>zz</uuid><target><path>/x</path></target></pool>",
    "<pool type='dir'><name>a</name></pool>",
    "<pool type='fs'><name>a</name><target><path>/x</path></target></pool>",
    "<foo/>",
    "<volume><name>v</name></volume>",
    "<pool",
    "<pool type='dir'><name>a</name>",
    "<pool type='dir'>\n  <name>a</nam>\n</pool>",
    "",
])
def test_pool_bad_xml(pair, xml):
    pair.xml("bad.xml", xml)
    pair.same("pool-define", "@/bad.xml")


def test_pool_xml_permissions(pair):
    pair.xml("perm.xml", POOL_XML.format(name=pair.name, path="@/pool//").replace(
        "</path>", "</path><permissions><mode>0755</mode></permissions>"))
    pair.same("pool-define", "@/perm.xml")
    pair.same("pool-dumpxml", pair.name)
    pair.same("pool-build", pair.name)
    pair.same("pool-start", pair.name)
    pair.same("pool-dumpxml", pair.name, sizes=True)


VOLS = [
    ("a.raw", ["10M"]),
    ("s.raw", ["3M", "--allocation", "0"]),
    ("b.qcow2", ["1G", "--format", "qcow2", "--allocation", "0"]),
    ("c.qcow2", ["1G", "--format", "qcow2", "--backing-vol", "b.qcow2",
                 "--backing-vol-format", "qcow2"]),
    ("k.vmdk", ["32M", "--format", "vmdk"]),
    ("q.qed", ["64M", "--format", "qed"]),      # after the table: allocation differs
]


def test_vol_create_as_and_queries(pair):
    n = pair.name
    started(pair)
    for name, args in VOLS[:-1]:
        pair.same("vol-create-as", n, name, *args)
    pair.same("vol-list", n)
    pair.same("vol-list", n, "--details")
    pair.same("vol-create-as", n, VOLS[-1][0], *VOLS[-1][1])
    pair.same("vol-list", n)
    for refreshed in ((True,) if SANITIZED else (False, True)):
        if refreshed:
            pair.same("pool-refresh", n)
        for name, _ in VOLS:
            pair.same("vol-dumpxml", "--pool", n, name, alloc=True)
    for name, _ in VOLS:
        pair.same("vol-info", "--pool", n, name, "--bytes", alloc=True)
        assert qinfo(os.path.join(pair.vp, "pool", name)) == \
            qinfo(os.path.join(pair.lp, "pool", name))
    for name, _ in VOLS[:2]:
        pair.same("vol-info", "--pool", n, name)
        pair.same("vol-path", "--pool", n, name)
        pair.same("vol-key", "--pool", n, name)
        pair.same("vol-name", "@/pool/" + name)
        pair.same("vol-pool", "@/pool/" + name)
    pair.same("vol-info", "--pool", n, "nonexist")
    pair.same("vol-info", "@/pool/nonexist")


def test_vol_prealloc_metadata(pair):
    started(pair)
    pair.same("vol-create-as", pair.name, "m.qcow2", "20M", "--format", "qcow2",
              "--prealloc-metadata")
    assert qinfo(os.path.join(pair.vp, "pool", "m.qcow2")) == \
        qinfo(os.path.join(pair.lp, "pool", "m.qcow2"))


def test_vol_create_errors(pair):
    started(pair)
    pair.same("vol-create-as", pair.name, "a.raw", "1M")
    for args in (["x/y", "1M"], ["..", "1M"], ["a.raw", "1M"], ["z", "10Q"], ["z", "-5"],
                 ["z", "1M", "--allocation", "5Q"], ["z", "1M", "--format", "bogus"]):
        pair.same("vol-create-as", pair.name, *args)
    pair.same("vol-list", pair.name)


def test_vol_inactive_pool(pair):
    pair.same("pool-define", "@/pool.xml")
    pair.same("vol-create-as", pair.name, "a", "1M")
    pair.same("vol-list", pair.name)
    pair.same("pool-info", "nope")


def test_vol_create_xml(pair):
    started(pair)
    pair.xml("v.xml", "<volume><name>v3</name><capacity unit='M'>1</capacity>"
             "<allocation>0</allocation><target><format type='qcow2'/>"
             "<features><lazy_refcounts/></features><compat>1.1</compat></target></volume>")
    pair.same("vol-create", pair.name, "@/v.xml")
    pair.same("vol-dumpxml", "--pool", pair.name, "v3")
    assert qinfo(os.path.join(pair.vp, "pool", "v3")) == \
        qinfo(os.path.join(pair.lp, "pool", "v3"))


def test_vol_create_from(pair):
    n = pair.name
    started(pair)
    pair.same("vol-create-as", n, "src.qcow2", "8M", "--format", "qcow2")
    pair.xml("raw.xml", "<volume><name>dst.raw</name><capacity>0</capacity>"
             "<target><format type='raw'/></target></volume>")
    pair.xml("q.xml", "<volume><name>dst.qcow2</name><capacity unit='M'>16</capacity>"
             "<target><format type='qcow2'/></target></volume>")
    pair.same("vol-create-from", n, "@/raw.xml", "src.qcow2")   # no --inputpool
    pair.same("vol-create-from", n, "@/raw.xml", "src.qcow2", "--inputpool", n)
    pair.same("vol-create-from", n, "@/q.xml", "src.qcow2", "--inputpool", n)
    pair.same("vol-create-from", n, "@/q.xml", "src.qcow2", "--inputpool", n)
    for v in ("dst.raw", "dst.qcow2"):
        pair.same("vol-info", "--pool", n, v, "--bytes", alloc=True)
        assert qinfo(os.path.join(pair.vp, "pool", v)) == \
            qinfo(os.path.join(pair.lp, "pool", v))


def alloc_class(res):
    """vol-info --bytes as how much of the capacity is allocated: 'full',
    'sparse' (some) or 'none', and the allocation in whole MiB."""
    rc, out, _ = res
    assert rc == 0, res
    cap = int(re.search(r"^Capacity: +(\d+) bytes", out, re.M).group(1))
    alloc = int(re.search(r"^Allocation: +(\d+) bytes", out, re.M).group(1))
    return ("full" if alloc >= cap else "sparse" if alloc else "none"), alloc >> 20


def test_raw_copies_allocated_as_libvirt(pair):
    """Raw copies of raw volumes: libvirt preallocates the new file when
    its allocation (a clone: the source's; vol-create-from: the XML's,
    else the capacity) is at least the source's capacity, and copies only
    the data otherwise; a qcow2 source is converted sparse.  Compared as
    each tool's volume reports it on the same file system."""
    n = pair.name
    started(pair)
    data = os.urandom(1 << 20)
    for root in (pair.lp, pair.vp):
        with open(os.path.join(root, "pool", "src.raw"), "wb") as f:
            f.write(data)
            f.truncate(8 << 20)
        with open(os.path.join(root, "pool", "full.raw"), "wb") as f:
            f.write(bytes(8 << 20))
        for v in ("src.raw", "full.raw"):
            os.chown(os.path.join(root, "pool", v), 65534, 65534)
    pair.same("pool-refresh", n)
    pair.xml("q.xml", "<volume><name>src.qcow2</name><capacity>0</capacity>"
             "<target><format type='qcow2'/></target></volume>")
    pair.same("vol-create-from", n, "@/q.xml", "src.raw", "--inputpool", n)
    xmls = {"f1": "", "f2": "<allocation>0</allocation>",
            "f3": "<allocation unit='M'>2</allocation>",
            "f4": "<allocation unit='M'>12</allocation>"}
    for name, alloc in xmls.items():
        pair.xml(name + ".xml", "<volume><name>%s.raw</name><capacity unit='M'>%d</capacity>"
                 "%s</volume>" % (name, 16 if name == "f4" else 1, alloc))
    pair.same("vol-clone", "--pool", n, "src.raw", "c1.raw")
    pair.same("vol-clone", "--pool", n, "full.raw", "c2.raw")
    for name in xmls:
        pair.same("vol-create-from", n, "@/%s.xml" % name, "src.raw", "--inputpool", n)
    pair.xml("f5.xml", "<volume><name>f5.raw</name><capacity>0</capacity></volume>")
    pair.same("vol-create-from", n, "@/f5.xml", "src.qcow2", "--inputpool", n)
    got = {}
    for v in ("c1", "c2", "f1", "f2", "f3", "f4", "f5"):
        l, r = pair.both("vol-info", "--pool", n, v + ".raw", "--bytes")
        got[v] = alloc_class(l)
        assert alloc_class(r) == got[v], v
        with open(os.path.join(pair.vp, "pool", v + ".raw"), "rb") as f:
            assert f.read(1 << 20) == (data if v != "c2" else bytes(1 << 20))
    # what libvirt did: sparse clones of sparse files, the rest allocated
    assert [got[v][0] for v in ("c1", "c2", "f1", "f2", "f3", "f4", "f5")] == [
        "sparse", "full", "full", "sparse", "sparse", "sparse", "sparse"]
    assert got["f4"][1] >= 12


def test_vol_bad_xml(pair):
    started(pair)
    for i, xml in enumerate([
            "<volume><capacity>1</capacity></volume>",
            "<volume><name>v</name></volume>",
            "<volume><name>v</name><capacity unit='Q'>1</capacity></volume>",
            "<volume><name>v</name><capacity>-1</capacity></volume>",
            "<volume><name>v</name><capacity>abc</capacity></volume>",
            "<volume><name>v</name><capacity>1</capacity><target><format type='bogus'/>"
            "</target></volume>",
            "<volume><name>v</name><capacity>1",
            "<pool/>",
            "<volume><name>v</name><capacity>1</capacity><target><permissions><mode>999"
            "</mode></permissions></target></volume>"]):
        pair.xml("v%d.xml" % i, xml + "\n")
        pair.same("vol-create", pair.name, "@/v%d.xml" % i)
    pair.same("vol-list", pair.name)


def test_vol_clone_delete_wipe(pair):
    n = pair.name
    started(pair)
    pair.same("vol-create-as", n, "b.qcow2", "64M", "--format", "qcow2")
    pair.same("vol-create-as", n, "r.raw", "4M")
    pair.same("vol-clone", "--pool", n, "b.qcow2", "e.qcow2")
    pair.same("vol-clone", "--pool", n, "b.qcow2", "e.qcow2")
    pair.same("vol-info", "--pool", n, "e.qcow2", "--bytes")
    assert qinfo(os.path.join(pair.vp, "pool", "e.qcow2")) == \
        qinfo(os.path.join(pair.lp, "pool", "e.qcow2"))
    pair.same("vol-wipe", "--pool", n, "r.raw")
    pair.same("vol-wipe", "--pool", n, "r.raw", "--algorithm", "foo")
    pair.same("vol-wipe", "--pool", n, "r.raw", "--algorithm", "zero")
    if not shutil.which("scrub"):
        pair.same("vol-wipe", "--pool", n, "r.raw", "--algorithm", "nnsa")
    pair.same("vol-wipe", "--pool", n, "nope")
    pair.same("vol-delete", "--pool", n, "e.qcow2")
    pair.same("vol-delete", "--pool", n, "e.qcow2")
    pair.same("vol-create-as", n, "w.qcow2", "10M", "--format", "qcow2")
    pair.same("vol-create-as", n, "s.raw", "10M", "--allocation", "0")
    for v in ("w.qcow2", "s.raw"):
        pair.same("vol-wipe", "--pool", n, v)
        pair.same("vol-info", "--pool", n, v, "--bytes")
    for root in (pair.lp, pair.vp):
        os.mkdir(os.path.join(root, "pool", "sub"))
        os.chown(os.path.join(root, "pool", "sub"), 65534, 65534)
    pair.same("pool-refresh", n)
    pair.same("vol-list", n, "--details")
    pair.same("vol-dumpxml", "--pool", n, "sub")
    pair.same("vol-delete", "--pool", n, "sub")
    pair.same("vol-list", n, "--details")


# (arguments, the volumes to try them on: sparse raw, full raw, qcow2)
RESIZES = [
    (["20M"], "aq"), (["5M"], "afq"), (["5M", "--shrink"], "afq"), (["--delta", "1M"], "aq"),
    (["--", "-1"], "a"), (["--shrink", "--", "-1K"], "a"), (["10Q"], "a"),
    (["30M", "--allocate"], "aq"),
]


def test_vol_resize(pair):
    started(pair)
    kinds = {"a": ("a%d.raw", ["--allocation", "0"]), "f": ("f%d.raw", []),
             "q": ("q%d.qcow2", ["--format", "qcow2"])}
    for i, (args, which) in enumerate(RESIZES[::2] if SANITIZED else RESIZES):
        for v, extra in (kinds[k] for k in which):
            v = v % i
            pair.same("vol-create-as", pair.name, v, "10M", *extra)
            pair.same("vol-resize", "--pool", pair.name, v, *args)
            pair.same("vol-info", "--pool", pair.name, v, "--bytes",
                      alloc=v.endswith("qcow2"))


def _sparse_file(path, data):
    with open(path, "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(data)
        f.seek((2 << 20) + 100)
        f.write(b"tail" * 1000)
    os.chmod(path, 0o644)


@pytest.mark.parametrize("opts", [[], ["--sparse"], ["--offset", "4096", "--length", "1048576"], ["--length", "1M"]])
def test_vol_upload_download(pair, opts):
    n = pair.name
    started(pair)
    pair.same("vol-create-as", n, "u.raw", "4M", "--allocation", "0")
    data = os.urandom(65536)
    for root in (pair.lp, pair.vp):
        _sparse_file(os.path.join(root, "in.bin"), data)
    pair.same("vol-upload", "--pool", n, "u.raw", "@/in.bin", *opts)
    pair.same("vol-download", "--pool", n, "u.raw", "@/out.bin", *opts)
    pair.same("vol-upload", "--pool", n, "u.raw", "@/nonexist")
    for f in ("pool/u.raw", "out.bin"):
        exists = [os.path.exists(os.path.join(r, f)) for r in (pair.lp, pair.vp)]
        assert exists[0] == exists[1], f
        if not exists[0]:
            continue
        with open(os.path.join(pair.lp, f), "rb") as a, \
                open(os.path.join(pair.vp, f), "rb") as b:
            assert a.read() == b.read(), f


def test_xml_validates(pair, peer):
    started(pair)
    pair.same("vol-create-as", pair.name, "c.qcow2", "1M", "--format", "qcow2")
    for what, args in (("pool", ["pool-dumpxml", pair.name]),
                       ("vol", ["vol-dumpxml", "--pool", pair.name, "c.qcow2"])):
        p = peer.vpool(*args)
        path = os.path.join(pair.vp, what + "-out.xml")
        with open(path, "w") as f:
            f.write(p.stdout)
        r = subprocess.run(["virt-xml-validate", path, "storage" + what],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    for f in os.listdir(peer.d("vcfg")):
        if f.endswith(".xml"):
            r = subprocess.run(["virt-xml-validate", peer.d("vcfg", f), "storagepool"],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr


def test_find_sources(pair):
    pair.same("find-storage-pool-sources", "dir")
    pair.same("find-storage-pool-sources-as", "dir")


def test_cli_errors(pair):
    pair.same("pool-info")
    pair.same("pool-info", "a", "b")
    pair.same("pool-info", "--bogus", "a")
    pair.same("vol-info")


def _state_env(peer, d):
    return dict(peer.venv, VDISK_POOL_CONFIG_DIR=os.path.join(d, "cfg"),
                VDISK_POOL_RUN_DIR=os.path.join(d, "run"))


def test_sigkill_leaves_state_readable(peer):
    d = peer.scratch()
    env = _state_env(peer, d)
    peer.write(os.path.join(d, "p.xml"), POOL_XML.format(name="k", path=d + "/k"))
    steps = [["pool-define", d + "/p.xml"], ["pool-build", "k"], ["pool-start", "k"],
             ["pool-autostart", "k"], ["pool-destroy", "k"], ["pool-undefine", "k"]]
    # Kill each step at a different point (after 0.5 ms, 1 ms, ...), or not.
    for i in range(8):
        for s in steps:
            p = subprocess.Popen(peer.prefix() + [VDISK_POOL] + s, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if i % 4:
                try:
                    p.wait(timeout=0.0005 * i)
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGKILL)
            p.wait()
            r = peer.vpool("pool-list", "--all", env=env)
            assert r.returncode == 0 and r.stderr == "", r.stderr
    peer.vpool("pool-destroy", "nonexist", env=env)     # takes the lock: tidies
    for sub in ("cfg", "run"):
        for f in os.listdir(os.path.join(d, sub)):
            assert ".tmp" not in f, f
            if f.endswith(".xml"):
                r = subprocess.run(["virt-xml-validate", os.path.join(d, sub, f),
                                    "storagepool"], capture_output=True, text=True)
                assert r.returncode == 0, r.stdout + r.stderr


def test_two_processes_race(peer):
    d = peer.scratch()
    env = _state_env(peer, d)
    peer.write(os.path.join(d, "p.xml"), POOL_XML.format(name="r", path=d + "/r"))
    assert peer.vpool("pool-define", d + "/p.xml", env=env).returncode == 0
    assert peer.vpool("pool-build", "r", env=env).returncode == 0
    procs = [subprocess.Popen(peer.prefix() + [VDISK_POOL, "pool-start", "r"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    res = [p.communicate() + (p.returncode,) for p in procs]
    assert sum(1 for r in res if r[2] == 0) == 1, res
    procs = [subprocess.Popen(peer.prefix() + [VDISK_POOL, "vol-create-as", "r", "v",
                                                "1M"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    res = [p.communicate() + (p.returncode,) for p in procs]
    assert sum(1 for r in res if r[2] == 0) == 1, res
    assert all("exists already" in r[1] for r in res if r[2]), res
    out = peer.vpool("vol-list", "r", env=env).stdout
    assert out.count(" v ") == 1, out
