# SPDX-License-Identifier: BSD-3-Clause
"""The luks driver against qemu-img 7.2 and cryptsetup: images each tool
creates read the same in the other (every cipher, mode, IV generator and
hash family), info and measure print the same, refused options and wrong
passphrases answer with qemu-img's message and exit code, cryptsetup's
LUKS1 images open in vdisk and vdisk's pass luksDump and
--test-passphrase, secrets come from data=, file=, base64 and keyid=
encrypted values and never show in messages, and hostile headers end with
QEMU's error or a clear one of ours, quickly.  PBKDF2 runs with
iter-time=10 (qemu-img's own creates are slow: only a few here)."""
import base64
import json
import os
import shutil
import struct
import subprocess
import time

import pytest

from conftest import QEMU_IMG, qimg, qimg_retry, run, same_output, vimg, needs_vdisk_format

CRYPTSETUP = shutil.which("cryptsetup") or (
    "/usr/sbin/cryptsetup" if os.path.exists("/usr/sbin/cryptsetup") else None)
OPENSSL = shutil.which("openssl")
SANITIZED = bool(os.environ.get("VDISK_SANITIZED"))
PASS = "s3cret pass"
SECRET = "secret,id=sec0,data=" + PASS
KEY = "key-secret=sec0,iter-time=10"
M = 1 << 20


@pytest.fixture(autouse=True)
def _needs(needs_qemu):
    needs_vdisk_format("luks")


def opts_img(path, sec="sec0"):
    return "driver=luks,key-secret=%s,file.filename=%s" % (sec, path)


def make_raw(path, size=M + 3 * 512):
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def read_luks(tool, img, out, sec=SECRET):
    p = tool("convert", "--object", sec, "--image-opts", opts_img(img), "-O", "raw", out)
    assert p.returncode == 0, p.stderr
    return out.read_bytes()


def norm(s):
    return s.replace("qemu-img", "vdisk-img")


# ---- creation and data, both directions ----

COMBOS = [
    "",
    "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1",
    "cipher-alg=serpent-256,cipher-mode=xts,hash-alg=sha512",
    "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain",
    "cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256",
    "cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha1",
    "cipher-alg=aes-128,cipher-mode=ecb,hash-alg=sha384",
    "cipher-alg=aes-256,cipher-mode=ctr,hash-alg=sha224",
    "cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=md5",
    "cipher-alg=twofish-256,cipher-mode=xts,hash-alg=ripemd160",
    "cipher-alg=serpent-192,cipher-mode=xts,ivgen-alg=plain",
    "cipher-alg=twofish-192,cipher-mode=cbc,ivgen-alg=plain64",
]
if SANITIZED:
    COMBOS = COMBOS[:4]
# qemu-img's own LUKS creates (and measures) time PBKDF2 for a second or
# more each: one create here, one measure, one qcow2 create below.


def create_opts(extra):
    return KEY + ("," + extra if extra else "")


@pytest.mark.parametrize("extra", COMBOS)
def test_vdisk_made_reads_in_qemu(tmp_path, extra):
    raw = tmp_path / "in.raw"
    data = make_raw(raw)
    img = tmp_path / "v.luks"
    p = vimg("convert", "--object", SECRET, "-O", "luks", "-o", create_opts(extra), raw, img)
    assert p.returncode == 0, p.stderr
    assert read_luks(vimg, img, tmp_path / "v.raw") == data
    if "-192" in extra and "xts" not in extra:
        return          # qemu-img 7.2 aborts on 24-byte keys (key material of half a sector)
    assert read_luks(qimg, img, tmp_path / "q.raw") == data
    for fmt in ("human", "json"):
        q = qimg("info", "--output=" + fmt, img)
        v = vimg("info", "--output=" + fmt, img)
        assert q.returncode == 0 and same_output(v.stdout, q.stdout), (v.stdout, q.stdout)


