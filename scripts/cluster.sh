#!/usr/bin/env bash
# A local three-member raftkv cluster on 127.0.0.1, for trying raftkv with stock etcdctl.
#
#   scripts/cluster.sh start    build `raftkv`, start n1 n2 n3, wait until a leader serves
#   scripts/cluster.sh status   each member's pid, and etcdctl's endpoint status and health
#   scripts/cluster.sh stop     SIGTERM each member, wait, SIGKILL after a deadline
#
# Data, logs and pid files live in one folder ($RAFTKV_CLUSTER_DIR, default .cluster at the
# repository root): n1.etcd/ (data dir), n1.log, n1.pid. `start` after `stop` restarts from the
# existing data dirs; `rm -rf .cluster` (while stopped) starts over from scratch.
#
# Environment:
#   RAFTKV_CLUSTER_DIR      the folder above                        [.cluster]
#   RAFTKV_CLUSTER_HOST     address every member listens on         [127.0.0.1]
#   RAFTKV_CLIENT_PORTS     client ports, one per member            ["2379 22379 32379"]
#   RAFTKV_PEER_PORTS       peer ports, one per member              ["2380 22380 32380"]
#   RAFTKV_BIN              run this binary instead of building target/release/raftkv
#   RAFTKV_START_TIMEOUT    seconds `start` waits for a leader      [30]
#   RAFTKV_STOP_TIMEOUT     seconds `stop` waits before SIGKILL     [15]
# Other RAFTKV_* variables reach the members as settings, e.g. RAFTKV_LOG=debug.
#
# Exit status: 0 on success; 1 on failure; `status` exits 3 when no member runs and 1 when some
# member is down or the cluster is unhealthy.
set -euo pipefail

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Resolve the cluster folder against the caller's directory, then work from the repository root.
cluster_dir=${RAFTKV_CLUSTER_DIR:-}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "$cluster_dir" ]; then
  cluster_dir="$repo/.cluster"
