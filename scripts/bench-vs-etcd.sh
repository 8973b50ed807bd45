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
# cluster (SIGTERM, wait, SIGKILL after a deadline). After the rounds, a memory stage: for each
# system a fresh cluster, $BENCH_MEM_KEYS keys of 256 B written once, then the resident memory
# (VmRSS) of every member. Last, it prints a table of medians over the rounds (requests/s, p50
# and p99 of each system, the raftkv/etcd ratios) and the targets of issue 6, met or missed.
#
# Workloads (key 8 B, value 256 B, 10,000 random keys, as in etcd's performance guide):
#   put-1x1             put, 1 connection, 1 client, to the leader only      (latency)
#   put-8x64            put, 8 connections, 64 clients, over all members     (throughput)
#   put-16x256          put, 16 connections, 256 clients, over all members   (throughput)
#   range-8x64          linearizable range, 8 / 64, over all members
#   range-ser-8x64      serializable range, 8 / 64, over all members
#   watch               $BENCH_WATCHERS watchers on one prefix over 100 streams on 10
#                       connections; 1 writer puts under the prefix at $BENCH_WATCH_RATE/s;
#                       the figures are event latencies (put sent -> event received)
#   lease               $BENCH_LEASES leases of 10 s kept alive over 10 streams (100
#                       keep-alives in flight); req/s are keep-alive responses/s, and every
#                       lease is checked with TimeToLive at the end (`leases_lost`)
# Also available through BENCH_WORKLOADS: put-10x100, range-10x100, range-ser-10x100 (the
# sizes of etcd's guide), txn-put-10x100 (a Txn with one put), range-1x1 and range-ser-1x1.
#
# Environment:
#   BENCH_REPEATS      rounds; the table quotes medians over them              [3]
#   BENCH_SECS         seconds each workload is measured                       [5]
#   BENCH_TOTAL_1      requests for 1-client workloads instead of BENCH_SECS   []
#   BENCH_TOTAL_N      requests for many-client workloads instead of BENCH_SECS []
#   BENCH_WARMUP       seconds of unmeasured load before each measurement      [1]
#   BENCH_WORKLOADS    workloads to run, by name
#                      [put-1x1 put-8x64 put-16x256 range-8x64 range-ser-8x64 watch lease]
#   BENCH_WATCHERS     watchers of `watch`                                      [1000]
#   BENCH_WATCH_RATE   puts/s of `watch` (each reaches every watcher)           [50]
#   BENCH_LEASES       leases of `lease`                                        [10000]
#   BENCH_MEM_KEYS     keys written before reading each member's VmRSS; 0 skips the memory
#                      stage                                                    [1000000]
#   BENCH_MEM_SETTLE   seconds between the last write and reading VmRSS         [5]
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
# A default run takes about 13 minutes on 2 cores (3 rounds x 2 systems x 7 workloads x ~8 s,
# cluster starts and idle waits, then ~1.5 min per system of memory stage). A quick look:
#   BENCH_REPEATS=1 BENCH_SECS=2 BENCH_WARMUP=0.5 BENCH_MEM_KEYS=100000 scripts/bench-vs-etcd.sh
# Needs etcd and etcdctl: when either is missing, the script runs scripts/setup.sh, which
# installs Debian's etcd-server and etcd-client. Exit status: 0 on success, 1 on any failure
# (a cluster that does not start, a workload whose requests all fail); a missed target is not
# a failure.
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
read -r -a workloads <<<"${BENCH_WORKLOADS:-put-1x1 put-8x64 put-16x256 range-8x64 range-ser-8x64 watch lease}"
watchers=${BENCH_WATCHERS:-1000}
watch_rate=${BENCH_WATCH_RATE:-50}
leases=${BENCH_LEASES:-10000}
mem_keys=${BENCH_MEM_KEYS:-1000000}
mem_settle=${BENCH_MEM_SETTLE:-5}
read -r -a systems <<<"${BENCH_SYSTEMS:-etcd raftkv}"
base_port=${BENCH_BASE_PORT:-26000}
keep_data=${BENCH_KEEP_DATA:-0}
etcd_bin=${ETCD_BIN:-etcd}
start_timeout=${BENCH_START_TIMEOUT:-30}
stop_timeout=${BENCH_STOP_TIMEOUT:-15}
idle_wait=${BENCH_IDLE_WAIT:-20}
idle_pct=${BENCH_IDLE_PCT:-15}
export ETCDCTL_API=3

for n in "$repeats" "$base_port" "$start_timeout" "$stop_timeout" "$idle_wait" "$idle_pct" \
  "$watchers" "$watch_rate" "$leases" "$mem_keys" "$mem_settle"; do
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
    put-8x64) echo "8 64 put" ;;
    put-16x256) echo "16 256 put" ;;
    range-8x64) echo "8 64 range" ;;
    range-ser-8x64) echo "8 64 range-serializable" ;;
    watch) echo "10 1 watch --watchers $watchers --streams 100 --rate $watch_rate" ;;
    lease) echo "10 100 lease-keepalive --leases $leases --streams 10" ;;
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
# field NAME: for each JSON line on stdin, its top-level number named NAME. The per-kind
# statistics nested under "ops" (`mixed`, `watch`) are cut out first: they reuse the names.
field() {
  awk -v k="\"$1\":" '{
    sub(/"ops":\{("[a-z]+":\{[^{}]*\},?)*\},?/, "")
    if (match($0, k "[-0-9.eE+]+")) print substr($0, RSTART + length(k), RLENGTH - length(k)) }'
}