def test_qemu_made_reads_in_vdisk(tmp_path):
    """One qemu-img create (it times PBKDF2 for seconds): the Formatting
    line, file size and header layout as vdisk's; data qemu writes reads
    the same in vdisk and back; info and measure print the same."""
    extra = "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1"
    v, q = tmp_path / "v.luks", tmp_path / "q.luks"
    pv = vimg("create", "-f", "luks", "--object", SECRET, "-o", create_opts(extra), v, "3M")
    pq = qimg_retry("create", "-f", "luks", "--object", SECRET, "-o", create_opts(extra), q, "3M")
    assert pv.returncode == pq.returncode == 0, (pv.stderr, pq.stderr)
    assert same_output(pv.stdout.replace(str(v), "X"), pq.stdout.replace(str(q), "X"))
    assert v.stat().st_size == q.stat().st_size
    # same header but for salts, digest, iterations and UUID
    assert v.read_bytes()[:112] == q.read_bytes()[:112]
    # a fresh image reads as the decryption of the file's zeroes: the same
    # bytes in both (same key, IVs and cipher)
    assert read_luks(vimg, q, tmp_path / "v0.raw") == read_luks(qimg, q, tmp_path / "q0.raw")
    raw = tmp_path / "in.raw"
    data = make_raw(raw, 3 * M)
    p = qimg("convert", "-n", "--object", SECRET, "-f", "raw", raw, "--target-image-opts",
             opts_img(q))
    assert p.returncode == 0, p.stderr
    assert read_luks(vimg, q, tmp_path / "v.raw") == data
    # vdisk writes into qemu's image; qemu reads it back
    raw2 = tmp_path / "in2.raw"
    data2 = make_raw(raw2, 3 * M)
    p = vimg("convert", "-n", "--object", SECRET, raw2, "--target-image-opts", opts_img(q))
    assert p.returncode == 0, p.stderr
    assert read_luks(qimg, q, tmp_path / "q.raw") == data2
    for fmt in ("human", "json"):
        qi, vi = qimg("info", "--output=" + fmt, q), vimg("info", "--output=" + fmt, q)
        assert same_output(vi.stdout, qi.stdout), (vi.stdout, qi.stdout)
    a = ["measure", "--object", SECRET, "--output=json", "-O", "luks", "-o", create_opts(extra),
         "--image-opts", opts_img(q)]
    rv, rq = vimg(*a), qimg_retry(*a)
    assert rv.returncode == rq.returncode == 0, (rv.stderr, rq.stderr)
    assert rv.stdout == rq.stdout


def slot_and_digest_iters(tool, img):
    """PBKDF2 iterations of key slot 0 and of the master key digest."""
    p = tool("info", "--output=json", img)
    assert p.returncode == 0, p.stderr
    spec = json.loads(p.stdout)["format-specific"]["data"]
    return spec["slots"][0]["iters"], spec["master-key-iters"]


# PBKDF2 runs its iterations once per hash length of the output it makes:
# the slot's key (the cipher's key bytes) and the 20-byte digest are timed
# with their own lengths, so each takes its share of iter-time (the digest
# an eighth).  slot / digest iterations = 8 / (hash lengths in the key).
ITER_RATIOS = [
    ("", 4),                            # aes-256-xts: 64 bytes, 2 of sha256
    ("cipher-alg=aes-128", 8),          # 32 bytes, 1 of sha256
    ("hash-alg=sha1", 2),               # 64 bytes, 4 of sha1 (the digest: 1)
    ("hash-alg=sha512", 8),             # 64 bytes, 1 of sha512
]


@pytest.mark.parametrize("extra,ratio", ITER_RATIOS)
def test_iterations_follow_key_length(tmp_path, extra, ratio):
    """A slot of a 64-byte key from sha256 took twice iter-time to open
    (the rate was timed deriving 32 bytes)."""
    img = tmp_path / "v.luks"
    p = vimg("create", "-f", "luks", "--object", SECRET,
             "-o", create_opts(extra).replace("iter-time=10", "iter-time=200"), img, "1M")
    assert p.returncode == 0, p.stderr
    slot, digest = slot_and_digest_iters(vimg, img)
    assert abs(slot / digest - ratio) < 0.02 * ratio, (slot, digest)


@pytest.mark.once
def test_iterations_as_qemu(tmp_path):
    """qemu-img's slot and digest iterations for the default cipher
    (aes-256-xts, sha256) stand in the same ratio as vdisk's: each tool
    times its own rate, so only the ratio is compared."""
    img = tmp_path / "q.luks"
    p = qimg_retry("create", "-f", "luks", "--object", SECRET,
                   "-o", create_opts("").replace("iter-time=10", "iter-time=200"), img, "1M")
    assert p.returncode == 0, p.stderr
    slot, digest = slot_and_digest_iters(qimg, img)
    assert 2.5 < slot / digest < 6, (slot, digest)


