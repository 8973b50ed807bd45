#!/usr/bin/env bash
# raftkv against etcd, side by side, in one run, driven by the same client (`raftkv bench`).
#
#   scripts/bench-vs-etcd.sh
#
# Builds `cargo build --release -p raftkv-cli`. Then, for each of $BENCH_REPEATS rounds, and for
# each system in turn (etcd first in odd rounds, raftkv first in even ones, so slow drifts of a
# shared machine hit both alike), it starts a fresh 3-member cluster of that system on
# 127.0.0.1 (data in a new folder on the project's disk, fsync on: both systems' defaults),
# waits for a leader, runs every workload once with `raftkv bench --json`, and stops the
# cluster (SIGTERM, wait, SIGKILL after a deadline). Last, it prints a table of medians over
# the rounds: requests/s and p99 latency of each system, and the raftkv/etcd ratios.
#
# Workloads (key 8 B, value 256 B, 10,000 random keys, as in etcd's performance guide):
#   put-1x1             put, 1 connection, 1 client, to the leader only      (latency)
#   put-10x100          put, 10 connections, 100 clients, over all members   (throughput)
#   range-10x100        linearizable range, 10 / 100, over all members
#   range-ser-10x100    serializable range, 10 / 100, over all members
# Also available through BENCH_WORKLOADS: txn-put-10x100 (a Txn with one put), range-1x1 and
# range-ser-1x1 (read latency).
#
# Environment:
#   BENCH_REPEATS      rounds; the table quotes medians over them              [3]
#   BENCH_SECS         seconds each workload is measured                       [5]
#   BENCH_TOTAL_1      requests for 1-client workloads instead of BENCH_SECS   []
#   BENCH_TOTAL_N      requests for many-client workloads instead of BENCH_SECS []
#   BENCH_WARMUP       seconds of unmeasured load before each measurement      [1]
#   BENCH_WORKLOADS    workloads to run, by name                [put-1x1 put-10x100 range-10x100 range-ser-10x100]
#   BENCH_SYSTEMS      systems to run                                           ["etcd raftkv"]
#   BENCH_BASE_PORT    first port: etcd uses BASE..BASE+21, raftkv BASE+100..BASE+121 [26000]
#   BENCH_RESULTS      JSON lines file, one per measured run   [target/bench-vs-etcd/results-<time>.jsonl]
#   BENCH_KEEP_DATA    1: keep the clusters' data dirs and logs                 [0]
#   BENCH_CLIENT       the load generator command                  ["target/release/raftkv bench"]
#   ETCD_BIN           etcd binary                                              [etcd]
#   RAFTKV_BIN         raftkv binary instead of building target/release/raftkv
#                      (other RAFTKV_* variables reach the raftkv members as settings)
#   BENCH_START_TIMEOUT / BENCH_STOP_TIMEOUT   seconds                          [30 / 15]
#   BENCH_IDLE_WAIT    before each cluster start, wait up to this many seconds for the machine
#                      to be < BENCH_IDLE_PCT % busy over two consecutive 3 s windows (others
#                      share it); then go on anyway, with a note. 0: do not wait     [20]
#   BENCH_IDLE_PCT                                                              [15]
#   BENCH_TABLE_ONLY   a results file: print its table and exit (runs nothing)
#
# A default run takes about 4 minutes on 2 cores (3 rounds x 2 systems x 4 workloads x ~7 s,
# plus cluster starts). Needs etcd and etcdctl (scripts/setup.sh installs Debian's etcd-server
# and etcd-client). Exit status: 0 on success, 1 on any failure (a cluster that does not start,
# a workload whose requests all fail).
set -euo pipefail

log() { printf 'bench-vs-etcd: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

repeats=${BENCH_REPEATS:-3}
secs=${BENCH_SECS:-5}
total_1=${BENCH_TOTAL_1:-}
total_n=${BENCH_TOTAL_N:-}
warmup=${BENCH_WARMUP:-1}
read -r -a workloads <<<"${BENCH_WORKLOADS:-put-1x1 put-10x100 range-10x100 range-ser-10x100}"
read -r -a systems <<<"${BENCH_SYSTEMS:-etcd raftkv}"
base_port=${BENCH_BASE_PORT:-26000}
keep_data=${BENCH_KEEP_DATA:-0}
etcd_bin=${ETCD_BIN:-etcd}
start_timeout=${BENCH_START_TIMEOUT:-30}
stop_timeout=${BENCH_STOP_TIMEOUT:-15}
idle_wait=${BENCH_IDLE_WAIT:-20}
idle_pct=${BENCH_IDLE_PCT:-15}
export ETCDCTL_API=3

for n in "$repeats" "$base_port" "$start_timeout" "$stop_timeout" "$idle_wait" "$idle_pct"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "bad number '$n'"
done
[ "$repeats" -ge 1 ] || die "BENCH_REPEATS must be at least 1"
[ "${#workloads[@]}" -gt 0 ] || die "BENCH_WORKLOADS is empty"
for s in "${systems[@]}"; do
  case "$s" in etcd | raftkv) ;; *) die "unknown system '$s' (etcd or raftkv)" ;; esac
