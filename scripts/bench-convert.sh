#!/usr/bin/env bash
# Benchmark of `diskc convert` (issue 3) against the ways people do it today, side by side on
# the same image, with wall time, peak RSS and ratios (helpers in scripts/bench-lib.sh).
#
# The image: a large Debian tree (scripts/make-bench-tree.sh, debootstrap'd, ≥ 1 GiB) imported
# as the base layer, plus ten layers built by BuildKit that add, delete (whiteouts, an opaque
# directory), replace, chmod/chown, hard-link and multiply files: ≥ 1 GiB and 11 layers. It is
# written once as an OCI layout with skopeo (gzip layers by default) and cached.
#
# From the OCI layout:
#   diskc-convert-oci        diskc convert oci:DIR -o OUT --no-store (the same output as the
#                            peers: an ext4 image in a directory)
#   diskc-convert-oci+store  the same, also kept in a fresh chunk store (chunked, compressed,
#                            made durable): what `diskc convert` does by default
#   umoci+mkfs.ext4          umoci unpack, du for the size, mkfs.ext4 -d
#   floor-decompress         every layer decompressed to /dev/null, one job per core, largest
#                            first (the floor for any converter); -serial: one after another
#   diskc-convert-oci+store-incremental
#                            the bench image plus one new top layer of 10 MiB, converted into a
#                            store that holds the bench image (its ten lower layers saved), the
#                            store alone (restored layers read where the store keeps them):
#                            goal <= 10% of diskc-convert-oci+store, the same bytes (exported)
#                            as a cold conversion of that image
#   diskc-convert-oci+store-incremental-o
#                            the same with -o OUT: the restored layers are copied into OUT's
#                            rootfs, which must hold every byte
# From the Docker daemon:
#   diskc-convert-daemon     diskc convert docker-daemon:IMAGE -o OUT --no-store (+store: as above)
#   docker-export+mkfs.ext4  docker create, docker export | tar -x, du, mkfs.ext4 -d
#   floor-docker-save        docker save IMAGE > /dev/null (the Engine's own export speed),
#                            run in alternation with diskc-convert-daemon
# Peak RSS counts the largest process of each command; the daemon's own memory is not seen.
#
#   scripts/bench-convert.sh        (as root, after scripts/setup.sh; the first run spends some
#                                   minutes making the image and its OCI layout)
#
# Environment: DISKC (a diskc binary; default: cargo build --release), BENCH_RUNS (runs per
# command, median reported; default 1), BENCH_COMPRESSION (gzip or zstd layers in the OCI
# layout; default gzip), BENCH_TREE (a root tree to use instead of make-bench-tree.sh's),
# BENCH_WORK (scratch space, several GiB; default target/bench-convert), BENCH_CACHE (the
# cached OCI layout; default /var/cache/diskc-bench), BENCH_REBUILD=1 (remake the images and
# the layout), BENCH_KEEP=1 (keep the outputs in BENCH_WORK).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=scripts/bench-lib.sh
. "$REPO/scripts/bench-lib.sh"

DOCKER=/usr/bin/docker
BASE_IMAGE=diskc-bench/convert-base:latest
IMAGE=diskc-bench/convert:latest
COMPRESSION=${BENCH_COMPRESSION:-gzip}
WORK=${BENCH_WORK:-$REPO/target/bench-convert}
CACHE=${BENCH_CACHE:-/var/cache/diskc-bench}
OCI=$CACHE/convert-oci-$COMPRESSION
EXPORT_CONTAINER=diskc-bench-export
MIN_BYTES=$((1024 * 1024 * 1024))
MIN_LAYERS=10
JOBS=$(nproc)

say() { printf 'bench-convert: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

case "$COMPRESSION" in gzip | zstd) ;; *) die "BENCH_COMPRESSION must be gzip or zstd" ;; esac
for tool in skopeo umoci mkfs.ext4 e2fsck jq zstd "$DOCKER"; do
  command -v "$tool" >/dev/null || die "$tool missing: run scripts/setup.sh"
done
"$DOCKER" info >/dev/null 2>&1 || die "the Docker daemon does not answer: run scripts/setup.sh"
if command -v pigz >/dev/null; then GUNZIP=pigz; else GUNZIP=gzip; fi

# --- diskc ---------------------------------------------------------------------------------
if [ -z "${DISKC:-}" ]; then
  say "building diskc (release)"
  # All binaries: diskc puts diskc-init, built beside it, into the initrd.
  cargo build --locked --release >&2
  DISKC=${CARGO_TARGET_DIR:-$REPO/target}/release/diskc
