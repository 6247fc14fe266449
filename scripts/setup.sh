#!/usr/bin/env bash
# Sets up everything diskc's build, tests, benchmarks and quick start need on a Debian or
# Ubuntu machine, and touches nothing that is already there, so a second run takes seconds:
#
#   - Debian packages: the Docker Engine and a registry, e2fsprogs, QEMU, debootstrap, umoci,
#     skopeo, busybox-static, cpio, zstd, pigz, hyperfine, GNU time, util-linux, kmod,
#     nats-server (the build farm's queue), and a C compiler for the crates that build C.
#     `apt-get update` runs only when something is missing.
#   - a Rust toolchain new enough for the crate (rust-version in Cargo.toml);
#   - a running Docker daemon (started in the background when `docker info` gets no answer);
#   - loop devices (the tests mount images read-only through them);
#   - the kernel the boot tests and the quick start boot (scripts/fetch-kernel.sh);
#   - the local base images the examples and tests build FROM (scripts/make-base-images.sh);
#   - s3s-fs, a small S3 server the push/pull tests and scripts/bench-store.sh start on a
#     loopback port (cargo install, pinned; kept in ~/.cargo/bin, skipped when present);
#   - cargo-fuzz, when a nightly toolchain is installed, so scripts/test.sh runs the fuzz
#     targets (cargo install, pinned, kept in ~/.cargo/bin, skipped when present).
#
# It ends with a short summary and the time each phase took.
#
#   scripts/setup.sh       run as root, or as a user who may sudo
#   . scripts/setup.sh     the same, and also exports DISKC_KERNEL and DISKC_MODULES (and a
#                          PATH that finds cargo) into the calling shell
#
# Environment: DISKC_DOCKERD_LOG (default /var/log/diskc-dockerd.log) is where a dockerd
# started here logs; DISKC_BASE_IMAGES (default "busybox debian") picks the base images made.

# Sourced: do the work in a child bash, so that `set -e` and `exit` cannot touch the calling
# shell, then export what the child found.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
  _diskc_setup_env=$(mktemp)
  if bash "${BASH_SOURCE[0]}" --env-out "$_diskc_setup_env"; then
    set -a
    # shellcheck disable=SC1090
    . "$_diskc_setup_env"
    set +a
    rm -f "$_diskc_setup_env"
    unset _diskc_setup_env
    return 0
  else
    _diskc_setup_rc=$?
    rm -f "$_diskc_setup_env"
    unset _diskc_setup_env
    return "$_diskc_setup_rc"
  fi
fi

set -euo pipefail

env_out=
if [ "${1:-}" = --env-out ]; then
  env_out=$2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=/usr/bin/docker
DOCKERD_LOG=${DISKC_DOCKERD_LOG:-/var/log/diskc-dockerd.log}
read -r -a BASE_IMAGES <<<"${DISKC_BASE_IMAGES:-busybox debian}"
# The oldest rustc that builds the crate.
RUST_MIN=$(sed -n 's/^rust-version *= *"\([0-9.]*\)"/\1/p' "$REPO/Cargo.toml")
RUST_MIN=${RUST_MIN:-1.85}

PACKAGES=(
  docker.io docker-registry      # the Engine (with BuildKit) and a registry for docker:// tests
  e2fsprogs util-linux           # e2fsck, debugfs, mkfs.ext4 (the peer); mount, losetup
  qemu-system-x86 qemu-system-data  # diskc boot (qboot.rom is in -data)
  qemu-utils                     # qemu-img, qemu-io: NBD clients for the diskc serve tests
  kmod                           # modprobe, and depmod for fetch-kernel.sh
  debootstrap debian-archive-keyring  # the Debian base image and the benchmark tree
  umoci skopeo                   # OCI layouts: peers and fixtures
  busybox-static cpio            # the busybox base image; initrd checks
  zstd pigz                      # zstd layers; the decompression floor
  hyperfine time                 # benchmarks: repeated timing, GNU time for peak RSS
  jq                             # reading OCI manifests in the benchmark scripts
  b3sum                          # checks a rootfs against its manifest's BLAKE3 digest
  apache2-utils                  # htpasswd, for the registry basic-auth tests
  openssl bsdutils               # a self-signed certificate for the TLS registry test; script(1)
  nats-server                    # the build farm's queue (JetStream): tests, scripts/farm.sh
  eatmydata                      # benchmarks: mkfs.ext4 -d without its fsyncs, like for like
  gcc libc6-dev                  # crates with C parts (ring, zstd-sys); static diskc-init
  ca-certificates git
)

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
else
  command -v sudo >/dev/null || { echo "setup: not root and no sudo: run as root" >&2; exit 3; }
  SUDO=(sudo)
fi

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 3; }