done
# --- The workloads: name -> "conns clients workload extra-flags...". ---
workload_spec() {
  case "$1" in
    put-1x1) echo "1 1 put --target-leader" ;;
    put-10x100) echo "10 100 put" ;;
    range-10x100) echo "10 100 range" ;;
    range-ser-10x100) echo "10 100 range-serializable" ;;
    txn-put-10x100) echo "10 100 txn-put" ;;
    range-1x1) echo "1 1 range" ;;
    range-ser-1x1) echo "1 1 range-serializable" ;;
    *) return 1 ;;
  esac
}
for w in "${workloads[@]}"; do
  workload_spec "$w" >/dev/null || die "unknown workload '$w'"
done

# --- The table: medians over the rounds. ---
# field NAME: for each JSON line on stdin, its first number named NAME. The workloads run here
# have no nested objects with numbers named like the top-level ones (only `mixed` nests).
field() {
  awk -v k="\"$1\":" '{ if (match($0, k "[-0-9.eE+]+")) print substr($0, RSTART + length(k), RLENGTH - length(k)) }'
}

# fmt VALUE FORMAT: VALUE with printf FORMAT, or "-" when empty.
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "") print "-"; else printf f, v }'; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# stat FILE SYSTEM WORKLOAD FIELD: the median of FIELD over the rounds.
stat() { { grep "\"name\":\"$3\"," "$1" || true; } | { grep "\"label\":\"$2\"" || true; } | field "$4" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

# print_table FILE: one row per workload of $workloads found in the JSON lines of FILE.
print_table() {
  local file=$1 name e_rps e_p99 r_rps r_p99 rounds errors
  rounds=$(field round <"$file" | sort -n | tail -n 1)
  printf '\nMedians of %s rounds (results in %s)\n\n' "${rounds:-0}" "$file"
  printf '| workload | etcd req/s | etcd p99 ms | raftkv req/s | raftkv p99 ms | req/s raftkv/etcd | p99 raftkv/etcd |\n'
  printf '|---|---|---|---|---|---|---|\n'
  for name in "${workloads[@]}"; do
    e_rps=$(stat "$file" etcd "$name" rps)
    e_p99=$(stat "$file" etcd "$name" p99_ms)
    r_rps=$(stat "$file" raftkv "$name" rps)
    r_p99=$(stat "$file" raftkv "$name" p99_ms)
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$(fmt "$e_rps" %.0f)" \
      "$(fmt "$e_p99" %.2f)" "$(fmt "$r_rps" %.0f)" "$(fmt "$r_p99" %.2f)" \
      "$(ratio "$r_rps" "$e_rps")" "$(ratio "$r_p99" "$e_p99")"
  done
  errors=$(field errors <"$file" | awk '{ s += $1 } END { print s + 0 }')
  [ "$errors" = 0 ] || log "note: $errors failed requests in all (see error_messages in $file)"
}

if [ -n "${BENCH_TABLE_ONLY:-}" ]; then
  [ -f "$BENCH_TABLE_ONLY" ] || die "BENCH_TABLE_ONLY=$BENCH_TABLE_ONLY: no such file"
  print_table "$BENCH_TABLE_ONLY"
  exit 0
fi

command -v etcdctl >/dev/null 2>&1 || die "etcdctl not found: run scripts/setup.sh"

# --- Build. ---
if [ -n "${RAFTKV_BIN:-}" ]; then
  [ -x "$RAFTKV_BIN" ] || die "RAFTKV_BIN=$RAFTKV_BIN is not an executable"
  raftkv_bin=$RAFTKV_BIN
else
  log "building: cargo build --release -p raftkv-cli"
  cargo build --release -p raftkv-cli >&2 || die "build failed"
  raftkv_bin="$repo/target/release/raftkv"
fi
read -r -a client <<<"${BENCH_CLIENT:-$raftkv_bin bench}"
"${client[@]}" --help >/dev/null 2>&1 || die "'${client[*]} --help' fails: is \`raftkv bench\` built?"
if [[ " ${systems[*]} " == *" etcd "* ]]; then
  command -v "$etcd_bin" >/dev/null 2>&1 || die "$etcd_bin not found: run scripts/setup.sh"
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=${BENCH_RESULTS:-$repo/target/bench-vs-etcd/results-$stamp.jsonl}
mkdir -p "$(dirname "$results")" "$repo/target/bench-vs-etcd"
: >"$results"
# Data dirs on the project's disk (not a tmpfs), like a real deployment's.
work=$(mktemp -d "$repo/target/bench-vs-etcd/run-$stamp.XXXXXX")

# --- Clusters. ---
members=(n1 n2 n3)
pids=()

# Ports (below Linux's ephemeral range): etcd members BASE, BASE+10, BASE+20 for clients and
# one more for peers; raftkv members the same plus 100.
sys_index() { if [ "$1" = etcd ]; then echo 0; else echo 1; fi; }
client_port() { echo $((base_port + $(sys_index "$1") * 100 + $2 * 10)); }
client_url() { echo "http://127.0.0.1:$(client_port "$1" "$2")"; }
peer_url() { echo "http://127.0.0.1:$(($(client_port "$1" "$2") + 1))"; }
endpoints() {
  local out="" i
  for i in "${!members[@]}"; do out+="${out:+,}$(client_url "$1" "$i")"; done
  echo "$out"
}

# SIGTERM the members this script started, wait up to $stop_timeout s, then SIGKILL.
stop_cluster() {
  local pid deadline alive
  [ "${#pids[@]}" -gt 0 ] || return 0
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + stop_timeout))
  while :; do
    alive=()
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
    done
    [ "${#alive[@]}" -gt 0 ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "members ${alive[*]} still running after ${stop_timeout}s: SIGKILL"
      for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    sleep 0.1
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

cleanup() {
  stop_cluster
  if [ "$keep_data" = 1 ]; then
    log "data and logs kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# busy_pct SECS: percent of all CPU time spent busy (not idle or iowait) over SECS seconds.
busy_pct() {
  local a b
  a=$(head -n 1 /proc/stat)
  sleep "$1"
  b=$(head -n 1 /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); total = 0
    for (i = 2; i <= n; i++) total += y[i] - x[i]
    idle = (y[5] - x[5]) + (y[6] - x[6])
    if (total <= 0) print 0; else printf "%d", 100 * (total - idle) / total }'
}

# wait_idle: until two consecutive 3 s windows are < $idle_pct % busy, or $idle_wait seconds.
wait_idle() {
  [ "$idle_wait" -gt 0 ] || return 0
  local deadline=$((SECONDS + idle_wait)) quiet=0 pct
  while [ "$quiet" -lt 2 ]; do
    pct=$(busy_pct 3)
    if [ "$pct" -lt "$idle_pct" ]; then quiet=$((quiet + 1)); else quiet=0; fi
    if [ "$quiet" = 0 ] && [ "$SECONDS" -ge "$deadline" ]; then
      log "note: the machine is still busy (${pct}% in the last 3 s) after ${idle_wait}s: going on"
      return 0
    fi
  done
}

# start_cluster SYSTEM ROUND: three fresh members, then wait for a serving leader.
start_cluster() {
  local sys=$1 round=$2 i dir initial="" eps deadline status="" leaders url
  local -a cmd
  for i in "${!members[@]}"; do
    initial+="${initial:+,}${members[$i]}=$(peer_url "$sys" "$i")"
  done
  if [ "$sys" = etcd ]; then cmd=("$etcd_bin"); else cmd=("$raftkv_bin" serve); fi
  for i in "${!members[@]}"; do
    for url in "$(client_url "$sys" "$i")" "$(peer_url "$sys" "$i")"; do
      if (exec 3<>"/dev/tcp/127.0.0.1/${url##*:}") 2>/dev/null; then
        die "port ${url##*:} is in use: pick other ports with BENCH_BASE_PORT"
      fi
    done
  done
  for i in "${!members[@]}"; do
    dir="$work/$sys-r$round"
    mkdir -p "$dir"
    "${cmd[@]}" \
      --name "${members[$i]}" \
      --data-dir "$dir/${members[$i]}.data" \
      --listen-client-urls "$(client_url "$sys" "$i")" \
      --advertise-client-urls "$(client_url "$sys" "$i")" \
      --listen-peer-urls "$(peer_url "$sys" "$i")" \
      --initial-advertise-peer-urls "$(peer_url "$sys" "$i")" \
      --initial-cluster "$initial" \
      --initial-cluster-state new \
      --initial-cluster-token "bench-$sys-$round" \
      </dev/null >"$dir/${members[$i]}.log" 2>&1 &
    pids+=("$!")
  done

  # A leader: a linearizable read (`endpoint health`) goes through on every member, and
  # exactly one member's `endpoint status` says IS LEADER.
  # host:port without the scheme: etcdctl 3.4 puts a URL's scheme into the HTTP/2 :authority
  # of `endpoint status` ("passthrough:///http://..."), which hyper-based servers refuse.
  eps=$(endpoints "$sys")
  eps=${eps//http:\/\//}
  deadline=$((SECONDS + start_timeout))
  while :; do
    for i in "${!pids[@]}"; do
      kill -0 "${pids[$i]}" 2>/dev/null || {
        tail -n 20 "$dir/${members[$i]}.log" >&2
        die "$sys member ${members[$i]} exited during startup (log above)"
      }
    done
    if etcdctl --endpoints="$eps" --dial-timeout=1s --command-timeout=2s endpoint health \
      >/dev/null 2>&1; then
      if status=$(etcdctl --endpoints="$eps" --dial-timeout=1s --command-timeout=2s \
        endpoint status -w simple 2>&1); then
        leaders=$(printf '%s\n' "$status" | grep -c ', true, ' || true)
        [ "$leaders" != 1 ] || break
      else
        # A quorum read went through, so there is a leader; say why status was not used.
        log "$sys: endpoint status fails ($(printf '%s\n' "$status" | grep -v '^{"level":' |
          head -n 1)); the passing health check (a quorum read) shows a leader"
        break
      fi
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf '%s\n' "$status" | grep -v '^{"level":' >&2 || true
      die "$sys: no leader after ${start_timeout}s (logs in $dir)"
    fi
    sleep 0.2
  done
  log "$sys round $round: cluster up ($eps)"
}

