# SPDX-License-Identifier: BSD-3-Clause
"""Encrypted qcow2 (encrypt.format=luks and the legacy aes) written and
created by vdisk against qemu-img/qemu-io 7.2: images vdisk creates and
writes read the same in qemu-img (and pass its check), images qemu-img
creates take vdisk's writes (partial clusters, zeroes, discards) exactly
as qemu-io's, every cipher/mode/ivgen/hash family qemu-img accepts,
create and measure refusals with qemu-img's messages (and no file left),
measure's numbers, info (human and JSON, the keyslot details aside) and
the layout (the LUKS header's clusters) as qemu-img's.  PBKDF2 runs with
iter-time=10; qemu-img's own LUKS creates retry its "Unable to get
accurate CPU usage" failure only."""
import json
import os
import re
import shutil

import pytest

from conftest import BUILD, qimg, qimg_retry, run, vimg

QEMU_IO = shutil.which("qemu-io")
VDISK_IO = os.path.join(BUILD, "tests", "helpers", "vdisk-io")
SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))
PASS = "s3cret pass"
SECRET = "secret,id=sec0,data=" + PASS
OBJ = ["--object", SECRET]
LUKS = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
AES = "encrypt.format=aes,encrypt.key-secret=sec0"
M = 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    pass


def iopts(path, sec="sec0"):
    return "driver=qcow2,encrypt.key-secret=%s,file.filename=%s" % (sec, path)


def ijson(path):
    return "json:" + json.dumps({"driver": "qcow2", "encrypt.key-secret": "sec0",
                                 "file": {"driver": "file", "filename": str(path)}})


def read_raw(tool, img, out):
    p = tool("convert", *OBJ, "--image-opts", iopts(img), "-O", "raw", out)
    assert p.returncode == 0, p.stderr
    return out.read_bytes()


def qcheck(img):
    p = qimg("check", *OBJ, "--image-opts", iopts(img))
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def mixed_raw(path, size=2 * M + 3 * 512):
    """Random data with zero clusters between, and a tail of part of a cluster."""
    data = bytearray(os.urandom(size))
    for off in range(65536, size, 3 * 65536):
        data[off:off + 65536] = bytes(len(data[off:off + 65536]))
    path.write_bytes(bytes(data))
    return bytes(data)


def norm_info(text):
    """Info without what differs between two LUKS creates (uuid, PBKDF2
    iteration counts) or depends on the file system (disk size)."""
    out = []
    for line in text.splitlines():
        for key in ("uuid", "iters", "actual-size", "disk size"):
            if key in line:
                line = line[:line.index(key) + len(key)] + " X"
        out.append(line)
    return "\n".join(out)


def same_info(v, q):
    vo, qo = norm_info(v.stdout), norm_info(q.stdout)
    assert vo == qo.replace("qemu-img", "vdisk-img"), (vo, qo)


# ---- vdisk creates and writes, qemu-img reads ----

COMBOS = [
    LUKS,
    LUKS + ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
           "encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1",
    LUKS + ",encrypt.cipher-alg=serpent-256,encrypt.cipher-mode=xts,encrypt.hash-alg=sha512",
    LUKS + ",encrypt.cipher-alg=twofish-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain",
    LUKS + ",encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=cbc,encrypt.hash-alg=md5",
    LUKS + ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=ctr,encrypt.hash-alg=sha224",
    LUKS + ",encrypt.cipher-alg=serpent-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
           "encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=ripemd160",
    LUKS + ",encrypt.cipher-alg=aes-192,encrypt.cipher-mode=xts",
    LUKS + ",encrypt.cipher-alg=twofish-192,encrypt.cipher-mode=cbc",
    LUKS + ",cluster_size=4k,compat=0.10",
    LUKS + ",cluster_size=2M,lazy_refcounts=on,encrypt.hash-alg=sha384",
    LUKS + ",extended_l2=on,cluster_size=128k",
    AES,
    "encryption=on,encrypt.key-secret=sec0,cluster_size=512",
]
if SANITIZED:
    COMBOS = COMBOS[:3] + COMBOS[-2:]