def test_create_prealloc_and_help(tmp_path):
    for prealloc in ("off", "metadata", "falloc", "full"):
        img = tmp_path / ("p-%s.luks" % prealloc)
        p = vimg("create", "-f", "luks", "--object", SECRET, "-o",
                 KEY + ",preallocation=" + prealloc, img, "2M")
        assert p.returncode == 0, p.stderr
        assert img.stat().st_size == 2 * M + 2068480
    help_v, help_q = vimg("create", "-f", "luks", "-o", "help"), qimg("create", "-f", "luks", "-o", "help")
    assert help_v.stdout == help_q.stdout
    a = ["measure", "-O", "luks", "--size", "1G"]
    pv, pq = vimg(*a), qimg_retry(*a)
    assert pv.returncode == pq.returncode == 1 and same_output(pv.stderr, pq.stderr)


REFUSED = [
    "cipher-alg=foo",
    "cipher-mode=ofb",
    "ivgen-alg=bogus",
    "hash-alg=sha3",
    "ivgen-hash-alg=md4",
    "cipher-alg=cast5-128,cipher-mode=xts",
    "cipher-alg=aes-128,ivgen-alg=essiv,ivgen-hash-alg=sha1",
    "cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha1",
    "cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv",
]


@pytest.mark.parametrize("extra", REFUSED)
def test_create_refused_as_qemu(tmp_path, extra):
    v, q = tmp_path / "v.luks", tmp_path / "q.luks"
    pv = vimg("create", "-f", "luks", "--object", SECRET, "-o", create_opts(extra), v, "1M")
    pq = qimg_retry("create", "-f", "luks", "--object", SECRET, "-o", create_opts(extra), q, "1M")
    assert pq.returncode != 0
    assert pv.returncode == pq.returncode
    assert same_output(pv.stderr.replace(str(v), "X"), pq.stderr.replace(str(q), "X"))


@pytest.mark.parametrize("opts", ["iter-time=10", "key-secret=nope,iter-time=10"])
def test_create_needs_a_secret(tmp_path, opts):
    v, q = tmp_path / "v.luks", tmp_path / "q.luks"
    pv = vimg("create", "-f", "luks", "-o", opts, v, "1M")
    pq = qimg_retry("create", "-f", "luks", "-o", opts, q, "1M")
    assert pv.returncode == pq.returncode == 1
    assert same_output(pv.stderr.replace(str(v), "X"), pq.stderr.replace(str(q), "X"))


# ---- opening ----

@pytest.fixture
def vimage(tmp_path):
    """A small vdisk-made luks image with some data, and that data."""
    raw = tmp_path / "in.raw"
    data = make_raw(raw, 256 * 1024)
    img = tmp_path / "img.luks"
    vimg("convert", "--object", SECRET, "-O", "luks", "-o", KEY, raw, img, check=True)
    return img, data


def test_wrong_passphrase_as_qemu(tmp_path, vimage):
    img, _ = vimage
    wrong = "secret,id=sec0,data=not it"
    for cmd in (["convert", "--object", wrong, "--image-opts", opts_img(img), "-O", "raw"],
                ["map", "--object", wrong, "--image-opts", opts_img(img)],
                ["compare", "--object", wrong, "--image-opts", opts_img(img), opts_img(img)]):
        out_v, out_q = tmp_path / "out-v", tmp_path / "out-q"
        extra = [out_v] if cmd[0] == "convert" else []
        pv = vimg(*(cmd + extra))
        pq = qimg(*(cmd + ([out_q] if extra else [])))
        assert pv.returncode == pq.returncode != 0
        assert same_output(pv.stderr, pq.stderr), (pv.stderr, pq.stderr)
        assert not out_v.exists()
        assert "not it" not in pv.stderr + pv.stdout


def test_open_needs_key_but_info_does_not(tmp_path, vimage):
    img, _ = vimage
    for cmd in (["convert", "-O", "raw", img, tmp_path / "o"], ["map", img],
                ["convert", "--image-opts", "driver=luks,file.filename=%s" % img, "-O", "raw",
                 tmp_path / "o"],
                ["convert", "--image-opts", opts_img(img, "absent"), "-O", "raw", tmp_path / "o"]):
        pv, pq = vimg(*cmd), qimg(*cmd)
        assert pv.returncode == pq.returncode == 1
        assert same_output(pv.stderr, pq.stderr), (pv.stderr, pq.stderr)
    assert vimg("info", img).returncode == 0