# run_workload SYSTEM ROUND NAME: one measured run, appended to $results.
run_workload() {
  local sys=$1 round=$2 name=$3 conns clients kind extra_s out
  local -a extra stop
  read -r conns clients kind extra_s <<<"$(workload_spec "$name") "
  read -r -a extra <<<"${extra_s:-}"
  if [ "$clients" = 1 ] && [ -n "$total_1" ]; then
    stop=(--total "$total_1")
  elif [ "$clients" != 1 ] && [ -n "$total_n" ]; then
    stop=(--total "$total_n")
  else
    stop=(--duration "$secs")
  fi
  if ! out=$("${client[@]}" --endpoints "$(endpoints "$sys")" --conns "$conns" \
    --clients "$clients" "${stop[@]}" --warmup "$warmup" --key-size 8 --val-size 256 \
    --key-space 10000 --json --label "$sys" "${extra[@]+"${extra[@]}"}" "$kind"); then
    printf '%s\n' "$out" >&2
    die "$sys $name: the bench failed"
  fi
  # Tag the line with the workload's name and the round (the bench's JSON is one object).
  out="{\"name\":\"$name\",\"round\":$round,${out#\{}"
  printf '%s\n' "$out" >>"$results"
  log "$sys round $round $name: $(fmt "$(field rps <<<"$out")" %.0f) req/s," \
    "p99 $(fmt "$(field p99_ms <<<"$out")" %.2f) ms, errors $(field errors <<<"$out")"
}

# --- Rounds. ---
log "results: $results"
for round in $(seq 1 "$repeats"); do
  order=("${systems[@]}")
  if [ $((round % 2)) = 0 ] && [ "${#systems[@]}" = 2 ]; then
    order=("${systems[1]}" "${systems[0]}")
  fi
  for sys in "${order[@]}"; do
    wait_idle
    start_cluster "$sys" "$round"
    for name in "${workloads[@]}"; do run_workload "$sys" "$round" "$name"; done
    stop_cluster
    [ "$keep_data" = 1 ] || rm -rf "$work/$sys-r$round"
  done
done

print_table "$results"
