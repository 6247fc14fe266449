#!/usr/bin/env bash
# Push and pull of one image through diskc's store against a local S3 server (s3s-fs on a
# loopback port), beside `docker push` and `docker pull` of the same image to and from a local
# registry (scripts/start-registry.sh): wall time and bytes moved.
#
#   scripts/bench-store.sh [IMAGE]     (default diskc-bench/convert:latest, the image
#                                      scripts/bench-convert.sh builds; any local Docker
#                                      image will do)
#
# Environment: DISKC (a diskc binary; default: cargo build --release), BENCH_WORK (scratch
# space; default target/bench-store).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DOCKER=/usr/bin/docker
IMAGE=${1:-diskc-bench/convert:latest}
WORK=${BENCH_WORK:-$REPO/target/bench-store}
S3S_FS=${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs
S3_PORT=18014
REGISTRY_PORT=15014

say() { printf 'bench-store: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ -x "$S3S_FS" ] || die "$S3S_FS missing: run scripts/setup.sh"
"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || die "no local image $IMAGE"
if [ -z "${DISKC:-}" ]; then
  cargo build --release --quiet
  DISKC=$REPO/target/release/diskc
fi

rm -rf "$WORK"
mkdir -p "$WORK/s3/diskc" "$WORK/registry"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/registry/registry.pid" ] && kill "$(cat "$WORK/registry/registry.pid")" 2>/dev/null || true
}
trap cleanup EXIT

"$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench-secret "$WORK/s3" \
  >"$WORK/s3.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break; sleep 0.1; done
scripts/start-registry.sh "$REGISTRY_PORT" "$WORK/registry" >/dev/null

export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
REMOTE=s3://diskc/bench

# seconds CMD...: runs CMD, prints its wall time; its stdout goes to $WORK/last.out.
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >"$WORK/last.out"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

say "converting $IMAGE into a fresh store"
DISKC_STORE=$WORK/here "$DISKC" convert "docker-daemon:$IMAGE" -t bench -q >/dev/null
push_s=$(seconds env DISKC_STORE="$WORK/here" "$DISKC" push --json bench "$REMOTE")
push_bytes=$(jq .transferred_bytes "$WORK/last.out")
pull_s=$(seconds env DISKC_STORE="$WORK/there" "$DISKC" pull --json bench "$REMOTE")
pull_bytes=$(jq .transferred_bytes "$WORK/last.out")
again_s=$(seconds env DISKC_STORE="$WORK/there" "$DISKC" pull --json bench "$REMOTE")
again_bytes=$(jq .transferred_bytes "$WORK/last.out")

TAG=127.0.0.1:$REGISTRY_PORT/bench/store:latest
"$DOCKER" tag "$IMAGE" "$TAG"
dpush_s=$(seconds "$DOCKER" push -q "$TAG")
# docker pull skips layers the daemon has: every image sharing a layer with IMAGE (the bench
# image's base) is saved aside and removed first, so that the pull, like diskc's into an
# empty store, fetches everything; they are loaded back afterwards (untimed).
# Layers BuildKit's build cache still references stay in the daemon all the same (the
# script does not prune a shared daemon's cache): then the pull fetches nothing, and says so.
layers=$("$DOCKER" image inspect --format '{{join .RootFS.Layers " "}}' "$IMAGE")
sharing=()
while read -r ref; do
  [ "$ref" = "$IMAGE" ] || [ "$ref" = "$TAG" ] || [ "$ref" = "<none>:<none>" ] && continue
  first=$("$DOCKER" image inspect --format '{{index .RootFS.Layers 0}}' "$ref")
  case " $layers " in *" $first "*) sharing+=("$ref") ;; esac
done < <("$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}')
if [ "${#sharing[@]}" -gt 0 ]; then
  say "saving ${sharing[*]} aside (they share layers with $IMAGE)"
  "$DOCKER" save -o "$WORK/sharing.tar" "${sharing[@]}"
  "$DOCKER" rmi -f "${sharing[@]}" >/dev/null
fi
"$DOCKER" rmi -f "$TAG" "$IMAGE" >/dev/null
dpull_s=$(seconds "$DOCKER" pull -q "$TAG")
"$DOCKER" tag "$TAG" "$IMAGE"
"$DOCKER" rmi "$TAG" >/dev/null
if [ "${#sharing[@]}" -gt 0 ]; then
  "$DOCKER" load -q -i "$WORK/sharing.tar" >/dev/null
  rm -f "$WORK/sharing.tar"
fi
registry_bytes=$(du -sb "$WORK/registry/storage" | cut -f1)

printf '%-28s %8s %14s\n' step seconds bytes
printf '%-28s %8s %14s\n' "diskc push (empty remote)" "$push_s" "$push_bytes"
printf '%-28s %8s %14s\n' "diskc pull (empty store)" "$pull_s" "$pull_bytes"
printf '%-28s %8s %14s\n' "diskc pull (again)" "$again_s" "$again_bytes"
printf '%-28s %8s %14s\n' "docker push (empty registry)" "$dpush_s" "$registry_bytes"
printf '%-28s %8s %14s\n' "docker pull (image removed)" "$dpull_s" "$registry_bytes"
if awk -v s="$dpull_s" 'BEGIN { exit !(s < 1) }'; then
  say "docker pull took under a second: the daemon still had the layers (BuildKit's cache), so it fetched nothing"
fi