@pytest.mark.parametrize("opts", COMBOS)
def test_vdisk_made_reads_in_qemu(tmp_path, opts):
    raw = tmp_path / "in.raw"
    data = mixed_raw(raw)
    img = tmp_path / "v.qcow2"
    p = vimg("convert", *OBJ, "-O", "qcow2", "-o", opts, raw, img)
    assert p.returncode == 0, p.stderr
    assert read_raw(vimg, img, tmp_path / "v.raw") == data
    if "-192" in opts and "xts" not in opts:
        return          # qemu-img 7.2 aborts on 24-byte keys
    assert read_raw(qimg, img, tmp_path / "q.raw") == data
    qcheck(img)
    for fmt in ("human", "json"):
        same_info(vimg("info", "--output=" + fmt, img), qimg("info", "--output=" + fmt, img))
        a = ["map", "--output=" + fmt, *OBJ, "--image-opts", iopts(img)]
        v, q = vimg(*a), qimg(*a)
        assert (v.returncode, v.stdout) == (q.returncode, q.stdout)


def same_layout(v, q):
    """The same create makes the same layout: header, tables, the LUKS
    header's clusters (named by the same extension) and the same check."""
    assert qcheck(v) == qcheck(q)
    vb, qb = v.read_bytes(), q.read_bytes()
    assert len(vb) == len(qb)
    assert vb[:32] == qb[:32] and vb[32:36] == qb[32:36]
    hv = vimg("info", "--output=json", v).stdout.replace(str(v), "X")
    hq = qimg("info", "--output=json", q).stdout.replace(str(q), "X")
    assert norm_info(hv) == norm_info(hq)


@pytest.mark.parametrize("opts", [AES, "encryption=on,encrypt.key-secret=sec0,compat=0.10"])
def test_layout_as_qemu(tmp_path, opts):
    v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    assert vimg("create", "-q", "-f", "qcow2", *OBJ, "-o", opts, v, "3M").returncode == 0
    assert qimg_retry("create", "-q", "-f", "qcow2", *OBJ, "-o", opts, q, "3M").returncode == 0
    same_layout(v, q)


# ---- qemu-img creates, vdisk writes ----

WRITES = [
    ("write", 0x5a, 1000, 3000), ("write", 0x11, 200000, 70000), ("zero", 65536, 65536),
    ("write", 0x22, 600000, 100), ("discard", 131072, 65536), ("write", 0x33, 900001, 5),
    ("write", 0x44, 3 * M - 512, 512), ("zero", 2 * M + 1000, 300000),
    ("write", 0x55, 1 * M, 2 * 65536),
]


def qio_cmd(w):
    if w[0] == "write":
        return "write -P %d %d %d" % w[1:]
    if w[0] == "zero":
        return "write -z %d %d" % w[1:]
    return "discard %d %d" % w[1:]


def vio_cmd(w):
    return [w[0]] + ["%d" % x for x in w[1:]]


WRITE_CASES = [("qemu", LUKS + ",compat=0.10,cluster_size=32k", False), ("vdisk", AES, False), ("vdisk", LUKS, True),
               ("vdisk", AES, True), ("vdisk", LUKS + ",extended_l2=on", False),
               ("vdisk", LUKS + ",extended_l2=on", True),
               ("vdisk", LUKS + ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,"
                         "encrypt.ivgen-alg=essiv", True)]