# fmt VALUE FORMAT: VALUE with printf FORMAT, or "-" when empty.
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "") print "-"; else printf f, v }'; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# stat FILE SYSTEM WORKLOAD FIELD: the median of FIELD over the rounds.
stat() { { grep "\"name\":\"$3\"," "$1" || true; } | { grep "\"label\":\"$2\"" || true; } | field "$4" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }

# spread FILE SYSTEM WORKLOAD FIELD: the values of FIELD over the rounds, "a; b; c" by round.
spread() {
  { grep "\"name\":\"$3\"," "$1" || true; } | { grep "\"label\":\"$2\"" || true; } |
    field "$4" | awk -v f="${5:-%.0f}" '{ printf "%s" f, (NR > 1 ? "; " : ""), $1 }'
}
# total FILE SYSTEM WORKLOAD FIELD: the sum of FIELD over the rounds ("" when none ran).
total() {
  { grep "\"name\":\"$3\"," "$1" || true; } | { grep "\"label\":\"$2\"" || true; } |
    field "$4" | awk '{ s += $1; n++ } END { if (n) print s }'
}
# verdict RATIO OP TARGET: met, missed, or n/a (no ratio).
verdict() {
  awk -v r="$1" -v op="$2" -v t="$3" 'BEGIN {
    if (r == "" || r == "-") { print "n/a"; exit }
    ok = (op == "<=") ? (r + 0 <= t + 0) : (r + 0 >= t + 0)
    print (ok ? "met" : "**missed**") }'
}

# print_table FILE: one row per workload of $workloads found in the JSON lines of FILE, then
# the targets of issue 6.
print_table() {
  local file=$1 name e_rps e_p50 e_p99 r_rps r_p50 r_p99 rounds errors
  rounds=$(field round <"$file" | sort -n | tail -n 1)
  printf '\nMedians of %s rounds (results in %s)\n\n' "${rounds:-0}" "$file"
  printf '| workload | etcd req/s | etcd p50 ms | etcd p99 ms | raftkv req/s | raftkv p50 ms | raftkv p99 ms | req/s raftkv/etcd | p99 raftkv/etcd |\n'
  printf '|---|---|---|---|---|---|---|---|---|\n'
  for name in "${workloads[@]}"; do
    e_rps=$(stat "$file" etcd "$name" rps)
    e_p50=$(stat "$file" etcd "$name" p50_ms)
    e_p99=$(stat "$file" etcd "$name" p99_ms)
    r_rps=$(stat "$file" raftkv "$name" rps)
    r_p50=$(stat "$file" raftkv "$name" p50_ms)
    r_p99=$(stat "$file" raftkv "$name" p99_ms)
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$(fmt "$e_rps" %.0f)" \
      "$(fmt "$e_p50" %.2f)" "$(fmt "$e_p99" %.2f)" "$(fmt "$r_rps" %.0f)" \
      "$(fmt "$r_p50" %.2f)" "$(fmt "$r_p99" %.2f)" \
      "$(ratio "$r_rps" "$e_rps")" "$(ratio "$r_p99" "$e_p99")"
  done
  errors=$(field errors <"$file" | awk '{ s += $1 } END { print s + 0 }')
  [ "$errors" = 0 ] || log "note: $errors failed requests in all (see error_messages in $file)"

  printf '\nTargets (issue 6): medians over the rounds, the rounds in brackets; ratio raftkv/etcd\n\n'
  printf '| target | etcd | raftkv | raftkv/etcd | target | verdict |\n|---|---|---|---|---|---|\n'
  target_row "$file" "put, 1 client: p50 ms" put-1x1 p50_ms "%.2f" "<=" 1.00
  target_row "$file" "put, 1 client: p99 ms" put-1x1 p99_ms "%.2f" "<=" 1.00
  target_row "$file" "put, 64 clients: req/s" put-8x64 rps "%.0f" ">=" 1.50
  target_row "$file" "put, 256 clients: req/s" put-16x256 rps "%.0f" ">=" 1.50
  target_row "$file" "get linearizable, 64 clients: req/s" range-8x64 rps "%.0f" ">=" 1.50
  target_row "$file" "get serializable, 64 clients: req/s" range-ser-8x64 rps "%.0f" ">=" 1.50
  target_row "$file" "watch, $watchers watchers: event p99 ms" watch p99_ms "%.2f" "<=" 1.00
  target_row "$file" "$leases leases: keep-alives/s" lease rps "%.0f" ">=" 1.00
  target_row "$file" "$mem_keys keys: VmRSS per node, MiB (largest member)" mem rss_mib_max "%.0f" "<=" 1.00
  local e_lost r_lost e_miss r_miss
  e_lost=$(total "$file" etcd lease leases_lost)
  r_lost=$(total "$file" raftkv lease leases_lost)
  if [ -n "$e_lost$r_lost" ]; then
    printf '| %s leases: lost, all rounds | %s | %s | - | 0 | %s |\n' "$leases" "${e_lost:--}" \
      "${r_lost:--}" "$(if [ "${r_lost:-1}" = 0 ]; then echo met; else echo '**missed**'; fi)"
  fi
  e_miss=$(total "$file" etcd watch events_missing)
  r_miss=$(total "$file" raftkv watch events_missing)
  if [ -n "$e_miss$r_miss" ]; then
    printf '| watch: events never received, all rounds | %s | %s | - | 0 | %s |\n' \
      "${e_miss:--}" "${r_miss:--}" \
      "$(if [ "${r_miss:-1}" = 0 ]; then echo met; else echo '**missed**'; fi)"
  fi
}