def test_map_and_resize_as_qemu(tmp_path, vimage):
    img, data = vimage
    for fmt in ("human", "json"):
        a = ["map", "--output=" + fmt, "--object", SECRET, "--image-opts", opts_img(img)]
        pv, pq = vimg(*a), qimg(*a)
        assert pv.returncode == pq.returncode
        assert same_output(pv.stdout + pv.stderr, pq.stdout + pq.stderr)
    q = tmp_path / "q.luks"
    shutil.copy(img, q)
    for tool, path in ((vimg, img), (qimg, q)):
        p = tool("resize", "--object", SECRET, "--image-opts", opts_img(path), "+1M")
        assert p.returncode == 0, p.stderr
    assert img.stat().st_size == q.stat().st_size
    # the new area reads as the decryption of the file's zeroes, in both
    got = read_luks(qimg, img, tmp_path / "r.raw")
    assert len(got) == len(data) + M and got[:len(data)] == data
    p = vimg("resize", "--object", SECRET, "--image-opts", opts_img(img), "--shrink", "128K")
    assert p.returncode == 0, p.stderr
    assert read_luks(qimg, img, tmp_path / "r2.raw") == data[:128 * 1024]


# ---- secrets ----

def secret_variants(tmp_path):
    """(object args, label) giving PASS in every way QEMU takes it."""
    f = tmp_path / "pass.txt"
    f.write_text(PASS)
    b64 = base64.b64encode(PASS.encode()).decode()
    out = [(["--object", "secret,id=sec0,file=%s" % f], "file"),
           (["--object", "secret,id=sec0,data=%s,format=base64" % b64], "base64")]
    if OPENSSL:
        key, iv = os.urandom(32), os.urandom(16)
        ct = subprocess.run([OPENSSL, "enc", "-aes-256-cbc", "-K", key.hex(), "-iv", iv.hex(),
                             "-base64", "-A"], input=PASS.encode(), capture_output=True,
                            check=True).stdout.decode().strip()
        out.append((["--object", "secret,id=k0,data=%s,format=base64"
                     % base64.b64encode(key).decode(),
                     "--object", "secret,id=sec0,keyid=k0,iv=%s,format=base64,data=%s"
                     % (base64.b64encode(iv).decode(), ct)], "keyid"))
    return out


def test_secret_forms(tmp_path, vimage):
    img, data = vimage
    for objs, label in secret_variants(tmp_path):
        out = tmp_path / ("o-" + label)
        p = vimg(*(["convert"] + objs + ["--image-opts", opts_img(img), "-O", "raw", out]))
        assert p.returncode == 0, (label, p.stderr)
        assert out.read_bytes() == data
        q = qimg(*(["convert"] + objs + ["--image-opts", opts_img(img), "-O", "raw", out]))
        assert q.returncode == 0, (label, q.stderr)


BAD_SECRETS = [
    "secret,id=sec0",
    "secret,id=sec0,data=a,file=b",
    "secret,id=sec0,file=/nonexistent/pass",
    "secret,id=sec0,data=@@@@,format=base64",
    "secret,id=sec0,data=abc,format=hex",
    "secret,id=sec0,data=abcd,keyid=missing,iv=AAAAAAAAAAAAAAAAAAAAAA==",
]


@pytest.mark.parametrize("obj", BAD_SECRETS)
def test_bad_secret_as_qemu(tmp_path, vimage, obj):
    img, _ = vimage
    pv = vimg("info", "--object", obj, img)
    pq = qimg("info", "--object", obj, img)
    assert pv.returncode == pq.returncode == 1
    assert same_output(pv.stderr, pq.stderr), (pv.stderr, pq.stderr)


def test_encrypted_secret_with_short_key(tmp_path, vimage):
    img, _ = vimage
    objs = ["--object", "secret,id=k0,data=short", "--object",
            "secret,id=sec0,keyid=k0,iv=AAAAAAAAAAAAAAAAAAAAAA==,data=AAAA"]
    pv, pq = vimg(*(["info"] + objs + [img])), qimg(*(["info"] + objs + [img]))
    assert pv.returncode == pq.returncode == 1
    assert same_output(pv.stderr, pq.stderr)


# ---- cryptsetup ----

CS_SPECS = [
    ("aes-xts-plain64", 256, "sha256"),
    ("aes-cbc-essiv:sha256", 256, "sha1"),
    ("aes-cbc-essiv:sha256", 192, "sha512"),    # aes-192: qemu-img aborts on it
    ("aes-xts-plain64", 384, "sha256"),         # aes-192 in xts
    ("serpent-xts-plain64", 512, "sha256"),
    ("twofish-cbc-plain", 128, "ripemd160"),
    ("cast5-cbc-plain64", 128, "sha1"),
]


