# SPDX-License-Identifier: BSD-3-Clause
"""LUKS1 images between vdisk-img and the kernel's dm-crypt, under
cryptsetup, in the test guest (guest.py: this machine's kernel has no
device-mapper).  For each cipher family, mode and IV generator that both
qemu-img 7.2 (or vdisk, for aes-192) and cryptsetup accept: an image vdisk
creates and fills opens in cryptsetup and reads the same through
/dev/mapper, and what dm-crypt writes into it reads back in vdisk; an
image cryptsetup formats and fills reads the same in vdisk, and what vdisk
writes into it reads back through dm-crypt.  Then keyslots: a passphrase
vdisk-img amend adds (the first one erased) opens in cryptsetup, and one
cryptsetup adds opens in vdisk.  The guest reaches the shared files
through loop devices (cryptsetup cannot format a 9p file directly: its
block size is not a sector size).  PBKDF2 runs few iterations on both
sides (iter-time=1, 1000 forced): the guest may run under TCG."""
import hashlib
import json
import os
import shlex

import pytest

from conftest import VDISK_IMG, vimg, needs_vdisk_format
from guest import sbin_program

CRYPTSETUP = sbin_program("cryptsetup")
LOSETUP = sbin_program("losetup")
DMSETUP = sbin_program("dmsetup")
PASS = "s3cret pass"
M = 1 << 20
SIZE = 256 * 1024                   # of every image's payload
pytestmark = [
    pytest.mark.skipif(not os.path.exists(VDISK_IMG), reason="vdisk-img not built"),
    pytest.mark.skipif(None in (CRYPTSETUP, LOSETUP, DMSETUP),
                       reason="cryptsetup, losetup or dmsetup is not installed"),
    pytest.mark.xdist_group("guest"),
]


@pytest.fixture(autouse=True)
def _needs():
    needs_vdisk_format("luks")


# (cipher, key bits, mode, IV generator, hash): the cipher families x modes
# x IV generators of LUKS1 both sides accept, each hash at least once.  Key
# bits are the cipher's (an xts key is twice as long).  Not ecb: qemu-img
# 7.2 (and vdisk) write its mode as "ecb-plain64", which dm-crypt refuses,
# and refuse cryptsetup's "ecb".
CASES = [
    ("aes", 256, "xts", "plain64", "sha256"),           # qemu-img's default
    ("aes", 128, "cbc", "essiv:sha256", "sha1"),
    ("aes", 192, "cbc", "plain64", "sha512"),           # qemu-img 7.2 aborts on aes-192
    ("aes", 256, "cbc", "plain", "sha256"),
    ("aes", 256, "ctr", "plain64", "sha384"),
    ("serpent", 256, "xts", "plain64", "sha512"),
    ("serpent", 128, "cbc", "essiv:sha256", "sha224"),
    ("twofish", 128, "cbc", "essiv:sha256", "ripemd160"),
    ("twofish", 256, "xts", "plain64", "sha256"),
    ("cast5", 128, "cbc", "plain64", "sha1"),
]


def spec_of(case):
    """cryptsetup's -c, -s and -h for a case."""
    cipher, bits, mode, ivgen, hash_ = case
    return ("%s-%s-%s" % (cipher, mode, ivgen),
            bits * 2 if mode == "xts" else bits, hash_)


def create_opts(case, iter_time=1):
    """vdisk-img -o options for a case."""
    cipher, bits, mode, ivgen, hash_ = case
    o = ["key-secret=sec0", "iter-time=%d" % iter_time, "cipher-alg=%s-%d" % (cipher, bits),
         "cipher-mode=" + mode, "hash-alg=" + hash_]
    alg, _, ivhash = ivgen.partition(":")
    o.append("ivgen-alg=" + alg)
    if ivhash:
        o.append("ivgen-hash-alg=" + ivhash)
    return ",".join(o)


def case_id(case):
    s, bits, hash_ = spec_of(case)
    return "%s-%d-%s" % (s.replace(":", "-"), bits, hash_)


def secret(pw, sid="sec0"):
    return "secret,id=%s,data=%s" % (sid, pw)


def opts_img(path, sid="sec0"):
    return "driver=luks,key-secret=%s,file.filename=%s" % (sid, path)


def md5(data):
    return hashlib.md5(data).hexdigest()