fi
# convert also prepares the boot files; give it the kernel the tests and quick start use.
if [ -z "${DISKC_KERNEL:-}" ] && [ -x scripts/fetch-kernel.sh ]; then
  kernel_env=$(scripts/fetch-kernel.sh) || die "scripts/fetch-kernel.sh failed"
  eval "$kernel_env"
  export DISKC_KERNEL DISKC_MODULES
fi
"$DISKC" convert --help >/dev/null 2>&1 || die "$DISKC has no working 'convert' command"

# --- the image -----------------------------------------------------------------------------
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if [ "${BENCH_REBUILD:-0}" = 1 ] || ! have_image "$BASE_IMAGE"; then
  if [ -n "${BENCH_TREE:-}" ]; then
    tree=$BENCH_TREE
  else
    [ -x scripts/make-bench-tree.sh ] || die "scripts/make-bench-tree.sh is missing (or set BENCH_TREE)"
    tree=$(scripts/make-bench-tree.sh | tail -n 1)
  fi
  [ -d "$tree" ] || die "no tree at '$tree'"
  say "importing $tree as $BASE_IMAGE"
  tar --sort=name --numeric-owner --xattrs --xattrs-include='*' -C "$tree" -cf - . \
    | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
fi

# Ten layers over the base, each one RUN: what real images do to a distribution's tree.
context=$WORK/context
mkdir -p "$context"
cat >"$context/Dockerfile" <<EOF
FROM $BASE_IMAGE
# 1: add a tree of 4000 small text files, a config file and 64 MiB of random bytes
RUN mkdir -p /opt/app/src && cd /opt/app/src \\
 && for d in \$(seq 1 40); do mkdir m\$d; for f in \$(seq 1 100); do seq \$d \$f 3000 > m\$d/f\$f.txt; done; done \\
 && echo 'level=info' > /opt/app/conf \\
 && head -c 64M /dev/urandom > /opt/app/blob.bin
# 2: delete whole directories and single files of the base (whiteouts)
RUN rm -rf /usr/share/doc /usr/share/man /usr/share/info /opt/app/src/m1/f1.txt \\
 && (find /usr/share/locale -mindepth 1 -maxdepth 1 -name '[a-m]*' -exec rm -rf {} + 2>/dev/null || true)
# 3: replace the content of 2000 data files of the base (libraries stay: later RUNs need them)
RUN find /usr/share -type f -size +4k 2>/dev/null | sort | awk 'NR % 5 == 0' | head -n 2000 \\
  | while read -r f; do head -c 8192 /dev/urandom > "\$f"; done
# 4: about 200 MiB of compressible text
RUN mkdir -p /var/log/bench && seq 1 12000000 > /var/log/bench/numbers.txt \\
 && yes 'diskc benchmark: a log line that repeats, as logs do' | head -n 2000000 > /var/log/bench/app.log
# 5: a large random file
RUN head -c 192M /dev/urandom > /opt/app/data.bin
# 6: delete it again, and make /opt/app/src a new, opaque directory
RUN rm -f /opt/app/data.bin /opt/app/blob.bin && rm -rf /opt/app/src \\
 && mkdir -p /opt/app/src && echo 'rewritten' > /opt/app/src/README
# 7: metadata only: modes, owners and times of files of lower layers
RUN find /usr/bin -type f | sort | head -n 200 | xargs chmod g+w \\
 && chown -R 1234:5678 /opt/app && touch -d @1600000000 /opt/app/conf
# 8: hard links, symlinks, and file/directory swaps
RUN cp -al /var/log/bench /var/log/bench-links && ln -s /var/log/bench/app.log /app.log \\
 && ln -s ../missing /opt/app/dangling \\
 && rm -rf /opt/app/src && echo 'now a file' > /opt/app/src \\
 && rm -f /opt/app/conf && mkdir -p /opt/app/conf && echo 'level=debug' > /opt/app/conf/app.conf
# 9: one directory of 20000 small files
RUN mkdir -p /srv/many && cd /srv/many \\
 && i=0; while [ \$i -lt 20000 ]; do echo \$i > f\$i; i=\$((i + 1)); done
# 10: a model-sized random file and an updated binary
RUN head -c 96M /dev/urandom > /srv/model.bin && cp /bin/sh /usr/local/bin/app
ENV APP_ENV=bench
WORKDIR /opt/app
CMD ["/usr/local/bin/app", "-c", "echo ready"]
EOF
say "building $IMAGE with BuildKit"
DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$IMAGE" "$context" >/dev/null