def needs_cryptsetup():
    if CRYPTSETUP is None:
        pytest.skip("cryptsetup is not installed")


def cs_format(path, spec, bits, hash_):
    with open(path, "wb") as f:
        f.truncate(4 * M)
    p = run([CRYPTSETUP, "luksFormat", "--type", "luks1", "-q", "--pbkdf-force-iterations",
             "1000", "--key-file", "-", "-c", spec, "-s", str(bits), "-h", hash_, str(path)],
            input=PASS)
    if p.returncode != 0:
        pytest.skip("cryptsetup refuses %s here: %s" % (spec, p.stderr.strip()))


@pytest.mark.parametrize("spec,bits,hash_", CS_SPECS)
def test_cryptsetup_made_opens(tmp_path, spec, bits, hash_):
    needs_cryptsetup()
    img = tmp_path / "cs.img"
    cs_format(img, spec, bits, hash_)
    pv = vimg("convert", "--object", SECRET, "--image-opts", opts_img(img), "-O", "raw",
              tmp_path / "v.raw")
    assert pv.returncode == 0, pv.stderr
    if bits not in (192, 384):
        q = read_luks(qimg, img, tmp_path / "q.raw")
        assert (tmp_path / "v.raw").read_bytes() == q
        assert same_output(vimg("info", img).stdout, qimg("info", img).stdout)
    # written by vdisk, read back by vdisk through the same key
    raw = tmp_path / "in.raw"
    vsize = json.loads(vimg("info", "--output=json", img).stdout)["virtual-size"]
    data = make_raw(raw, vsize)
    p = vimg("convert", "-n", "--object", SECRET, raw, "--target-image-opts", opts_img(img))
    assert p.returncode == 0, p.stderr
    assert read_luks(vimg, img, tmp_path / "back.raw") == data
    if bits not in (192, 384):
        assert read_luks(qimg, img, tmp_path / "back-q.raw") == data
    bad = vimg("info", "--object", "secret,id=sec0,data=nope", "--image-opts", opts_img(img))
    assert bad.returncode == 0    # info reads the header only


@pytest.mark.parametrize("extra", [
    "", "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1",
    "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha512"])
def test_vdisk_made_passes_cryptsetup(tmp_path, extra):
    needs_cryptsetup()
    img = tmp_path / "v.luks"
    p = vimg("create", "-f", "luks", "--object", SECRET, "-o", create_opts(extra), img, "4M")
    assert p.returncode == 0, p.stderr
    d = run([CRYPTSETUP, "luksDump", str(img)])
    assert d.returncode == 0, d.stderr
    assert "Version:       \t1" in d.stdout
    ok = run([CRYPTSETUP, "open", "--test-passphrase", "--key-file", "-", str(img)], input=PASS)
    assert ok.returncode == 0, ok.stderr
    bad = run([CRYPTSETUP, "open", "--test-passphrase", "--key-file", "-", str(img)],
              input="wrong")
    assert bad.returncode != 0


# ---- hostile headers ----

def put32(img, off, val):
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(">I", val))


def put_bytes(img, off, b):
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(b)


SLOT = lambda i, field: 208 + 48 * i + field  # noqa: E731
HOSTILE_QEMU = [
    ("magic", lambda p: put_bytes(p, 0, b"LUKX")),
    ("version", lambda p: put_bytes(p, 6, b"\x00\x02")),
    ("cipher-nul", lambda p: put_bytes(p, 8, b"a" * 32)),
    ("mode-nul", lambda p: put_bytes(p, 40, b"b" * 32)),
    ("hash-nul", lambda p: put_bytes(p, 72, b"c" * 32)),
    ("payload-in-header", lambda p: put32(p, 104, 2)),
    ("mk-iters-zero", lambda p: put32(p, 164, 0)),
    ("stripes-huge", lambda p: put32(p, SLOT(3, 44), 0xffffffff)),
    ("stripes-zero", lambda p: put32(p, SLOT(0, 44), 0)),
    ("slot-state", lambda p: put32(p, SLOT(2, 0), 1)),
    ("slot-iters-zero", lambda p: put32(p, SLOT(0, 4), 0)),
    ("slot-in-header", lambda p: put32(p, SLOT(0, 40), 1)),
    ("slot-past-payload", lambda p: put32(p, SLOT(7, 40), 4000)),
    ("slots-overlap", lambda p: put32(p, SLOT(5, 40), 8 + 4 * 504 + 100)),
    ("cipher-unknown", lambda p: put_bytes(p, 8, b"foo\0")),
    ("mode-unknown", lambda p: put_bytes(p, 40, b"ofb-plain64\0")),
    ("mode-format", lambda p: put_bytes(p, 40, b"xtsplain64\0\0")),
    ("ivgen-unknown", lambda p: put_bytes(p, 40, b"xts-bogus\0\0\0")),
    ("ivhash-unknown", lambda p: put_bytes(p, 40, b"xts-essiv:sha3\0")),
    ("essiv-no-hash", lambda p: put_bytes(p, 40, b"xts-essiv\0\0\0")),
    ("hash-unknown", lambda p: put_bytes(p, 72, b"whirlpool\0")),
    ("key-bytes", lambda p: put32(p, 108, 0x7fffffff)),
]


