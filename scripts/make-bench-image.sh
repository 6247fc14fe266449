#!/usr/bin/env bash
# Writes the generated image `benches/convert.rs` converts: an OCI layout of 11 gzip layers,
# about 1.1 GiB unpacked, with whiteouts, an opaque directory, replaced files, hard links and
# symlinks; file data half random, half text (it compresses about like a distribution's
# tree). Two references in one layout, sharing their blobs:
#   base          the 11 layers
#   top-changed   the same 10 lower layers and another top layer (about 10 MiB)
# Deterministic (a fixed seed, fixed times): the same bytes on every machine. Idempotent: a
# complete layout is reused. Prints the layout's path.
#
#   scripts/make-bench-image.sh [DIR]     (default target/bench-image)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:-${CARGO_TARGET_DIR:-$REPO/target}/bench-image}
VERSION=1

if [ "$(cat "$DIR/.complete" 2>/dev/null)" = "$VERSION" ]; then
  echo "$DIR"
  exit 0
fi
command -v python3 >/dev/null || { echo "make-bench-image: python3 missing" >&2; exit 1; }
rm -rf "$DIR"
mkdir -p "$DIR/blobs/sha256"
python3 - "$DIR" <<'EOF'
import gzip, hashlib, io, json, os, random, sys, tarfile

out = sys.argv[1]
MIB = 1 << 20
MTIME = 1_700_000_000
WORDS = b"the quick brown fox jumps over lazy dogs while diskc writes ext4 images from layers".split()


class Layer:
    """A layer tar written through gzip into a blob, hashed both ways on the way."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.tmp = os.path.join(out, "blobs", "tmp")
        self.blob = open(self.tmp, "wb")
        self.blob_hash = hashlib.sha256()
        self.tar_hash = hashlib.sha256()
        self.gz = gzip.GzipFile(fileobj=self, mode="wb", compresslevel=1, mtime=0)
        self.tar = tarfile.open(fileobj=_Tee(self), mode="w|", format=tarfile.PAX_FORMAT)
        self.bytes = 0

    def write(self, b):  # the gzip stream
        self.blob_hash.update(b)
        self.blob.write(b)
        return len(b)

    def flush(self):
        pass

    def _info(self, path, kind, mode):
        t = tarfile.TarInfo(path)
        t.type, t.mode, t.mtime, t.uid, t.gid = kind, mode, MTIME, 0, 0
        return t

    def dir(self, path):
        self.tar.addfile(self._info(path, tarfile.DIRTYPE, 0o755))

    def file(self, path, data, mode=0o644):
        t = self._info(path, tarfile.REGTYPE, mode)
        t.size = len(data)
        self.tar.addfile(t, io.BytesIO(data))
        self.bytes += len(data)

    def whiteout(self, path):
        head, name = os.path.split(path)
        self.file(os.path.join(head, ".wh." + name), b"")

    def opaque(self, path):
        self.file(os.path.join(path, ".wh..wh..opq"), b"")

    def link(self, path, target, hard):
        t = self._info(path, tarfile.LNKTYPE if hard else tarfile.SYMTYPE, 0o777)
        t.linkname = target
        self.tar.addfile(t)

    def data(self, size):
        """Half random, half text, in 64 KiB pieces."""
        parts, left = [], size
        while left > 0:
            n = min(left, 64 << 10)
            if self.rng.random() < 0.5:
                parts.append(self.rng.randbytes(n))
            else:
                text = b" ".join(self.rng.choice(WORDS) for _ in range(n // 4))
                parts.append((text + b"\n" * n)[:n])
            left -= n
        return b"".join(parts)

    def finish(self):
        self.tar.close()
        self.gz.close()
        self.blob.close()
        digest = self.blob_hash.hexdigest()
        size = os.path.getsize(self.tmp)
        os.rename(self.tmp, os.path.join(out, "blobs", "sha256", digest))
        return {
            "descriptor": {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + digest,
                "size": size,
            },
            "diff_id": "sha256:" + self.tar_hash.hexdigest(),
            "bytes": self.bytes,
        }


class _Tee:
    def __init__(self, layer):
        self.layer = layer

    def write(self, b):
        self.layer.tar_hash.update(b)
        self.layer.gz.write(b)
        return len(b)


def sizes(rng, total):
    """File sizes summing to about `total`: many small ones, some large ones."""
    out, left = [], total
    while left > 0:
        r = rng.random()
        n = rng.randint(100, 64 << 10) if r < 0.85 else rng.randint(1 * MIB, 8 * MIB)
        n = min(n, left)
        out.append(n)
        left -= n
    return out


def base_layer():
    l = Layer(0)
    for d in range(64):
        l.dir(f"d{d:02}")
        for i, n in enumerate(sizes(l.rng, 680 * MIB // 64)):
            l.file(f"d{d:02}/f{i:04}", l.data(n))
    l.dir("etc")
    l.file("etc/conf", b"base\n")
    return l.finish()


def middle_layer(k):
    l = Layer(k)
    l.dir(f"layer{k}")
    for i, n in enumerate(sizes(l.rng, 40 * MIB)):
        l.file(f"layer{k}/f{i:04}", l.data(n))
    # Replace files of the base, delete others and a whole directory.
    for i in range(20):
        l.file(f"d{(k * 7 + i) % 64:02}/f{i:04}", l.data(l.rng.randint(1000, 200_000)))
    for i in range(20, 40):
        l.whiteout(f"d{(k * 5 + i) % 64:02}/f{i:04}")
    l.whiteout(f"d{(k * 6 + 3) % 64:02}")
    if k == 5:
        l.dir("d10")
        l.opaque("d10")
        l.file("d10/new", l.data(300_000))
    if k == 7:
        l.link("layer7/hard", "layer7/f0000", True)
        l.link("layer7/soft", "../etc/conf", False)
    l.file("etc/conf", f"layer {k}\n".encode())
    return l.finish()


def top_layer(seed):
    l = Layer(seed)
    l.dir("app")
    for i, n in enumerate(sizes(l.rng, 10 * MIB)):
        l.file(f"app/f{i:04}", l.data(n))
    return l.finish()


def put(doc):
    b = json.dumps(doc, sort_keys=True).encode()
    digest = hashlib.sha256(b).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(b)
    return {"digest": "sha256:" + digest, "size": len(b)}


lower = [base_layer()] + [middle_layer(k) for k in range(1, 10)]
manifests = []
for ref, top in (("base", top_layer(100)), ("top-changed", top_layer(200))):
    layers = lower + [top]
    config = put({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
    })
    manifest = put({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": [l["descriptor"] for l in layers],
    })
    manifests.append(dict(manifest, mediaType="application/vnd.oci.image.manifest.v1+json",
                          annotations={"org.opencontainers.image.ref.name": ref}))
    print(f"make-bench-image: {ref}: {len(layers)} layers, "
          f"{sum(l['bytes'] for l in layers) / MIB:.0f} MiB of file data, "
          f"{sum(l['descriptor']['size'] for l in layers) / MIB:.0f} MiB compressed", file=sys.stderr)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": manifests}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
EOF
echo "$VERSION" >"$DIR/.complete"
echo "$DIR"