image_id=$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE")
layers=$("$DOCKER" image inspect --format '{{len .RootFS.Layers}}' "$IMAGE")
bytes=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")
[ "$layers" -ge "$MIN_LAYERS" ] || die "$IMAGE has $layers layers, fewer than $MIN_LAYERS"
[ "$bytes" -ge "$MIN_BYTES" ] || die "$IMAGE holds $bytes bytes, less than 1 GiB: use a bigger base tree"

# The bench image plus one new top layer of about 10 MiB: what a rebuild whose Dockerfile
# changed in its last line brings.
TOP_IMAGE=diskc-bench/convert-top:latest
mkdir -p "$context/top"
printf 'FROM %s\nRUN head -c 10M /dev/urandom > /srv/top.bin\n' "$IMAGE" >"$context/top/Dockerfile"
DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$TOP_IMAGE" "$context/top" >/dev/null
top_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TOP_IMAGE")
OCI_TOP=$CACHE/convert-top-oci-$COMPRESSION

# --- the OCI layout (made once per image) --------------------------------------------------
if [ "${BENCH_REBUILD:-0}" = 1 ] || [ "$(cat "$OCI.image-id" 2>/dev/null)" != "$image_id" ]; then
  say "writing $IMAGE to $OCI ($COMPRESSION layers)"
  rm -rf "$OCI" "$OCI.image-id"
  mkdir -p "$CACHE"
  skopeo copy -q --dest-compress-format "$COMPRESSION" \
    "docker-daemon:$IMAGE" "oci:$OCI:latest" >/dev/null
  echo "$image_id" >"$OCI.image-id"
fi

if [ "${BENCH_REBUILD:-0}" = 1 ] || [ "$(cat "$OCI_TOP.image-id" 2>/dev/null)" != "$top_id" ]; then
  say "writing $TOP_IMAGE to $OCI_TOP ($COMPRESSION layers)"
  rm -rf "$OCI_TOP" "$OCI_TOP.image-id"
  skopeo copy -q --dest-compress-format "$COMPRESSION" "docker-daemon:$TOP_IMAGE" "oci:$OCI_TOP:latest" >/dev/null
  echo "$top_id" >"$OCI_TOP.image-id"
fi

manifest=$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "latest") | .digest' "$OCI/index.json")
manifest_file=$OCI/blobs/${manifest%%:*}/${manifest#*:}
# "decompressor path" per layer, largest first: how a converter would schedule them.
layer_list=$WORK/layers.txt
jq -r '.layers | sort_by(-.size) | .[] | "\(.mediaType) \(.digest)"' "$manifest_file" \
  | while read -r media digest; do
      case "$media" in
        *gzip) tool=$GUNZIP ;;
        *zstd) tool=zstd ;;
        *tar) tool="cat" ;;
        *) die "unknown layer media type $media" ;;
      esac
      echo "$tool $OCI/blobs/${digest%%:*}/${digest#*:}"
    done >"$layer_list"
compressed=$(jq '[.layers[].size] | add' "$manifest_file")

# --- the commands measured -----------------------------------------------------------------
# A peer's size for mkfs.ext4: what the tree uses, plus room for metadata and a journal.
mkfs_from() {
  local tree=$1 image=$2 used
  used=$(du -s -B1 "$tree" | cut -f1)
  rm -f "$image"
  mkfs.ext4 -q -F -t ext4 -b 4096 -i 8192 -d "$tree" "$image" "$(((used * 12 / 10 + (256 << 20)) / 4096 * 4096))"
}
decompress_layer() { if [ "$1" = cat ]; then cat "$2"; else "$1" -dc "$2"; fi >/dev/null; }
# shellcheck disable=SC2016  # the inner bash's own arguments
floor_parallel() { xargs -P "$JOBS" -n 2 bash -c 'decompress_layer "$0" "$1"' <"$1"; }
floor_serial() {
  local tool blob
  while read -r tool blob; do decompress_layer "$tool" "$blob"; done <"$1"
}
umoci_mkfs() { umoci unpack --image "$1:latest" "$2/bundle" && mkfs_from "$2/bundle/rootfs" "$2/rootfs.ext4"; }
export_mkfs() {
  "$DOCKER" create --name "$EXPORT_CONTAINER" "$1" >/dev/null
  mkdir "$2/tree"
  "$DOCKER" export "$EXPORT_CONTAINER" \
    | tar -x --numeric-owner --xattrs --xattrs-include='*' -C "$2/tree"
  mkfs_from "$2/tree" "$2/rootfs.ext4"
}
docker_save() { "$DOCKER" save "$1" >/dev/null; }
export DOCKER EXPORT_CONTAINER JOBS
export -f mkfs_from decompress_layer floor_parallel floor_serial umoci_mkfs export_mkfs docker_save