elif [[ "$cluster_dir" != /* ]]; then
  cluster_dir="$PWD/$cluster_dir"
fi
cd "$repo"

host=${RAFTKV_CLUSTER_HOST:-127.0.0.1}
read -r -a client_ports <<<"${RAFTKV_CLIENT_PORTS:-2379 22379 32379}"
read -r -a peer_ports <<<"${RAFTKV_PEER_PORTS:-2380 22380 32380}"
start_timeout=${RAFTKV_START_TIMEOUT:-30}
stop_timeout=${RAFTKV_STOP_TIMEOUT:-15}
export ETCDCTL_API=3

[ "${#client_ports[@]}" -gt 0 ] || die "RAFTKV_CLIENT_PORTS is empty"
[ "${#client_ports[@]}" -eq "${#peer_ports[@]}" ] ||
  die "RAFTKV_CLIENT_PORTS and RAFTKV_PEER_PORTS must name as many ports (one per member)"
for p in "${client_ports[@]}" "${peer_ports[@]}"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then die "bad port '$p'"; fi
done
for t in "$start_timeout" "$stop_timeout"; do
  [[ "$t" =~ ^[0-9]+$ ]] || die "bad timeout '$t' (whole seconds)"
done

members=()
for i in "${!client_ports[@]}"; do members+=("n$((i + 1))"); done

client_url() { echo "http://$host:${client_ports[$1]}"; }
peer_url() { echo "http://$host:${peer_ports[$1]}"; }
data_dir() { echo "$cluster_dir/${members[$1]}.etcd"; }
pid_file() { echo "$cluster_dir/${members[$1]}.pid"; }
log_file() { echo "$cluster_dir/${members[$1]}.log"; }

# etcdctl's --endpoints for the members given by index (all by default): host:port, without a
# scheme, because etcdctl 3.4's `endpoint status` sends an `http://` endpoint as the HTTP/2
# :authority, which raftkv's HTTP/2 stack (unlike Go's) rejects as malformed.
endpoints() {
  local out="" i
  [ "$#" -gt 0 ] || set -- "${!members[@]}"
  for i in "$@"; do out+="${out:+,}$host:${client_ports[$i]}"; done
  echo "$out"
}

# The pid of member $1 if it is running, else nothing (a stale pid file is removed). A pid counts
# only while that process is ours: alive, not a zombie, and serving this member's data dir, so a
# recycled pid never gets signalled.
member_pid() {
  local f pid state
  f=$(pid_file "$1")
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || true)
    if [ "$state" != "Z" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
      grep -qF -- "--data-dir $(data_dir "$1") "; then
      echo "$pid"
      return 0
    fi
  fi
  rm -f "$f"
}

running_members() {
  local i
  for i in "${!members[@]}"; do
    [ -z "$(member_pid "$i")" ] || echo "$i"
  done
}

# etcdctl with its gRPC client's JSON warnings ("retrying of unary invoker failed") left out.
etcdctl_quiet() {
  local out rc=0
  out=$(etcdctl "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v '^{"level":' || true
  return "$rc"
}

require_etcdctl() {
  command -v etcdctl >/dev/null 2>&1 ||
    die "etcdctl not found: run scripts/setup.sh (it installs Debian's etcd-client)"
}

build() {
  if [ -n "${RAFTKV_BIN:-}" ]; then
    [ -x "$RAFTKV_BIN" ] || die "RAFTKV_BIN=$RAFTKV_BIN is not an executable"
    bin=$RAFTKV_BIN
    return
  fi
  log "building: cargo build --release -p raftkv-cli"
  cargo build --release -p raftkv-cli >&2 || die "build failed"
  bin="$repo/target/release/raftkv"
}

# Sends SIGTERM to the given members (indexes), waits up to $stop_timeout s, then SIGKILLs.
stop_members() {
  local i pid deadline left=() waiting
  for i in "$@"; do
    pid=$(member_pid "$i")
    if [ -z "$pid" ]; then
      log "${members[$i]}: not running"
      continue
    fi
    log "${members[$i]}: stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    left+=("$i")
  done
  deadline=$((SECONDS + stop_timeout))
  while [ "${#left[@]}" -gt 0 ]; do
    waiting=()
    for i in "${left[@]}"; do
      [ -z "$(member_pid "$i")" ] || waiting+=("$i")
    done
    left=("${waiting[@]+"${waiting[@]}"}")
    [ "${#left[@]}" -gt 0 ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in "${left[@]}"; do
        pid=$(member_pid "$i")
        [ -n "$pid" ] || continue
        log "${members[$i]}: still running after ${stop_timeout}s, sending SIGKILL (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
      done
      deadline=$((SECONDS + 5))
      while [ "$SECONDS" -lt "$deadline" ] && [ -n "$(running_members)" ]; do sleep 0.1; done
      for i in "${left[@]}"; do
        [ -z "$(member_pid "$i")" ] || die "${members[$i]}: pid $(member_pid "$i") survived SIGKILL"
      done
      break
    fi
    sleep 0.1
  done
  for i in "$@"; do rm -f "$(pid_file "$i")"; done
}

# One cluster.sh at a time may start or stop this cluster (the lock is released at exit).
lock() {
  mkdir -p "$cluster_dir"
  exec 9>"$cluster_dir/.lock"
  flock -n 9 || die "another scripts/cluster.sh is starting or stopping this cluster"
}

cmd_start() {
  require_etcdctl
  lock
  local running i
  running=$(running_members)
  if [ -n "$running" ]; then
    for i in $running; do log "${members[$i]} is running (pid $(member_pid "$i"))"; done
    die "the cluster is already running; 'scripts/cluster.sh stop' first"
  fi
  build

  local initial_cluster=""
  for i in "${!members[@]}"; do
    initial_cluster+="${initial_cluster:+,}${members[$i]}=$(peer_url "$i")"
  done

  # If anything below fails, stop what this run started.
  started=()
  trap 'log "interrupted: stopping the members started"; stop_members "${started[@]+"${started[@]}"}"; exit 130' INT TERM

  local fresh="new data dirs"
  [ ! -d "$(data_dir 0)" ] || fresh="existing data dirs"
  log "starting ${members[*]} in $cluster_dir ($fresh)"
  for i in "${!members[@]}"; do
    printf '\n=== %s: starting %s ===\n' "$(date -u +%FT%TZ)" "${members[$i]}" >>"$(log_file "$i")"
    # setsid: the members get a session of their own, so a Ctrl-C in this terminal later does
    # not reach them; `stop` does. The initial-cluster flags are ignored once a data dir exists.
    setsid "$bin" serve \
      --name "${members[$i]}" \
      --data-dir "$(data_dir "$i")" \
      --listen-client-urls "$(client_url "$i")" \
      --advertise-client-urls "$(client_url "$i")" \
      --listen-peer-urls "$(peer_url "$i")" \
      --initial-advertise-peer-urls "$(peer_url "$i")" \
      --initial-cluster "$initial_cluster" \
      --initial-cluster-state new \
      --initial-cluster-token raftkv-local-cluster \
      </dev/null >>"$(log_file "$i")" 2>&1 9>&- &
    echo "$!" >"$(pid_file "$i")"
    started+=("$i")
  done

  # Wait until every member answers a linearizable read (`endpoint health` does a quorum Get,
  # so it passes only once a leader is elected and serving), or a member dies, or the deadline.
  log "waiting up to ${start_timeout}s for a leader"
  local deadline=$((SECONDS + start_timeout)) eps health=""
  eps=$(endpoints)
  while :; do
    for i in "${!members[@]}"; do
      if [ -z "$(member_pid "$i")" ]; then
        log "${members[$i]} exited during startup; the end of $(log_file "$i"):"
        tail -n 15 "$(log_file "$i")" >&2
        stop_members "${!members[@]}"
        die "${members[$i]} did not start"
      fi
    done
    if health=$(etcdctl --endpoints="$eps" --dial-timeout=1s --command-timeout=2s \
      endpoint health 2>&1); then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "no leader after ${start_timeout}s; last health check:"
      printf '%s\n' "$health" | grep -v '^{"level":' >&2 || true
      log "the members are still running: see $cluster_dir/*.log, then 'scripts/cluster.sh stop'"
      exit 1
    fi
    sleep 0.2
  done
  trap - INT TERM

  etcdctl_quiet --endpoints="$eps" endpoint status -w table ||
    log "warning: the cluster is healthy but 'endpoint status' failed (above)"
  cat <<EOF
raftkv cluster up: ${members[*]} (data and logs in $cluster_dir)
  endpoints: $eps
  try:       ETCDCTL_API=3 etcdctl --endpoints=$eps put foo bar
             ETCDCTL_API=3 etcdctl --endpoints=$eps get foo
  status:    scripts/cluster.sh status
  stop:      scripts/cluster.sh stop
EOF
}

cmd_stop() {
  if [ ! -d "$cluster_dir" ]; then
    log "not running (no $cluster_dir)"
    return 0
  fi
  lock
  stop_members "${!members[@]}"
  log "stopped"
}

cmd_status() {
  local i pid had_pid_file up=()
  for i in "${!members[@]}"; do
    had_pid_file=no
    [ ! -f "$(pid_file "$i")" ] || had_pid_file=yes
    pid=$(member_pid "$i")
    if [ -n "$pid" ]; then
      up+=("$i")
      printf '%-4s running  pid %-8s client %s  peer %s\n' "${members[$i]}" "$pid" \
        "$(client_url "$i")" "$(peer_url "$i")"
    elif [ "$had_pid_file" = yes ]; then
      printf '%-4s exited   without stop: see %s\n' "${members[$i]}" "$(log_file "$i")"
    else
      printf '%-4s stopped\n' "${members[$i]}"
    fi
  done
  [ "${#up[@]}" -gt 0 ] || return 3
  require_etcdctl
  local eps status=0
  eps=$(endpoints "${up[@]}")
  etcdctl_quiet --endpoints="$eps" --dial-timeout=2s --command-timeout=3s \
    endpoint status -w table || status=1
  etcdctl_quiet --endpoints="$eps" --dial-timeout=2s --command-timeout=3s endpoint health ||
    status=1
  [ "${#up[@]}" -eq "${#members[@]}" ] || status=1
  return "$status"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