# target_row FILE TITLE WORKLOAD FIELD FORMAT OP TARGET: one row of the targets table (none when
# neither system ran WORKLOAD).
target_row() {
  local file=$1 title=$2 name=$3 key=$4 f=$5 op=$6 target=$7 e r q
  e=$(stat "$file" etcd "$name" "$key")
  r=$(stat "$file" raftkv "$name" "$key")
  [ -n "$e$r" ] || return 0 # not run
  q=$(ratio "$r" "$e")
  printf '| %s | %s (%s) | %s (%s) | %s | %s %s | %s |\n' "$title" "$(fmt "$e" "$f")" \
    "$(spread "$file" etcd "$name" "$key" "$f")" "$(fmt "$r" "$f")" \
    "$(spread "$file" raftkv "$name" "$key" "$f")" "$q" "$op" "$target" \
    "$(verdict "$q" "$op" "$target")"
}

if [ -n "${BENCH_TABLE_ONLY:-}" ]; then
  [ -f "$BENCH_TABLE_ONLY" ] || die "BENCH_TABLE_ONLY=$BENCH_TABLE_ONLY: no such file"
  print_table "$BENCH_TABLE_ONLY"
  exit 0
fi

if ! command -v etcdctl >/dev/null 2>&1 ||
  { [[ " ${systems[*]} " == *" etcd "* ]] && ! command -v "$etcd_bin" >/dev/null 2>&1; }; then
  log "etcd or etcdctl missing: running scripts/setup.sh (installs etcd-server, etcd-client)"
  bash "$repo/scripts/setup.sh" >&2 || die "scripts/setup.sh failed"
fi
command -v etcdctl >/dev/null 2>&1 || die "etcdctl not found even after scripts/setup.sh"

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
  command -v "$etcd_bin" >/dev/null 2>&1 || die "$etcd_bin not found (ETCD_BIN)"
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

# --- Memory: a fresh cluster per system, $mem_keys keys of 256 B, then each member's VmRSS. ---
# measure_memory SYSTEM: appends one line {"name":"mem", rss_mib_max, rss_mib_avg, rss_kb: [..]}.
measure_memory() {
  local sys=$1 out i rss kb_list="" max=0 sum=0
  start_cluster "$sys" mem
  log "$sys: writing $mem_keys keys of 256 B (16 connections, 256 clients)"
  if ! out=$("${client[@]}" --endpoints "$(endpoints "$sys")" --conns 16 --clients 256 \
    --total "$mem_keys" --key-space "$mem_keys" --seq-keys --key-size 8 --val-size 256 \
    --json --label "$sys" put); then
    printf '%s\n' "$out" >&2
    die "$sys: loading $mem_keys keys failed"
  fi
  sleep "$mem_settle"
  for i in "${!pids[@]}"; do
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/${pids[$i]}/status" 2>/dev/null || true)
    [ -n "$rss" ] || die "$sys member ${members[$i]}: no VmRSS (did it exit?)"
    kb_list+="${kb_list:+,}$rss"
    sum=$((sum + rss))
    [ "$rss" -le "$max" ] || max=$rss
  done
  printf '{"name":"mem","round":1,"label":"%s","keys":%s,"load_rps":%s,"load_errors":%s,"rss_kb":[%s],"rss_mib_max":%s,"rss_mib_avg":%s}\n' \
    "$sys" "$mem_keys" "$(field rps <<<"$out")" "$(field errors <<<"$out")" "$kb_list" \
    "$(awk -v k="$max" 'BEGIN { printf "%.1f", k / 1024 }')" \
    "$(awk -v k="$sum" -v n="${#pids[@]}" 'BEGIN { printf "%.1f", k / n / 1024 }')" >>"$results"
  log "$sys: VmRSS after $mem_keys keys: $kb_list kB (loaded at $(fmt "$(field rps <<<"$out")" %.0f) puts/s)"
}
if [ "$mem_keys" -gt 0 ]; then
  for sys in "${systems[@]}"; do
    wait_idle
    measure_memory "$sys"
    stop_cluster
    [ "$keep_data" = 1 ] || rm -rf "$work/$sys-rmem"
  done
fi

print_table "$results"
