#!/usr/bin/env bash
# A local build farm: nats-server with JetStream, s3s-fs as the shared store, and N diskc
# workers, all on loopback ports, until Ctrl-C. Submit to it from another shell with the
# exports it prints:
#
#   scripts/farm.sh [N]            (default 2 workers)
#   diskc build examples/hello --farm nats://127.0.0.1:4222 --pull
#   diskc farm status --nats nats://127.0.0.1:4222
#
# Environment: DISKC (a diskc binary; default: cargo build --release), FARM_DIR (the
# servers' data and the workers' caches and logs; default target/farm), NATS_PORT (4222),
# S3_PORT (9014). nats-server and s3s-fs come from scripts/setup.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKERS=${1:-2}
DIR=${FARM_DIR:-$REPO/target/farm}
NATS_PORT=${NATS_PORT:-4222}
S3_PORT=${S3_PORT:-9014}
S3S_FS=${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs

say() { printf 'farm: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v nats-server >/dev/null || die "nats-server missing: run scripts/setup.sh"
[ -x "$S3S_FS" ] || die "$S3S_FS missing: run scripts/setup.sh"
if [ -z "${DISKC:-}" ]; then
  (cd "$REPO" && cargo build --release --quiet)
  DISKC=$REPO/target/release/diskc
fi

mkdir -p "$DIR/jetstream" "$DIR/s3/diskc" "$DIR/logs"
pids=()
stop() {
  # Workers first (SIGTERM drains them), then the servers.
  for pid in "${pids[@]:2}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:2}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:0:2}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 0' INT TERM

wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  die "nothing listens on port $1 (see $DIR/logs)"
}

nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DIR/jetstream" >"$DIR/logs/nats.log" 2>&1 &
pids+=($!)
"$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key farm --secret-key farm-secret "$DIR/s3" \
  >"$DIR/logs/s3.log" 2>&1 &
pids+=($!)
wait_port "$NATS_PORT"
wait_port "$S3_PORT"

export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=farm AWS_SECRET_ACCESS_KEY=farm-secret \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
for i in $(seq "$WORKERS"); do
  "$DISKC" worker --nats "nats://127.0.0.1:$NATS_PORT" --store s3://diskc/farm --name "worker-$i" \
    --cache "$DIR/cache-$i" --json >"$DIR/logs/worker-$i.jsonl" 2>"$DIR/logs/worker-$i.err" &
  pids+=($!)
done

say "nats://127.0.0.1:$NATS_PORT, store s3://diskc/farm, $WORKERS workers (logs in $DIR/logs); Ctrl-C stops it"
cat <<EXPORTS
export AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=farm AWS_SECRET_ACCESS_KEY=farm-secret \\
       AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
EXPORTS
wait "${pids[@]}"
