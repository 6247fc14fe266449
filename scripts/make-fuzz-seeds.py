#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fixtures/fuzz/: small tars in every
form the layer reader knows (ustar, GNU long names, PAX records with newlines and NULs,
global headers, both GNU sparse forms, devices, links), and for `layer` the same as gzip
and zstd blobs; the JSON documents of an image (`oci_json`); image references
(`reference`); and for the targets that decode their input as a stream of choices
(`layer_merge`, `ext4_write`) a few fixed pseudo-random inputs. Run it again only to change
the seeds; they are committed."""

import gzip
import io
import json
import os
import random
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


def digest(c):
    return "sha256:" + c * 64


def json_seeds():
    platform = {"os": "linux", "architecture": "arm", "variant": "v7"}
    yield "index.json", {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest("a"), "size": 7,
         "platform": platform, "annotations": {"org.opencontainers.image.ref.name": "latest"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest("b"), "size": 9,
         "platform": {"os": "linux", "architecture": "amd64"}, "annotations": None}]}
    yield "manifest.json", {"schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest("c"), "size": 10},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest("1"), "size": 20}]}
    yield "config.json", {"architecture": "amd64", "os": "linux", "config": {
        "Env": ["PATH=/bin"], "Cmd": None, "Entrypoint": ["/bin/sh", "-c"], "WorkingDir": "/w",
        "User": "1000:1000", "Labels": {"a": "b"}, "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM"},
        "rootfs": {"type": "layers", "diff_ids": [digest("d")]}, "history": []}
    yield "archive-manifest.json", [{"Config": "c.json", "RepoTags": ["busybox:latest"],
                                     "Layers": ["l/layer.tar", "blobs/sha256/" + "e" * 64]}]


REFERENCES = [
    "docker://busybox", "docker://localhost:5000/a/b:v1.2", "docker://ghcr.io/o/r@" + digest("f"),
    "docker-daemon:debian:bookworm", "docker-daemon:" + digest("0"), "docker-daemon:my.host/x/y@" + digest("9"),
    "oci:dir:ref", "oci-archive:/tmp/image.tar", "docker-archive:save.tar:busybox:1", "sha256:" + "ab" * 32,
]


def main():
    for target, docs in (("oci_json", json_seeds()),):
        os.makedirs(os.path.join(ROOT, target), exist_ok=True)
        for name, doc in docs:
            with open(os.path.join(ROOT, target, name), "w") as f:
                json.dump(doc, f)
    os.makedirs(os.path.join(ROOT, "reference"), exist_ok=True)
    for i, ref in enumerate(REFERENCES):
        with open(os.path.join(ROOT, "reference", f"ref-{i}"), "w") as f:
            f.write(ref)
    for target in ("layer_merge", "ext4_write"):
        os.makedirs(os.path.join(ROOT, target), exist_ok=True)
        for i, size in enumerate((16, 64, 256, 1024)):
            with open(os.path.join(ROOT, target, f"random-{size}"), "wb") as f:
                f.write(random.Random(f"{target}-{i}").randbytes(size))

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