@pytest.mark.parametrize("maker,opts,backing", WRITE_CASES)
def test_writes_as_qemu_io(tmp_path, maker, opts, backing):
    """The same writes by vdisk and qemu-io on copies of one image (made by
    qemu-img or vdisk; with a plain backing file or none) read back the
    same in both tools, map the same and pass qemu-img check.  (qemu-img's
    LUKS creates take seconds of PBKDF2 timing here: one case.)"""
    q = tmp_path / "q.qcow2"
    args = ["create", "-q", "-f", "qcow2", *OBJ, "-o", opts]
    if backing:
        base = tmp_path / "base.raw"
        mixed_raw(base, 3 * M)
        args += ["-b", base, "-F", "raw"]
    p = (qimg_retry if maker == "qemu" else vimg)(*args, q, "3M")
    assert p.returncode == 0, p.stderr
    if maker == "qemu":
        v = tmp_path / "layout.qcow2"
        assert vimg(*args, v, "3M").returncode == 0
        same_layout(v, q)
    # some data written by qemu first, so vdisk also writes in place
    p = run([QEMU_IO, *OBJ, "--image-opts", iopts(q), "-c", "write -P 7 0 128k",
             "-c", "write -P 8 1536k 64k"])
    assert p.returncode == 0, p.stderr
    v = tmp_path / "v.qcow2"
    shutil.copy(q, v)
    cmds = []
    for w in WRITES:
        cmds += ["--"] + vio_cmd(w)
    p = run([VDISK_IO, *OBJ, ijson(v)] + cmds[1:])
    assert p.returncode == 0, p.stderr
    qa = [QEMU_IO, *OBJ, "--image-opts", iopts(q)]
    for w in WRITES:
        qa += ["-c", qio_cmd(w)]
    p = run(qa)
    assert p.returncode == 0 and "failed" not in p.stdout, p.stdout + p.stderr
    want = read_raw(qimg, q, tmp_path / "q.raw")
    assert read_raw(qimg, v, tmp_path / "v1.raw") == want
    assert read_raw(vimg, v, tmp_path / "v2.raw") == want
    qcheck(v)
    a = ["map", "--output=json", *OBJ, "--image-opts"]
    assert vimg(*a, iopts(v)).stdout == qimg(*a, iopts(q)).stdout


def test_write_without_key_refused(tmp_path):
    img = tmp_path / "v.qcow2"
    assert vimg("create", "-q", "-f", "qcow2", *OBJ, "-o", LUKS, img, "1M").returncode == 0
    p = run([VDISK_IO, str(img), "write", "1", "0", "512"])
    assert p.returncode == 1
    assert "Parameter 'encrypt.key-secret' is required for cipher" in p.stderr
    p = run([VDISK_IO, "--object", "secret,id=sec0,data=wrong", ijson(img), "write", "1", "0",
             "512"])
    assert p.returncode == 1 and "Invalid password" in p.stderr


def test_data_file_and_resize(tmp_path):
    """An external data file holds the encrypted data (host offsets are
    guest offsets); resize grows and shrinks as in qemu-img."""
    img, data_file = tmp_path / "v.qcow2", tmp_path / "v.data"
    raw = tmp_path / "in.raw"
    data = mixed_raw(raw, M)
    p = vimg("create", "-q", "-f", "qcow2", *OBJ, "-o", LUKS + ",data_file=%s" % data_file,
             img, "1M")
    assert p.returncode == 0, p.stderr
    p = vimg("convert", "-n", *OBJ, "-f", "raw", raw, "--target-image-opts", iopts(img))
    assert p.returncode == 0, p.stderr
    assert data[:65536] not in data_file.read_bytes()
    assert read_raw(qimg, img, tmp_path / "q.raw") == data
    for size, want in (("+1M", data + bytes(M)), ("512k", data[:512 * 1024])):
        p = vimg("resize", "--shrink", *OBJ, "--image-opts", iopts(img), size)
        assert p.returncode == 0, p.stderr
        assert read_raw(qimg, img, tmp_path / "q.raw") == want
    qcheck(img)


# ---- refusals, measure ----

