#!/usr/bin/env bash
# Prepares a fresh Debian machine to build, test and run raftkv. Idempotent; safe to re-run.
# The README's quick start and .ci/run both call it: every install step lives here.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages:
#   etcd-client  - stock `etcdctl`, the compatibility tests' client
#   etcd-server  - the reference etcd, for side-by-side benchmarks and behaviour checks
#   build-essential, pkg-config - C toolchain for crates that build C code
#   protobuf-compiler - `protoc`, needed only by the crates.io `etcd-client` (a dev-dependency of
#                 the end-to-end tests) at build time; raftkv's own protos use the pure-Rust protox
#   curl         - the HTTP client the JSON gateway's end-to-end tests (tests/tests/gateway.rs) run
APT_PACKAGES=(etcd-client etcd-server build-essential pkg-config protobuf-compiler curl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  # The etcd-server package enables a system service; raftkv never uses it, so keep it stopped
  # where a service manager exists (policy-rc.d stops postinst from starting it).
  echo 'exit 101' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

# Rust: the machine's rustup toolchain, with the components CI runs.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "cargo not found: install a Rust toolchain (rustup) first"; exit 1
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || log "rustup could not add rustfmt/clippy (already present?)"
fi

# raftkv itself needs no protoc (protox compiles its protos); `protoc` above is for the tests'
# etcd-client dependency.
log "ok: $(cargo --version), $(etcdctl version 2>/dev/null | sed -n 1p)"