def read_luks(img, out, pw=PASS):
    """The plaintext of img as vdisk-img reads it."""
    p = vimg("convert", "--object", secret(pw), "--image-opts", opts_img(img), "-O", "raw", out)
    assert p.returncode == 0, p.stderr
    return out.read_bytes()


def write_luks(img, raw, pw=PASS):
    p = vimg("convert", "-n", "--object", secret(pw), "-f", "raw", raw,
             "--target-image-opts", opts_img(img))
    assert p.returncode == 0, p.stderr


def pattern(path, size):
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def keyfile(path, pw):
    path.write_text(pw)             # cryptsetup takes every byte of a key file
    return path


def q(*args):
    return " ".join(shlex.quote(str(a)) for a in args)


# The guest's half: shell functions over cryptsetup and loop devices.
# Each prints what a test compares (md5 sums, sizes) as "key value" lines;
# a failing step fails the script (set -e), and every mapping and loop
# device it opened and did not keep is closed on the way out.
PRELUDE = r"""
set -e
CS=%s LO=%s DM=%s
maps="" loops=""
# without WORD LIST: LIST less WORD.
without() { r=""; for x in $2; do [ "$x" = "$1" ] || r="$r $x"; done; echo $r; }
cleanup() {
    for m in $maps; do $CS close "$m" 2>/dev/null || true; done
    for l in $loops; do $LO -d "$l" 2>/dev/null || true; done
}
trap cleanup EXIT
# attach FILE: a loop device over FILE, in $l.
attach() { l=$($LO -f --show "$1") || return; loops="$l $loops"; }
detach() { $LO -d "$1" || return; loops=$(without "$1" "$loops"); }
# open FILE NAME KEYFILE: dm-crypt mapping NAME of FILE (over a loop device).
open() {
    attach "$1" || return
    $CS open --type luks1 --key-file "$3" "$l" "$2" || { detach "$l"; return 1; }
    maps="$2 $maps"
}
# under NAME: the loop device under mapping NAME.
under() { $DM deps -o devname "$1" | sed -n 's|.*(\(loop[0-9]*\)).*|/dev/\1|p'; }
# close NAME: the mapping and the loop device under it (opened by this
# script or kept by an earlier one).
close() {
    u=$(under "$1"); $CS close "$1"; maps=$(without "$1" "$maps"); detach "$u"
}
# keep NAME: leave mapping NAME open for the next script.
keep() { u=$(under "$1"); maps=$(without "$1" "$maps"); loops=$(without "$u" "$loops"); }
# format FILE KEYFILE CRYPTSETUP-OPTIONS...: a LUKS1 header on FILE.
format() {
    f=$1 k=$2; shift 2
    attach "$f"
    $CS luksFormat --type luks1 -q --pbkdf-force-iterations 1000 --key-file "$k" "$@" "$l"
    detach "$l"
}
size() { echo "size-$1 $(blockdev --getsize64 /dev/mapper/$1)"; }
# md5of NAME KEY: the md5 of mapping NAME, read past the page cache (a
# kept mapping's file may have changed since).
md5of() {
    echo "$2 $(dd if=/dev/mapper/$1 bs=65536 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
}
# fill NAME FILE: the mapping's whole size from FILE (as large or larger).
fill() {
    head -c "$(blockdev --getsize64 /dev/mapper/$1)" "$2" |
        dd of="/dev/mapper/$1" bs=65536 iflag=fullblock conv=fsync 2>/dev/null
}
""" % tuple(shlex.quote(p or "false") for p in (CRYPTSETUP, LOSETUP, DMSETUP))