CREATE_ERRORS = [
    "encrypt.format=luks", "encrypt.format=aes", "encryption=on",
    "encrypt.format=luks,encrypt.key-secret=nope", "encrypt.format=foo,encrypt.key-secret=sec0",
    "encrypt.key-secret=sec0", "encrypt.cipher-alg=aes-128,encrypt.key-secret=sec0",
    "encryption=on,encrypt.format=luks,encrypt.key-secret=sec0",
    "encryption=off,encrypt.iter-time=10", "encryption=yes,encrypt.key-secret=sec0",
    "encryption=bogus", AES + ",encrypt.cipher-alg=aes-128", AES + ",encrypt.hash-alg=sha1",
    LUKS + ",encrypt.cipher-alg=foo", LUKS + ",encrypt.cipher-mode=bar",
    LUKS + ",encrypt.ivgen-alg=baz", LUKS + ",encrypt.hash-alg=sha3",
    LUKS + ",encrypt.ivgen-hash-alg=x",
    LUKS + ",encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=xts",
]


@pytest.mark.parametrize("opts", CREATE_ERRORS)
def test_create_refusals_as_qemu(tmp_path, opts):
    v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    pv = vimg("create", "-q", "-f", "qcow2", *OBJ, "-o", opts, v, "1M")
    pq = qimg_retry("create", "-q", "-f", "qcow2", *OBJ, "-o", opts, q, "1M")
    assert pv.returncode == pq.returncode == 1
    assert pv.stderr.replace(str(v), "X") == \
        pq.stderr.replace(str(q), "X").replace("qemu-img", "vdisk-img")
    assert v.exists() == q.exists()


