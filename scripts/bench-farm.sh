#!/usr/bin/env bash
# The build farm's cost and gain on one machine: 20 distinct conversions of one image (the
# same image under 20 --source-date-epoch values: 20 job keys, 20 full conversions) run
# locally one after another, then submitted at once to a farm of 1 and of 2 workers (fresh
# caches and a fresh remote prefix each time); and the latency a submission adds to a
# result the farm already has, beside a local cache hit.
#
#   scripts/bench-farm.sh [IMAGE]      (default diskc-test/debian:bookworm, from
#                                      scripts/make-base-images.sh)
#
# Environment: DISKC (a diskc binary; default: cargo build --release), BENCH_WORK (scratch
# space; default target/bench-farm). The workers share this machine's cores with each other
# and with the local run, so 2 workers on 2 cores measure overlap, not a second machine.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
IMAGE=${1:-diskc-test/debian:bookworm}
WORK=${BENCH_WORK:-$REPO/target/bench-farm}
S3S_FS=${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs
NATS_PORT=14015
S3_PORT=18015
JOBS=20

say() { printf 'bench-farm: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v nats-server >/dev/null || die "nats-server missing: run scripts/setup.sh"
[ -x "$S3S_FS" ] || die "$S3S_FS missing: run scripts/setup.sh"
/usr/bin/docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no local image $IMAGE"
if [ -z "${DISKC:-}" ]; then
  cargo build --release --quiet
  DISKC=$REPO/target/release/diskc
fi

rm -rf "$WORK"
mkdir -p "$WORK/s3/diskc"
server_pids=()
worker_pids=()
cleanup() {
  for pid in "${worker_pids[@]}" "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/jetstream" >"$WORK/nats.log" 2>&1 &
server_pids+=($!)
"$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench-secret "$WORK/s3" \
  >"$WORK/s3.log" 2>&1 &
server_pids+=($!)
for port in "$NATS_PORT" "$S3_PORT"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
FARM=nats://127.0.0.1:$NATS_PORT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

say "$JOBS conversions of $IMAGE, locally, one after another"
start=$(now)
for epoch in $(seq "$JOBS"); do
  DISKC_STORE=$WORK/local "$DISKC" convert "docker-daemon:$IMAGE" --source-date-epoch "$epoch" -q >/dev/null
done
local_s=$(since "$start")

# farm_run N OFFSET: N workers, the JOBS conversions submitted at once (epochs after OFFSET,
# so no run finds another's result); sets farm_s.
farm_run() {
  local workers=$1 offset=$2 pids=()
  worker_pids=()
  for i in $(seq "$workers"); do
    "$DISKC" worker --nats "$FARM" --store "s3://diskc/run$workers" --name "w$i" \
      --cache "$WORK/cache-$workers-$i" -q >/dev/null 2>"$WORK/worker-$workers-$i.err" &
    worker_pids+=($!)
  done
  start=$(now)
  for epoch in $(seq $((offset + 1)) $((offset + JOBS))); do
    DISKC_STORE=$WORK/submitter "$DISKC" convert "docker-daemon:$IMAGE" --source-date-epoch "$epoch" \
      --farm "$FARM" -q >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || die "a submission failed"; done
  farm_s=$(since "$start")
  for pid in "${worker_pids[@]}"; do kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; done
  worker_pids=()
}

say "the same through a farm of 1 worker"
farm_run 1 100
one_s=$farm_s
say "the same through a farm of 2 workers"
farm_run 2 200
two_s=$farm_s

say "latency of an answered submission (10 runs), and of a local cache hit"
start=$(now)
for _ in $(seq 10); do
  DISKC_STORE=$WORK/submitter "$DISKC" convert "docker-daemon:$IMAGE" --source-date-epoch 101 --farm "$FARM" -q >/dev/null
done
answered_ms=$(awk -v s="$(since "$start")" 'BEGIN { printf "%.0f", s * 100 }')
start=$(now)
for _ in $(seq 10); do
  DISKC_STORE=$WORK/local "$DISKC" convert "docker-daemon:$IMAGE" --source-date-epoch 1 -q >/dev/null
done
hit_ms=$(awk -v s="$(since "$start")" 'BEGIN { printf "%.0f", s * 100 }')

printf '%-44s %8s\n' "$JOBS conversions of $IMAGE" seconds
printf '%-44s %8s\n' "locally, one after another" "$local_s"
printf '%-44s %8s\n' "farm, 1 worker (submitted at once)" "$one_s"
printf '%-44s %8s\n' "farm, 2 workers (submitted at once)" "$two_s"
printf '%-44s %8s\n' "one submission answered from a result (ms)" "$answered_ms"
printf '%-44s %8s\n' "one local cache hit (ms)" "$hit_ms"