@pytest.mark.parametrize("name,corrupt", HOSTILE_QEMU, ids=[h[0] for h in HOSTILE_QEMU])
def test_hostile_header_as_qemu(tmp_path, vimage, name, corrupt):
    img, _ = vimage
    corrupt(img)
    for cmd in (["info", img],
                ["convert", "--object", SECRET, "--image-opts", opts_img(img), "-O", "raw"]):
        outs = []
        for tool, out in ((vimg, tmp_path / "v.raw"), (qimg, tmp_path / "q.raw")):
            p = tool(*(cmd + ([out] if cmd[0] == "convert" else [])), timeout=60)
            outs.append(p)
        pv, pq = outs
        assert pv.returncode == pq.returncode, (pv.stderr, pq.stderr)
        assert same_output(pv.stderr, pq.stderr), (pv.stderr, pq.stderr)


HOSTILE_OURS = [
    # refused before any PBKDF2 runs: QEMU would spin for minutes
    ("slot-iters-huge", lambda p: put32(p, SLOT(0, 4), 0xffffffff),
     "Keyslot 0 iteration count 4294967295 is larger than"),
    ("mk-iters-huge", lambda p: put32(p, 164, 0xfffffff0), "LUKS key iteration count"),
    ("material-past-eof", lambda p: os.truncate(p, 8192), "lies beyond the end of the file"),
    # QEMU's 32-bit sum wraps and lets this slot end past the payload
    ("slot-offset-wraps", lambda p: put32(p, SLOT(7, 40), 0xfffffff0),
     "Keyslot 7 is overlapping with the encrypted payload"),
]


@pytest.mark.parametrize("name,corrupt,msg", HOSTILE_OURS, ids=[h[0] for h in HOSTILE_OURS])
def test_hostile_header_ours(tmp_path, vimage, name, corrupt, msg):
    img, _ = vimage
    corrupt(img)
    t0 = time.monotonic()
    p = vimg("convert", "--object", SECRET, "--image-opts", opts_img(img), "-O", "raw",
             tmp_path / "o.raw", timeout=60)
    assert p.returncode == 1 and msg in p.stderr, p.stderr
    assert not (tmp_path / "o.raw").exists()
    assert "Traceback" not in p.stderr and time.monotonic() - t0 < 30


def test_payload_past_eof(tmp_path, vimage):
    img, _ = vimage
    put32(img, 104, 0x7fffffff)
    p = vimg("info", img)
    assert p.returncode == 1 and "vdisk-img:" in p.stderr


# ---- vdisk-nbd ----

def test_nbd_serves_luks(tmp_path, vimage):
    from conftest import BUILD
    from nbd_helpers import Server
    img, data = vimage
    nbd = os.path.join(BUILD, "tools", "nbd", "vdisk-nbd")
    sock = str(tmp_path / "s.sock")
    srv = Server(nbd, ["--object", SECRET, "--image-opts", opts_img(img)], sock=sock)
    try:
        out = tmp_path / "o.raw"
        p = qimg("convert", "-f", "raw", srv.uri(), "-O", "raw", out)
        assert p.returncode == 0, p.stderr
        assert out.read_bytes() == data
    finally:
        srv.stop()
    args = ["--object", "secret,id=sec0,data=wrong", "-k", str(tmp_path / "w.sock"),
            "--image-opts", opts_img(img)]
    pv = run([nbd] + args)
    pq = run([shutil.which("qemu-nbd") or "qemu-nbd"] + args)
    assert pv.returncode == pq.returncode == 1
    assert pv.stderr.replace("vdisk-nbd", "qemu-nbd") == pq.stderr