def in_guest(guest, script, timeout=60):
    """Run script after PRELUDE in the guest: its "key value" lines."""
    r = guest.run(PRELUDE + script, timeout)
    assert r.returncode == 0, "guest script failed (%d): %s\n%s" % (
        r.returncode, r.stderr, r.stdout)
    return dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_cipher_both_ways(tmp_path, guest, case):
    spec, bits, hash_ = spec_of(case)
    key = keyfile(tmp_path / "key", PASS)
    p1, p2 = tmp_path / "p1.raw", tmp_path / "p2.raw"
    d1, d2 = pattern(p1, SIZE), pattern(p2, SIZE)
    # vdisk makes v.luks and writes p1 into it
    v = tmp_path / "v.luks"
    p = vimg("create", "-f", "luks", "--object", secret(PASS), "-o", create_opts(case), v,
             str(SIZE))
    assert p.returncode == 0, p.stderr
    write_luks(v, p1)
    # dm-crypt reads p1 from it and writes p2; cryptsetup formats c.luks
    # (its payload at 2 MiB, SIZE bytes), dm-crypt writes p1 into it and
    # keeps it open (a second cryptsetup open would double the guest's time)
    c = tmp_path / "c.luks"
    with open(c, "wb") as f:
        f.truncate(2 * M + SIZE)
    try:
        out = in_guest(guest, "\n".join([
            q("open", v, "vd", key) + "; size vd; md5of vd read",
            q("fill", "vd", p2) + "; close vd",
            q("format", c, key, "-c", spec, "-s", bits, "-h", hash_, "--align-payload", 4096),
            q("open", c, "cs", key) + "; size cs; " + q("fill", "cs", p1)
            + "; md5of cs written; keep cs"]))
        assert out == {"size-vd": str(SIZE), "read": md5(d1), "size-cs": str(SIZE),
                       "written": md5(d1)}, out
        assert read_luks(v, tmp_path / "v-back.raw") == d2
        # vdisk reads cryptsetup's image (and names its cipher as cryptsetup did)
        info = json.loads(vimg("info", "--output=json", c).stdout)
        fs = info["format-specific"]["data"]
        cipher, kbits, mode, ivgen, _ = case
        alg, _, ivhash = ivgen.partition(":")
        assert (fs["cipher-alg"], fs["cipher-mode"], fs["ivgen-alg"],
                fs.get("ivgen-hash-alg"), fs["hash-alg"], info["virtual-size"]) == (
            "%s-%d" % (cipher, kbits), mode, alg, ivhash or None, hash_, SIZE), fs
        assert read_luks(c, tmp_path / "c-back.raw") == d1
        # vdisk writes p2 into cryptsetup's image; dm-crypt reads it back
        write_luks(c, p2)
        out = in_guest(guest, "md5of cs read; close cs")
        assert out == {"read": md5(d2)}, out
    finally:
        guest.run(PRELUDE + "! [ -e /dev/mapper/cs ] || close cs")


def test_keyslots_both_ways(tmp_path, guest):
    """A passphrase vdisk-img amend adds opens in cryptsetup (the first one
    erased no longer does); one cryptsetup luksAddKey adds opens in vdisk.
    With twofish: the key material is encrypted with the image's cipher."""
    case = ("twofish", 256, "xts", "plain64", "sha256")
    img, raw = tmp_path / "a.luks", tmp_path / "in.raw"
    data = pattern(raw, SIZE)
    p = vimg("convert", "--object", secret(PASS), "-f", "raw", "-O", "luks", "-o",
             create_opts(case), raw, img)
    assert p.returncode == 0, p.stderr
    objs = ["--object", secret(PASS), "--object", secret("second pass", "sec1")]
    p = vimg("amend", *objs, "--image-opts", opts_img(img), "-o",
             "state=active,new-secret=sec1,iter-time=1")
    assert p.returncode == 0, p.stderr
    p = vimg("amend", *objs, "--image-opts", opts_img(img, "sec1"), "-o",
             "state=inactive,old-secret=sec0")
    assert p.returncode == 0, p.stderr
    k0, k1, k2 = (keyfile(tmp_path / ("k%d" % i), pw)
                  for i, pw in enumerate((PASS, "second pass", "third pass")))
    out = in_guest(guest, "\n".join([
        # the erased passphrase fails (cryptsetup: no key available)
        "if %s 2>/dev/null; then echo old opened; else echo old refused; fi"
        % q("open", img, "old", k0),
        q("open", img, "am", k1) + "; md5of am read; close am",
        q("attach", img),
        "$CS luksAddKey --pbkdf-force-iterations 1000 --key-file %s $l %s && echo added 1"
        % (q(k1), q(k2)),
        "detach $l",
    ]))
    assert out == {"old": "refused", "read": md5(data), "added": "1"}, out
    assert read_luks(img, tmp_path / "o.raw", "third pass") == data
    slots = json.loads(vimg("info", "--output=json", img).stdout)[
        "format-specific"]["data"]["slots"]
    assert [s["active"] for s in slots] == [True, True] + [False] * 6