PHASES=()
SECONDS_AT=0
phase_start() { SECONDS_AT=$(date +%s.%N); log "$1..."; }
phase_end() {
  local took
  took=$(awk -v a="$SECONDS_AT" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  PHASES+=("$(printf '%-14s %6ss  %s' "$1" "$took" "$2")")
}

apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return 0
  log "apt-get update"
  "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
  apt_updated=1
}
apt_install() {
  apt_update
  log "installing $*"
  local out
  out=$(mktemp)
  # NEEDRESTART_SUSPEND: needrestart's hook would otherwise ask about services on stdin.
  if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "$@" >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    rm -f "$out"
    die "apt-get install $* failed"
  fi
  rm -f "$out"
}

# Debian packages from PACKAGES that are not installed (one dpkg-query for all of them).
missing_packages() {
  local wanted=("${PACKAGES[@]}")
  # Docker's own packaging conflicts with docker.io and provides the same daemon.
  if dpkg-query -W -f='${db:Status-Abbrev}' docker-ce 2>/dev/null | grep -q '^ii'; then
    wanted=("${wanted[@]/docker.io/}")
  fi
  local installed
  installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${wanted[@]}" 2>/dev/null \
    | awk '$1 == "ii" { print $2 }' || true)
  local p
  for p in "${wanted[@]}"; do
    [ -n "$p" ] || continue
    grep -qx -- "$p" <<<"$installed" || echo "$p"
  done
}