# ---- qcow2 encryption (read) ----

def qopts(path, sec="sec0"):
    return "driver=qcow2,encrypt.key-secret=%s,file.filename=%s" % (sec, path)


@pytest.mark.parametrize("fmt", ["luks", "aes"])
def test_qcow2_encrypted_reads_as_qemu(tmp_path, fmt):
    img = tmp_path / ("e-%s.qcow2" % fmt)
    o = "encrypt.format=%s,encrypt.key-secret=sec0" % fmt
    if fmt == "luks":
        o += ",encrypt.iter-time=10"
    p = qimg_retry("create", "-f", "qcow2", "--object", SECRET, "-o", o, img, "4M")
    assert p.returncode == 0, p.stderr
    raw = tmp_path / "in.raw"
    data = make_raw(raw, 4 * M)
    # qemu writes every other 64 KiB cluster: data, holes and zeroes
    for off in range(0, 4 * M, 2 * 65536):
        with open(raw, "r+b") as f:
            f.seek(off + 65536)
            f.write(bytes(65536))
    p = qimg("convert", "-n", "--object", SECRET, "-f", "raw", raw, "--target-image-opts",
             qopts(img))
    assert p.returncode == 0, p.stderr
    got = tmp_path / "v.raw"
    p = vimg("convert", "--object", SECRET, "--image-opts", qopts(img), "-O", "raw", got)
    assert p.returncode == 0, p.stderr
    assert got.read_bytes() == raw.read_bytes()
    for out in ("human", "json"):
        q, v = qimg("info", "--output=" + out, img), vimg("info", "--output=" + out, img)
        assert same_output(v.stdout, q.stdout), (v.stdout, q.stdout)
        a = ["map", "--output=" + out, "--object", SECRET, "--image-opts", qopts(img)]
        q, v = qimg(*a), vimg(*a)
        assert q.returncode == v.returncode
        assert same_output(v.stdout + v.stderr, q.stdout + q.stderr)
    for objs in ([], ["--object", "secret,id=sec0,data=wrong"]):
        a = ["convert"] + objs + ["--image-opts", qopts(img), "-O", "raw", tmp_path / "o"]
        if not objs:
            a = ["convert", img, "-O", "raw", tmp_path / "o"]
        q, v = qimg(*a), vimg(*a)
        if fmt == "aes" and objs:
            continue            # legacy aes has no key check: any key decrypts
        assert q.returncode == v.returncode == 1
        assert same_output(v.stderr, q.stderr), (v.stderr, q.stderr)
    # vdisk writes into it (a resize here; writes: test_qcow2_encrypt.py)
    p = vimg("resize", "--object", SECRET, "--image-opts", qopts(img), "+1M")
    assert p.returncode == 0, p.stderr
    p = qimg("convert", "--object", SECRET, "--image-opts", qopts(img), "-O", "raw", got)
    assert p.returncode == 0, p.stderr
    assert got.read_bytes() == raw.read_bytes() + bytes(M)


# ---- amend: key slots ----

AMEND_CASES = [
    ("s0", "state=inactive,old-secret=sec0"),
    ("s1", "state=inactive,old-secret=sec1"),
    ("s1", "state=inactive,keyslot=1"),
    ("s1", "state=active"),
    ("s1", "state=active,new-secret=sec1,keyslot=0"),
    ("s1", "state=active,new-secret=sec1,old-secret=sec0"),
    ("s1", "state=inactive"),
    ("s1", "state=inactive,keyslot=9"),
    ("s1", "state=inactive,keyslot=3"),
    ("s1", "state=inactive,keyslot=0,old-secret=sec1"),
    ("s1", "state=inactive,new-secret=sec1,keyslot=0"),
    ("s1", "state=inactive,old-secret=sec2"),
    ("s1", "state=bogus"),
    ("s1", "keyslot=1"),
]
AMEND_OBJS = ["--object", SECRET, "--object", "secret,id=sec1,data=second pass",
              "--object", "secret,id=sec2,data=not there"]


@pytest.fixture
def two_slots(tmp_path, vimage):
    """vimage with a second passphrase (sec1) added by vdisk in slot 1."""
    img, data = vimage
    p = vimg(*(["amend"] + AMEND_OBJS + ["--image-opts", opts_img(img), "-o",
                                         "state=active,new-secret=sec1,iter-time=10"]))
    assert p.returncode == 0, p.stderr
    return img, data


