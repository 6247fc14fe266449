#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fixtures/fuzz/: small tars in every
form the layer reader knows (ustar, GNU long names, PAX records with newlines and NULs,
global headers, both GNU sparse forms, devices, links), and for `layer` the same as gzip
and zstd blobs. Run it again only to change the seeds; they are committed."""

import gzip
import io
import os
import subprocess
import tarfile
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "fuzz")


def info(name, kind=tarfile.REGTYPE, size=0, **fields):
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.mtime = kind, size, 0o644, 1_700_000_000
    for k, v in fields.items():
        setattr(ti, k, v)
    return ti


def archive(fmt, members):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if data else None)
    return out.getvalue()


def seeds():
    yield "ustar.tar", archive(tarfile.USTAR_FORMAT, [
        (info("etc/", tarfile.DIRTYPE), b""),
        (info("etc/hello", size=6), b"hello\n"),
        (info("etc/sym", tarfile.SYMTYPE, linkname="hello"), b""),
        (info("etc/hard", tarfile.LNKTYPE, linkname="etc/hello"), b""),
        (info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), b""),
        (info("fifo", tarfile.FIFOTYPE), b""),
        (info("d/.wh..wh..opq"), b""),
        (info("d/.wh.gone"), b""),
    ])
    yield "gnu-long.tar", archive(tarfile.GNU_FORMAT, [
        (info("l/" * 80 + "name", size=3), b"abc"),
        (info("link", tarfile.SYMTYPE, linkname="t/" * 80), b""),
    ])
    cap = bytes([1, 0, 0, 2, 0x0A, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    pax = info("new\nline", size=1, uid=4_000_000_000)
    pax.pax_headers = {"mtime": "-100.25", "SCHILY.xattr.user.bin": "\n\0\n",
                       "SCHILY.xattr.security.capability": cap.decode("latin-1")}
    yield "pax.tar", archive(tarfile.PAX_FORMAT, [(pax, b"x")])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global\nheader"}) as t:
        t.addfile(info("after-global", size=1), io.BytesIO(b"g"))
    yield "pax-global.tar", out.getvalue()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "sparse"), "wb") as f:
            # Six segments: more than an old GNU header holds, so an extension block follows.
            f.truncate(6 << 16)
            for at in range(0, 6 << 16, 1 << 16):
                f.seek(at)
                f.write(b"data")
        for fmt in ("gnu", "posix"):
            tar = subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", "-", "-C", d, "sparse"],
                                 check=True, capture_output=True).stdout
            yield f"sparse-{fmt}.tar", tar


def main():
    for target in ("tar_reader", "layer"):
        os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    for name, tar in seeds():
        # The padding to a 10 KiB record adds nothing for a fuzzer: two zero blocks end it.
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.getmembers()
            tar = tar[: t.offset] + b"\0" * 1024
        with open(os.path.join(ROOT, "tar_reader", name), "wb") as f:
            f.write(tar)
        with open(os.path.join(ROOT, "layer", name), "wb") as f:
            f.write(tar)
        with open(os.path.join(ROOT, "layer", name + ".gz"), "wb") as f:
            f.write(gzip.compress(tar, 9, mtime=0))
        zst = subprocess.run(["zstd", "-q", "-c", "-19"], input=tar, check=True, capture_output=True).stdout
        with open(os.path.join(ROOT, "layer", name + ".zst"), "wb") as f:
            f.write(zst)


if __name__ == "__main__":
    main()