OUT=$WORK/out
LOGS=$WORK/logs
mkdir -p "$LOGS"
failures=0

# measure LABEL CMD...: bench_time with CMD's output in LOGS/LABEL.log; a failure is noted
# (with the log's tail) and the benchmark goes on.
measure() {
  local label=$1 log=$LOGS/$1.log
  shift
  : >"$log"
  # shellcheck disable=SC2016  # the inner bash's own arguments
  if ! bench_time "$label" bash -c 'set -euo pipefail; "$@" >>"$0" 2>&1' "$log" "$@"; then
    tail -n 5 "$log" | sed 's/^/    /' >&2
    failures=$((failures + 1))
  fi
}

# measure_alternate LABEL_A LABEL_B CMD_A... -- CMD_B...: the same for two commands run in
# alternation (bench_alternate), for a comparison whose baseline drifts between runs.
measure_alternate() {
  local label_a=$1 label_b=$2 arg in_b=0 cmd_a=() cmd_b=()
  shift 2
  for arg; do
    if [ "$in_b" = 0 ] && [ "$arg" = -- ]; then in_b=1; elif [ "$in_b" = 0 ]; then cmd_a+=("$arg"); else cmd_b+=("$arg"); fi
  done
  : >"$LOGS/$label_a.log"
  : >"$LOGS/$label_b.log"
  # shellcheck disable=SC2016  # the inner bash's own arguments
  local wrap='set -euo pipefail; "$@" >>"$0" 2>&1'
  if ! bench_alternate "$label_a" "$label_b" bash -c "$wrap" "$LOGS/$label_a.log" "${cmd_a[@]}" \
    -- bash -c "$wrap" "$LOGS/$label_b.log" "${cmd_b[@]}"; then
    tail -n 5 "$LOGS/$label_a.log" "$LOGS/$label_b.log" | sed 's/^/    /' >&2
    failures=$((failures + 1))
  fi
}

clean_out() {
  "$DOCKER" rm -f "$EXPORT_CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$OUT"
  mkdir -p "$OUT"
}
BENCH_PREPARE=clean_out

echo "image: $IMAGE, $layers layers, $((bytes >> 20)) MiB unpacked, $((compressed >> 20)) MiB as $COMPRESSION layers in $OCI"
echo "machine: $JOBS cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r), $("$DOCKER" version --format 'Docker Engine {{.Server.Version}}')"
echo

echo "# from the OCI layout"
# Alternated, each run into a fresh store: the store's cost is the difference (issue 13: at
# most 1.25x), and drift on a shared machine reaches both alike.
measure_alternate diskc-convert-oci diskc-convert-oci+store \
  "$DISKC" convert "oci:$OCI:latest" -o "$OUT/diskc" --no-store \
  -- env DISKC_STORE="$OUT/store" "$DISKC" convert "oci:$OCI:latest" -o "$OUT/diskc"
oci_digest=$(jq -r '.rootfs.digest' "$OUT/diskc/manifest.json" 2>/dev/null || echo none)
if [ -s "$OUT/diskc/rootfs.ext4" ]; then
  e2fsck -fn "$OUT/diskc/rootfs.ext4" >"$LOGS/e2fsck-oci.log" 2>&1 \
    || { say "e2fsck -fn found errors in diskc's image (see $LOGS/e2fsck-oci.log)"; failures=$((failures + 1)); }
fi
# A store that holds the bench image, copied afresh before each incremental run.
SEEDED=$WORK/seeded-store
rm -rf "$SEEDED"
DISKC_STORE="$SEEDED" "$DISKC" convert "oci:$OCI:latest" >/dev/null 2>&1 || die "cannot store the bench image in $SEEDED"
BENCH_PREPARE='clean_out; cp -a "$SEEDED" "$OUT/store"' measure diskc-convert-oci+store-incremental \
  env DISKC_STORE="$OUT/store" "$DISKC" convert "oci:$OCI_TOP:latest"
# The last run's image, exported (a second convert is a cache hit that names it).
incremental_id=$(DISKC_STORE="$OUT/store" "$DISKC" --json convert "oci:$OCI_TOP:latest" 2>/dev/null | jq -r .id)
DISKC_STORE="$OUT/store" "$DISKC" export "$incremental_id" -o "$WORK/incremental.ext4" \
  || die "cannot export the incremental image $incremental_id"
BENCH_PREPARE='clean_out; cp -a "$SEEDED" "$OUT/store"' measure diskc-convert-oci+store-incremental-o \
  env DISKC_STORE="$OUT/store" "$DISKC" convert "oci:$OCI_TOP:latest" -o "$OUT/incremental"