def test_amend_adds_and_erases(tmp_path, two_slots):
    img, data = two_slots
    objs = ["--object", "secret,id=sec1,data=second pass"]
    out = tmp_path / "o.raw"
    p = qimg(*(["convert"] + objs + ["--image-opts", opts_img(img, "sec1"), "-O", "raw", out]))
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == data
    if CRYPTSETUP:
        ok = run([CRYPTSETUP, "open", "--test-passphrase", "--key-file", "-", str(img)],
                 input="second pass")
        assert ok.returncode == 0, ok.stderr
    info = json.loads(vimg("info", "--output=json", img).stdout)
    slots = info["format-specific"]["data"]["slots"]
    assert [s["active"] for s in slots] == [True, True] + [False] * 6
    # erase the first passphrase by its secret: only the second opens
    p = vimg(*(["amend"] + AMEND_OBJS + ["--image-opts", opts_img(img, "sec1"), "-o",
                                         "state=inactive,old-secret=sec0"]))
    assert p.returncode == 0, p.stderr
    p = qimg("convert", "--object", SECRET, "--image-opts", opts_img(img), "-O", "raw", out)
    assert p.returncode == 1 and "Invalid password" in p.stderr
    assert read_luks(qimg, img, out, sec="secret,id=sec0,data=second pass") == data
    # the last one needs --force
    a = ["amend"] + AMEND_OBJS + ["--image-opts", opts_img(img, "sec1"), "-o",
                                  "state=inactive,keyslot=1"]
    assert vimg(*a).returncode == 1
    assert vimg(*(a[:1] + ["--force"] + a[1:])).returncode == 0
    assert json.loads(vimg("info", "--output=json", img).stdout)["format-specific"]["data"][
        "slots"][1]["active"] is False


@pytest.mark.parametrize("key,opts", AMEND_CASES)
def test_amend_refusals_as_qemu(tmp_path, two_slots, key, opts):
    img, _ = two_slots
    q = tmp_path / "q.luks"
    shutil.copy(img, q)
    sec = "sec0" if key == "s0" else "sec1"
    pv = vimg(*(["amend"] + AMEND_OBJS + ["--image-opts", opts_img(img, sec), "-o", opts]))
    pq = qimg_retry(*(["amend"] + AMEND_OBJS + ["--image-opts", opts_img(q, sec), "-o", opts]))
    assert pv.returncode == pq.returncode, (pv.stderr, pq.stderr)
    assert same_output(pv.stderr.replace(str(img), "X"), pq.stderr.replace(str(q), "X"))
    for fmt in ("json",):
        iv = json.loads(vimg("info", "--output=" + fmt, img).stdout)["format-specific"]
        iq = json.loads(qimg("info", "--output=" + fmt, q).stdout)["format-specific"]
        assert [s["active"] for s in iv["data"]["slots"]] == \
            [s["active"] for s in iq["data"]["slots"]]


def amend_json(img, k):
    """img with every write from the kth on failing (a crash there)."""
    rule = {"event": "none", "iotype": "write", "nth": k, "errno": 5}
    node = {"driver": "blkdebug", "inject-error": [rule],
            "image": {"driver": "file", "filename": str(img)}}
    return "json:" + json.dumps({"driver": "luks", "key-secret": "sec0", "file": node})


@pytest.mark.parametrize("opts", ["state=active,new-secret=sec1,iter-time=10",
                                  "state=active,new-secret=sec1,keyslot=5,iter-time=10",
                                  "state=inactive,keyslot=1"])
def test_amend_interrupted_keeps_old_passphrase(tmp_path, two_slots, opts):
    """Interrupted at any write, the image still opens with sec0 (qemu-img
    and vdisk) and its data is intact."""
    img, data = two_slots
    if "new-secret" in opts and "keyslot" not in opts:
        # add to a fresh copy with only slot 0, as the first add did
        p = vimg(*(["amend"] + AMEND_OBJS + ["--image-opts", opts_img(img, "sec1"), "-o",
                                             "state=inactive,keyslot=1"]))
        assert p.returncode == 0, p.stderr
    for k in range(1, 6):
        work = tmp_path / ("k%d.luks" % k)
        shutil.copy(img, work)
        p = vimg(*(["amend"] + AMEND_OBJS + [amend_json(work, k), "-o", opts]))
        done = p.returncode == 0
        assert k > 1 or not done        # the fault does reach the amend
        for tool in (vimg, qimg):
            assert read_luks(tool, work, tmp_path / "o.raw") == data, (k, p.stderr)
        if done:
            break
    assert done