def luks_header_bytes(opts):
    """The LUKS header and key material of a new image (LUKS1 layout:
    4 KiB, then 8 slots of 4000 stripes of the key, each 4 KiB aligned)."""
    alg = re.search(r"cipher-alg=(\w+)-(\d+)", opts)
    key = int(alg.group(2)) // 8 if alg else 32
    if "cipher-mode=" not in opts or "cipher-mode=xts" in opts:
        key *= 2
    return 4096 + 8 * ((key * 4000 + 4095) // 4096 * 4096)


@pytest.mark.parametrize("opts", [
    LUKS + ",encrypt.cipher-alg=aes-128", LUKS + ",cluster_size=4k",
    LUKS + ",encrypt.cipher-alg=serpent-128,encrypt.cipher-mode=cbc,cluster_size=2M",
    LUKS + ",encrypt.cipher-alg=twofish-192,encrypt.cipher-mode=xts,cluster_size=512",
])
@pytest.mark.parametrize("src", ["size", "raw"])
def test_measure_adds_the_luks_header(tmp_path, opts, src):
    """LUKS counts its header, in whole clusters, on top of the plain
    numbers (qemu-img's own LUKS measure times PBKDF2 for seconds: once
    below)."""
    args = ["--size", "5G"]
    if src == "raw":
        raw = tmp_path / "in.raw"
        mixed_raw(raw)
        args = [raw]
    plain = re.sub(r"encrypt\.[^,]*,?", "", opts).strip(",")
    cs = re.search(r"cluster_size=(\w+)", opts)
    cs = {"4k": 4096, "2M": 2 * M, "512": 512}[cs.group(1)] if cs else 65536
    extra = (luks_header_bytes(opts) + cs - 1) // cs * cs
    q = qimg("measure", "--output=json", "-O", "qcow2", "-o", plain or "cluster_size=64k", *args)
    v = vimg("measure", "--output=json", *OBJ, "-O", "qcow2", "-o", opts, *args)
    assert q.returncode == v.returncode == 0, (q.stderr, v.stderr)
    jq, jv = json.loads(q.stdout), json.loads(v.stdout)
    assert jv["required"] == jq["required"] + extra
    assert jv["fully-allocated"] == jq["fully-allocated"] + extra


@pytest.mark.parametrize("opts", [
    LUKS, "encrypt.format=luks", LUKS + ",encrypt.cipher-alg=foo", AES,
    LUKS + ",encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=xts",
])
def test_measure_as_qemu(tmp_path, opts):
    v = vimg("measure", *OBJ, "-O", "qcow2", "-o", opts, "--size", "5G")
    q = qimg_retry("measure", *OBJ, "-O", "qcow2", "-o", opts, "--size", "5G")
    assert (v.returncode, v.stdout) == (q.returncode, q.stdout), (v.stderr, q.stderr)
    assert v.stderr.replace("vdisk-img", "qemu-img") == q.stderr


def test_measure_encrypted_source(tmp_path):
    img = tmp_path / "v.qcow2"
    raw = tmp_path / "in.raw"
    mixed_raw(raw)
    assert vimg("convert", *OBJ, "-O", "qcow2", "-o", LUKS, raw, img).returncode == 0
    for out in ("human", "json"):
        a = ["measure", "--output=" + out, *OBJ, "-O", "qcow2", "--image-opts", iopts(img)]
        v, q = vimg(*a), qimg(*a)
        assert (v.returncode, v.stdout) == (q.returncode, q.stdout), (v.stderr, q.stderr)


def test_convert_compressed_refused_as_qemu(tmp_path):
    raw = tmp_path / "in.raw"
    mixed_raw(raw, M)
    for opts in (LUKS, AES, "encryption=on,encrypt.key-secret=sec0"):
        v, q = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
        pv = vimg("convert", "-c", *OBJ, "-O", "qcow2", "-o", opts, raw, v)
        pq = qimg_retry("convert", "-c", *OBJ, "-O", "qcow2", "-o", opts, raw, q)
        assert pv.returncode == pq.returncode == 1
        assert pv.stderr.replace("vdisk-img", "qemu-img") == pq.stderr
        assert not v.exists() and not q.exists()
    # a compressed write into an encrypted image stores the cluster
    # compressed in clear, as QEMU's does (qemu-img refuses only convert -c)
    img = tmp_path / "e.qcow2"
    assert vimg("create", "-q", "-f", "qcow2", *OBJ, "-o", LUKS, img, "1M").returncode == 0
    p = run([VDISK_IO, *OBJ, ijson(img), "compress", "0x41", "0", "65536"])
    assert p.returncode == 0, p.stderr
    p = run([QEMU_IO, *OBJ, "--image-opts", iopts(img), "-c", "write -c -P 0x42 64k 64k",
             "-c", "read -P 0x41 0 64k", "-c", "read -P 0x42 64k 64k"])
    assert p.returncode == 0 and "fail" not in p.stdout, p.stdout + p.stderr
    assert b"\x41" * 65536 not in img.read_bytes()
    assert "2/16 = 12.50% allocated, 100.00% fragmented, 100.00% compressed" in qcheck(img)
    assert read_raw(vimg, img, tmp_path / "o.raw")[:131072] == b"\x41" * 65536 + b"\x42" * 65536


# ---- amend: LUKS key slots ----

AMEND_OBJS = ["--object", SECRET, "--object", "secret,id=sec1,data=second pass",
              "--object", "secret,id=sec2,data=not there"]
AMEND_CASES = [
    ("sec0", "encrypt.state=inactive,encrypt.old-secret=sec0"),
    ("sec1", "encrypt.state=inactive,encrypt.old-secret=sec1"),
    ("sec1", "encrypt.state=inactive,encrypt.keyslot=1"),
    ("sec1", "encrypt.state=active"),
    ("sec1", "encrypt.state=active,encrypt.new-secret=sec1,encrypt.keyslot=0"),
    ("sec1", "encrypt.state=active,encrypt.new-secret=sec1,encrypt.old-secret=sec0"),
    ("sec1", "encrypt.state=inactive"),
    ("sec1", "encrypt.state=inactive,encrypt.keyslot=9"),
    ("sec1", "encrypt.state=inactive,encrypt.keyslot=3"),
    ("sec1", "encrypt.state=inactive,encrypt.keyslot=0,encrypt.old-secret=sec1"),
    ("sec1", "encrypt.state=inactive,encrypt.new-secret=sec1,encrypt.keyslot=0"),
    ("sec1", "encrypt.state=inactive,encrypt.old-secret=sec2"),
    ("sec1", "encrypt.state=inactive,encrypt.iter-time=10,encrypt.keyslot=0"),
    ("sec1", "encrypt.state=bogus"),
    ("sec1", "encrypt.keyslot=1"),
    ("sec1", "encrypt.state=inactive,encrypt.keyslot=0,compat=0.10"),
]
if SANITIZED:
    AMEND_CASES = AMEND_CASES[::3]


@pytest.fixture
def two_slots(tmp_path):
    """A vdisk-made qcow2+luks image with data, opened by sec0 (slot 0)
    and sec1 (slot 1, added by vdisk's amend)."""
    raw = tmp_path / "in.raw"
    data = mixed_raw(raw, M)
    img = tmp_path / "two.qcow2"
    p = vimg("convert", *OBJ, "-O", "qcow2", "-o", LUKS, raw, img)
    assert p.returncode == 0, p.stderr
    p = vimg("amend", *AMEND_OBJS, "--image-opts", iopts(img), "-o",
             "encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10")
    assert p.returncode == 0, p.stderr
    return img, data


def slots_active(img):
    info = json.loads(qimg("info", "--output=json", img).stdout)
    return [s["active"] for s in info["format-specific"]["data"]["encrypt"]["slots"]]


def read_with(tool, img, tmp_path, sec):
    objs = ["--object", "secret,id=sec0,data=" + sec]
    out = tmp_path / "o.raw"
    p = tool("convert", *objs, "--image-opts", iopts(img), "-O", "raw", out)
    return out.read_bytes() if p.returncode == 0 else p.stderr


def test_amend_adds_and_erases(tmp_path, two_slots):
    img, data = two_slots
    assert slots_active(img) == [True, True] + [False] * 6
    assert read_with(qimg, img, tmp_path, "second pass") == data
    p = vimg("amend", *AMEND_OBJS, "--image-opts", iopts(img, "sec1"), "-o",
             "encrypt.state=inactive,encrypt.old-secret=sec0")
    assert p.returncode == 0, p.stderr
    assert "Invalid password" in read_with(qimg, img, tmp_path, PASS)
    assert read_with(qimg, img, tmp_path, "second pass") == data
    # the last one needs --force, as in qemu-img
    a = ["amend", *AMEND_OBJS, "--image-opts", iopts(img, "sec1"), "-o",
         "encrypt.state=inactive,encrypt.keyslot=1"]
    p = vimg(*a)
    assert p.returncode == 1 and "refusing operation" in p.stderr
    assert vimg(*(a[:1] + ["--force"] + a[1:])).returncode == 0
    assert slots_active(img) == [False] * 8
    qcheck_opts = ["check", "--object", "secret,id=sec0,data=second pass", "--image-opts"]
    assert "Invalid password" in qimg(*qcheck_opts, iopts(img)).stderr


@pytest.mark.parametrize("sec,opts", AMEND_CASES)
def test_amend_as_qemu(tmp_path, two_slots, sec, opts):
    img, _ = two_slots
    q = tmp_path / "q.qcow2"
    shutil.copy(img, q)
    pv = vimg("amend", *AMEND_OBJS, "--image-opts", iopts(img, sec), "-o", opts)
    pq = qimg_retry("amend", *AMEND_OBJS, "--image-opts", iopts(q, sec), "-o", opts)
    assert pv.returncode == pq.returncode, (pv.stderr, pq.stderr)
    assert pv.stderr.replace(str(img), "X") == \
        pq.stderr.replace(str(q), "X").replace("qemu-img", "vdisk-img")
    assert slots_active(img) == slots_active(q)


def test_amend_without_encryption_as_qemu(tmp_path):
    for opts in ("", AES):
        img = tmp_path / "p.qcow2"
        a = ["create", "-q", "-f", "qcow2", *OBJ] + (["-o", opts] if opts else [])
        assert vimg(*a, img, "1M").returncode == 0
        args = ["amend", *AMEND_OBJS, "--image-opts", iopts(img) if opts else
                "driver=qcow2,file.filename=%s" % img, "-o", "encrypt.state=inactive"]
        pv, pq = vimg(*args), qimg(*args)
        assert (pv.returncode, pv.stderr.replace("vdisk-img", "qemu-img")) == \
            (pq.returncode, pq.stderr)


def crash_json(img, k, sec="sec0"):
    """img (qcow2+luks) with every write from the kth on failing."""
    rule = {"event": "none", "iotype": "write", "nth": k, "errno": 5}
    node = {"driver": "blkdebug", "inject-error": [rule],
            "image": {"driver": "file", "filename": str(img)}}
    return "json:" + json.dumps({"driver": "qcow2", "encrypt.key-secret": sec, "file": node})


@pytest.mark.parametrize("opts", [
    "encrypt.state=active,encrypt.new-secret=sec2,encrypt.iter-time=10",
    "encrypt.state=active,encrypt.new-secret=sec2,encrypt.keyslot=5,encrypt.iter-time=10",
    "encrypt.state=inactive,encrypt.keyslot=1",
])
def test_amend_interrupted_keeps_old_passphrase(tmp_path, two_slots, opts):
    """Interrupted at any write, the image still opens with sec0 in
    qemu-img and vdisk, its data intact; the amend then completes."""
    img, data = two_slots
    done = False
    for k in range(1, 8):
        work = tmp_path / ("k%d.qcow2" % k)
        shutil.copy(img, work)
        p = vimg("amend", *AMEND_OBJS, crash_json(work, k), "-o", opts)
        done = p.returncode == 0
        assert k > 1 or not done        # the fault does reach the amend
        for tool in (vimg, qimg):
            assert read_with(tool, work, tmp_path, PASS) == data, (k, p.stderr)
        qcheck(work)
        if done:
            break
    assert done
    want = [True, True] + [False] * 6
    if "inactive" in opts:
        want[1] = False
    else:
        want[5 if "keyslot=5" in opts else 2] = True
    assert slots_active(work) == want


# ---- backing chains mixing encrypted and plain layers ----

def chain_pair(tmp_path, encrypted_base):
    """Directories v/ and q/ holding the same chain: base.qcow2 (2 MiB of
    data) under top.qcow2 (named relatively, one write across clusters);
    one layer encrypted with LUKS, the other plain."""
    d = tmp_path / "v"
    d.mkdir()
    raw = tmp_path / "b.raw"
    mixed_raw(raw, 2 * M)
    bo = ["-o", LUKS] if encrypted_base else []
    assert vimg("convert", *OBJ, "-O", "qcow2", *bo, raw, d / "base.qcow2").returncode == 0
    to = [] if encrypted_base else ["-o", LUKS]
    p = vimg("create", "-q", "-f", "qcow2", *OBJ, *to, "-b", "base.qcow2", "-F", "qcow2",
             d / "top.qcow2")
    assert p.returncode == 0, p.stderr
    p = run([QEMU_IO, *OBJ, "--image-opts", top_opts(d / "top.qcow2", encrypted_base),
             "-c", "write -P 5 5000 100000"])
    assert p.returncode == 0, p.stderr
    shutil.copytree(d, tmp_path / "q")
    return d, tmp_path / "q"


def top_opts(top, encrypted_base):
    if encrypted_base:
        return "driver=qcow2,file.filename=%s,backing.encrypt.key-secret=sec0" % top
    return iopts(top)


def top_json(top, encrypted_base):
    if not encrypted_base:
        return ijson(top)
    return "json:" + json.dumps({"driver": "qcow2", "file": {"driver": "file",
                                                             "filename": str(top)},
                                 "backing": {"encrypt.key-secret": "sec0"}})


@pytest.mark.parametrize("encrypted_base", [False, True])
def test_chain_read_write_rebase(tmp_path, encrypted_base):
    """Both tools read the chain the same (the backing file's key given
    as backing.encrypt.key-secret), map it the same, and a safe rebase
    onto no backing file keeps what the guest sees, as qemu-img's."""
    vd, qd = chain_pair(tmp_path, encrypted_base)
    vt, qt = vd / "top.qcow2", qd / "top.qcow2"
    # partial writes by each tool on its copy
    p = run([VDISK_IO, *OBJ, top_json(vt, encrypted_base), "write", "0x66", "70000", "3000"])
    assert p.returncode == 0, p.stderr
    p = run([QEMU_IO, *OBJ, "--image-opts", top_opts(qt, encrypted_base),
             "-c", "write -P 0x66 70000 3000"])
    assert p.returncode == 0, p.stderr
    outs = {}
    for name, tool, img in (("v", vimg, vt), ("q", qimg, qt), ("vq", qimg, vt),
                            ("qv", vimg, qt)):
        out = tmp_path / ("c%s.raw" % name)
        p = tool("convert", *OBJ, "--image-opts", top_opts(img, encrypted_base), "-O", "raw",
                 out)
        assert p.returncode == 0, p.stderr
        outs[name] = out.read_bytes()
    assert outs["v"] == outs["q"] == outs["vq"] == outs["qv"]
    a = ["map", "--output=json", *OBJ, "--image-opts"]
    assert vimg(*a, top_opts(vt, encrypted_base)).stdout == \
        qimg(*a, top_opts(qt, encrypted_base)).stdout
    for tool, img in ((vimg, vt), (qimg, qt)):
        p = tool("rebase", *OBJ, "-b", "", "--image-opts", top_opts(img, encrypted_base))
        assert p.returncode == 0, p.stderr
        o = iopts(img) if not encrypted_base else "driver=qcow2,file.filename=%s" % img
        out = tmp_path / "r.raw"
        p = qimg("convert", *OBJ, "--image-opts", o, "-O", "raw", out)
        assert p.returncode == 0, p.stderr
        assert out.read_bytes() == outs["q"]


def test_commit_encrypted_overlay_into_plain_base(tmp_path):
    """An encrypted overlay commits into its plain base as in qemu-img."""
    vd, qd = chain_pair(tmp_path, False)
    for tool, d in ((vimg, vd), (qimg, qd)):
        p = tool("commit", *OBJ, "--image-opts", iopts(d / "top.qcow2"))
        assert p.returncode == 0, p.stderr
    p = qimg("compare", vd / "base.qcow2", qd / "base.qcow2")
    assert p.returncode == 0, p.stdout + p.stderr


def test_create_over_encrypted_base_needs_no_key(tmp_path):
    """As qemu-img: the backing file is opened for its size only."""
    base = tmp_path / "base.qcow2"
    assert vimg("create", "-q", "-f", "qcow2", *OBJ, "-o", LUKS, base, "3M").returncode == 0
    for tool, name in ((vimg, "v.qcow2"), (qimg, "q.qcow2")):
        p = tool("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", tmp_path / name)
        assert p.returncode == 0, p.stderr
    assert (tmp_path / "v.qcow2").read_bytes() == (tmp_path / "q.qcow2").read_bytes()


def test_commit_into_encrypted_base(tmp_path):
    """A plain overlay commits into its encrypted base (its key given as
    backing.encrypt.key-secret, --image-opts or json:) as in qemu-img."""
    vd, qd = chain_pair(tmp_path, True)
    shutil.copytree(vd, tmp_path / "j")
    for tool, d in ((vimg, vd), (qimg, qd)):
        p = tool("commit", *OBJ, "--image-opts", top_opts(d / "top.qcow2", True))
        assert p.returncode == 0, p.stderr
    p = vimg("commit", *OBJ, top_json(tmp_path / "j" / "top.qcow2", True))
    assert p.returncode == 0, p.stderr
    want = read_raw(qimg, qd / "base.qcow2", tmp_path / "q.raw")
    for d in (vd, tmp_path / "j"):
        assert read_raw(qimg, d / "base.qcow2", tmp_path / "v.raw") == want
        qcheck(d / "base.qcow2")