do_packages() {
  phase_start packages
  local missing
  mapfile -t missing < <(missing_packages)
  if [ ${#missing[@]} -eq 0 ]; then
    phase_end packages "all present"
  else
    apt_install "${missing[@]}"
    phase_end packages "installed ${missing[*]}"
  fi
}

# "1.95.0" → 1095 (major*1000+minor), enough to compare toolchain versions.
version_key() { awk -F. '{ printf "%d", $1 * 1000 + $2 }' <<<"$1"; }

do_rust() {
  phase_start rust
  if ! command -v cargo >/dev/null; then
    local home
    for home in "$HOME" "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
      if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
        PATH="$home/.cargo/bin:$PATH"
        break
      fi
    done
  fi
  local note
  if command -v cargo >/dev/null; then
    note="found $(command -v cargo)"
  else
    # No toolchain: Debian's is fine when it is new enough (bookworm's 1.63 is not).
    local candidate
    candidate=$(apt-cache policy rustc 2>/dev/null | awk '/Candidate:/ { print $2 }')
    case "$candidate" in "" | "(none)")
      apt_update
      candidate=$(apt-cache policy rustc 2>/dev/null | awk '/Candidate:/ { print $2 }') ;;
    esac
    local upstream=${candidate#*:}
    upstream=${upstream%%[+~-]*}
    if [ -n "$upstream" ] && [ "$upstream" != "(none)" ] \
      && [ "$(version_key "$upstream")" -ge "$(version_key "$RUST_MIN")" ]; then
      apt_install cargo rustc
      note="installed Debian's cargo/rustc $upstream"
    else
      die "no Rust toolchain, and this system's rustc package (${candidate:-none}) is older than $RUST_MIN, which diskc needs: install a current toolchain with rustup (see rustup.rs), then run scripts/setup.sh again"
    fi
  fi
  local have
  have=$(rustc --version | awk '{ print $2 }')
  if [ "$(version_key "$have")" -lt "$(version_key "$RUST_MIN")" ]; then
    die "rustc $have is older than $RUST_MIN, which diskc needs: update it (rustup update stable)"
  fi
  phase_end rust "rustc $have, $note"
}

docker_answers() { "${SUDO[@]}" "$DOCKER" info >/dev/null 2>&1; }

do_docker() {
  phase_start docker
  if docker_answers; then
    phase_end docker "daemon answers"
    return 0
  fi
  local pid=
  if [ -d /run/systemd/system ] && "${SUDO[@]}" systemctl start docker 2>/dev/null; then
    :
  else
    local dockerd
    dockerd=$(command -v dockerd || echo /usr/sbin/dockerd)
    [ -x "$dockerd" ] || die "dockerd not found (apt-get install docker.io)"
    # setsid: the daemon outlives this script and the terminal it ran from.
    # shellcheck disable=SC2016  # $1 and $2 are the inner sh's arguments
    pid=$("${SUDO[@]}" sh -c 'setsid "$1" >>"$2" 2>&1 </dev/null & echo $!' sh "$dockerd" "$DOCKERD_LOG")
  fi
  local i
  for i in $(seq 1 120); do
    docker_answers && break
    if [ -n "$pid" ] && ! "${SUDO[@]}" kill -0 "$pid" 2>/dev/null; then
      "${SUDO[@]}" tail -n 5 "$DOCKERD_LOG" >&2 || true
      die "dockerd exited at start; see $DOCKERD_LOG"
    fi
    sleep 0.5
  done
  docker_answers || die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
  phase_end docker "started dockerd (log: $DOCKERD_LOG) after ${i} tries"
}

do_loop() {
  phase_start loop
  if ! "${SUDO[@]}" losetup -f >/dev/null 2>&1; then
    # Kernels with loop as a module need it loaded; built-in loop needs nothing.
    "${SUDO[@]}" modprobe loop 2>/dev/null || true
  fi
  local dev
  dev=$("${SUDO[@]}" losetup -f 2>/dev/null) || die "no free loop device (losetup -f failed; is the loop driver available?)"
  # Without devtmpfs (some containers) the node of a freshly allocated device is not made.
  if [ ! -b "$dev" ]; then
    "${SUDO[@]}" mknod "$dev" b 7 "${dev#/dev/loop}" || die "cannot create $dev"
  fi
  phase_end loop "next free: $dev"
}

KERNEL_ENV=
do_kernel() {
  phase_start kernel
  local script="$REPO/scripts/fetch-kernel.sh"
  if [ ! -e "$script" ]; then
    log "warning: $script is not in this checkout; boot tests and the quick start will find no kernel"
    phase_end kernel "skipped: scripts/fetch-kernel.sh absent"
    return 0
  fi
  # fetch-kernel.sh resolves the package through apt's lists, which a fresh machine lacks.
  if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    apt_update
  fi
  KERNEL_ENV=$("${SUDO[@]}" "$script") || die "scripts/fetch-kernel.sh failed"
  eval "$KERNEL_ENV"
  if [ -z "${DISKC_KERNEL:-}" ] || [ -z "${DISKC_MODULES:-}" ]; then
    die "scripts/fetch-kernel.sh printed no DISKC_KERNEL/DISKC_MODULES lines"
  fi
  export DISKC_KERNEL DISKC_MODULES
  phase_end kernel "$DISKC_KERNEL"
}

do_base_images() {
  phase_start base-images
  "${SUDO[@]}" "$REPO/scripts/make-base-images.sh" "${BASE_IMAGES[@]}" >&2 \
    || die "scripts/make-base-images.sh ${BASE_IMAGES[*]} failed"
  phase_end base-images "${BASE_IMAGES[*]}"
}

# s3s-fs 0.14.1 is the newest release that builds with the rustc this project pins as its
# floor; the binary is kept where cargo installs it, so later runs find it and skip.
S3S_FS_VERSION=0.14.1
do_s3_server() {
  phase_start s3-server
  local bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
    phase_end s3-server "found $bin"
    return
  fi
  cargo install --locked "s3s-fs@$S3S_FS_VERSION" --features binary >&2 \
    || die "cargo install s3s-fs@$S3S_FS_VERSION failed"
  phase_end s3-server "installed s3s-fs $S3S_FS_VERSION"
}

# cargo-fuzz drives the fuzz targets (fuzz/), which need nightly's sanitizers; without a
# nightly toolchain there is nothing for it to drive, and scripts/test.sh says so.
CARGO_FUZZ_VERSION=0.13.2
do_cargo_fuzz() {
  phase_start cargo-fuzz
  if ! cargo +nightly --version >/dev/null 2>&1; then
    phase_end cargo-fuzz "skipped: no nightly toolchain"
    return
  fi
  local bin="${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    phase_end cargo-fuzz "found $bin"
    return
  fi
  cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION" >&2 \
    || die "cargo install cargo-fuzz@$CARGO_FUZZ_VERSION failed"
  phase_end cargo-fuzz "installed cargo-fuzz $CARGO_FUZZ_VERSION"
}

started=$(date +%s.%N)
do_packages
do_rust
do_docker
do_loop
do_kernel
do_base_images
do_s3_server
do_cargo_fuzz
total=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

{
  echo "setup: done in ${total}s"
  for line in "${PHASES[@]}"; do echo "  $line"; done
  if [ -n "${DISKC_KERNEL:-}" ]; then
    echo "  DISKC_KERNEL=$DISKC_KERNEL"
    echo "  DISKC_MODULES=$DISKC_MODULES"
  fi
} >&2

if [ -n "$env_out" ]; then
  {
    printf 'PATH=%q\n' "$PATH"
    if [ -n "${DISKC_KERNEL:-}" ]; then
      printf 'DISKC_KERNEL=%q\n' "$DISKC_KERNEL"
      printf 'DISKC_MODULES=%q\n' "$DISKC_MODULES"
    fi
  } >"$env_out"
elif [ -n "${DISKC_KERNEL:-}" ]; then
  echo "setup: to use this kernel in your shell: . scripts/setup.sh, or eval \"\$(scripts/fetch-kernel.sh)\"" >&2
fi