"$DISKC" convert "oci:$OCI_TOP:latest" -o "$OUT/top-cold" --no-store >/dev/null 2>&1 || die "cannot convert $OCI_TOP"
incremental_same=yes
cmp -s "$WORK/incremental.ext4" "$OUT/top-cold/rootfs.ext4" || incremental_same=NO
cmp -s "$OUT/incremental/rootfs.ext4" "$OUT/top-cold/rootfs.ext4" || incremental_same=NO
rm -rf "$SEEDED" "$WORK/incremental.ext4"
measure umoci+mkfs.ext4 umoci_mkfs "$OCI" "$OUT"
measure floor-decompress floor_parallel "$layer_list"
measure floor-decompress-serial floor_serial "$layer_list"

echo
echo "# from the Docker daemon"
# The Engine's save time drifts by a fifth between runs here: diskc and save alternate.
measure_alternate diskc-convert-daemon floor-docker-save \
  "$DISKC" convert "docker-daemon:$IMAGE" -o "$OUT/diskc" --no-store -- docker_save "$IMAGE"
measure diskc-convert-daemon+store env DISKC_STORE="$OUT/store" "$DISKC" convert "docker-daemon:$IMAGE" -o "$OUT/diskc"
daemon_digest=$(jq -r '.rootfs.digest' "$OUT/diskc/manifest.json" 2>/dev/null || echo none)
measure docker-export+mkfs.ext4 export_mkfs "$IMAGE" "$OUT"
clean_out

echo
echo "# ratios"
bench_ratio diskc-convert-oci floor-decompress
bench_ratio diskc-convert-oci+store diskc-convert-oci
bench_ratio diskc-convert-oci umoci+mkfs.ext4
bench_ratio diskc-convert-oci+store-incremental diskc-convert-oci+store
bench_ratio diskc-convert-oci+store-incremental-o diskc-convert-oci+store
bench_ratio diskc-convert-oci+store umoci+mkfs.ext4
bench_ratio diskc-convert-daemon floor-docker-save
bench_ratio diskc-convert-daemon docker-export+mkfs.ext4

echo
echo "# goals (issue 3)"
goal() { # NAME OK-EXPRESSION (awk, over a=diskc, b=peer seconds)
  local name=$1 expr=$2 a=${BENCH_SECONDS[$3]:-} b=${BENCH_SECONDS[$4]:-}
  if [ -z "$a" ] || [ -z "$b" ]; then echo "  $name: not measured"; return; fi
  if awk -v a="$a" -v b="$b" "BEGIN { exit !($expr) }"; then echo "  $name: met"; else echo "  $name: NOT met"; fi
}
goal "oci: >= 10x faster than umoci + mkfs.ext4" 'b >= 10 * a' diskc-convert-oci umoci+mkfs.ext4
goal "oci: within 1.5x of the decompression floor" 'a <= 1.5 * b' diskc-convert-oci floor-decompress
goal "daemon: within 1.2x of docker save" 'a <= 1.2 * b' diskc-convert-daemon floor-docker-save
goal "oci: into a fresh store within 1.25x of --no-store (issue 13)" 'a <= 1.25 * b' diskc-convert-oci+store diskc-convert-oci
goal "incremental (one new 10 MiB top layer): <= 10% of a cold conversion into a store" 'a <= 0.1 * b' \
  diskc-convert-oci+store-incremental diskc-convert-oci+store
echo "  incremental rootfs (stored and exported, and with -o) byte-identical to a cold conversion: $incremental_same"
[ "$incremental_same" = yes ] || failures=$((failures + 1))
for label in diskc-convert-oci diskc-convert-oci+store diskc-convert-daemon diskc-convert-daemon+store; do
  rss=${BENCH_RSS_MIB[$label]:-}
  if [ -z "$rss" ]; then echo "  $label peak RSS < 300 MiB: not measured"
  elif awk -v r="$rss" 'BEGIN { exit !(r < 300) }'; then echo "  $label peak RSS < 300 MiB: met ($rss MiB)"
  else echo "  $label peak RSS < 300 MiB: NOT met ($rss MiB)"; fi
done
if [ "$oci_digest" = "$daemon_digest" ] && [ "$oci_digest" != none ]; then
  echo "  same rootfs digest from both sources: yes ($oci_digest)"
else
  echo "  same rootfs digest from both sources: NO (oci $oci_digest, daemon $daemon_digest)"
  failures=$((failures + 1))
fi

[ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$OUT"
[ "$failures" -eq 0 ] || die "$failures command(s) failed; logs in $LOGS"
