#!/usr/bin/env bash
# Starts Debian's docker-registry (distribution 2.x) on 127.0.0.1:PORT in the background,
# storing blobs under DIR/storage, for the registry tests and the benchmarks. Writes its pid
# to DIR/registry.pid and its log to DIR/registry.log, and returns once /v2/ answers.
#
#   scripts/start-registry.sh PORT DIR
#
# Authentication, off by default, is switched on through the registry's own environment
# overrides, e.g. basic auth:
#   REGISTRY_AUTH=htpasswd REGISTRY_AUTH_HTPASSWD_REALM=diskc \
#   REGISTRY_AUTH_HTPASSWD_PATH=/path/htpasswd scripts/start-registry.sh PORT DIR
# or TLS: REGISTRY_HTTP_TLS_CERTIFICATE=cert.pem REGISTRY_HTTP_TLS_KEY=key.pem.
# Stop it with: kill "$(cat DIR/registry.pid)"
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 PORT DIR" >&2; exit 1; }
PORT=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
REGISTRY=${REGISTRY_BIN:-/usr/bin/docker-registry}
[ -x "$REGISTRY" ] || { echo "start-registry: $REGISTRY missing (apt-get install docker-registry)" >&2; exit 1; }

mkdir -p "$DIR/storage"
cat > "$DIR/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
YAML

# setsid: the registry outlives this script and is not killed with the caller's
# process group; its pid file is how it is stopped.
setsid "$REGISTRY" serve "$DIR/config.yml" >"$DIR/registry.log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$DIR/registry.pid"

for _ in $(seq 1 100); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start-registry: docker-registry exited; log follows" >&2
    cat "$DIR/registry.log" >&2
    exit 1
  fi
  # 200 without auth, 401 with it: either way the registry is serving. (bash's /dev/tcp:
  # no HTTP client needed.)
  status=$( (exec 3<>"/dev/tcp/127.0.0.1/$PORT" && printf 'GET /v2/ HTTP/1.0\r\n\r\n' >&3 && head -n1 <&3) 2>/dev/null || true)
  case "$status" in "HTTP/1."?" 200"*|"HTTP/1."?" 401"*) exit 0 ;; esac
  # Serving TLS (REGISTRY_HTTP_TLS_CERTIFICATE): a plain request gets Go's 400.
  if [ -n "${REGISTRY_HTTP_TLS_CERTIFICATE:-}" ]; then
    case "$status" in "HTTP/1."?" 400"*) exit 0 ;; esac
  fi
  sleep 0.1
done
echo "start-registry: no answer on 127.0.0.1:$PORT/v2/ after 10 s; log in $DIR/registry.log" >&2
kill "$pid" 2>/dev/null || true
exit 1
