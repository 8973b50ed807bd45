#!/usr/bin/env bash
# raftkv-cron with nothing else: three `raftkv-cron serve --embed` processes on 127.0.0.1, each
# running a raftkv member in-process, form their own Raft cluster and schedule jobs on it.
#
#   scripts/cron-demo.sh
#
# It builds raftkv-cron (release), starts s1 s2 s3, adds two jobs (every 2 s and every 5 s,
# each appending "<job> <scheduled instant> <node> <token>" to a file), lets them run, kills -9
# the scheduler that is dispatching, lets the other two carry on, then prints each job's
# history and checks the file: every scheduled instant ran exactly once, none is missing.
#
# Environment:
#   CRON_DEMO_DIR          working folder (data dirs, logs, output)   [a new temp dir]
#   CRON_DEMO_PORT_BASE    first of the 6 ports used                  [42379]
#   CRON_DEMO_SECONDS      seconds to run before and after the kill   [15]
#   RAFTKV_CRON_BIN        run this binary instead of building it
# Exit status: 0 if the checks hold, 1 otherwise.
set -euo pipefail

log() { printf 'cron-demo: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
dir=${CRON_DEMO_DIR:-$(mktemp -d -t raftkv-cron-demo.XXXXXX)}
mkdir -p "$dir"
base=${CRON_DEMO_PORT_BASE:-42379}
seconds=${CRON_DEMO_SECONDS:-15}
[[ "$base" =~ ^[0-9]+$ ]] || die "bad CRON_DEMO_PORT_BASE '$base'"
[[ "$seconds" =~ ^[0-9]+$ ]] || die "bad CRON_DEMO_SECONDS '$seconds'"

bin=${RAFTKV_CRON_BIN:-}
if [ -z "$bin" ]; then
  log "building raftkv-cron (release)"
  cargo build --release -q -p raftkv-cron --bin raftkv-cron
  bin="$repo/target/release/raftkv-cron"
fi

names=(s1 s2 s3)
client_port() { echo $((base + 2 * $1)); }
peer_port() { echo $((base + 2 * $1 + 1)); }
initial=""
endpoints=""
for i in 0 1 2; do
  initial+="${initial:+,}${names[$i]}=http://127.0.0.1:$(peer_port "$i")"
  endpoints+="${endpoints:+,}127.0.0.1:$(client_port "$i")"
done
export RAFTKV_CRON_ENDPOINTS="$endpoints"

declare -A pids=()
cleanup() {
  for n in "${!pids[@]}"; do kill -TERM "${pids[$n]}" 2>/dev/null || true; done
  for n in "${!pids[@]}"; do wait "${pids[$n]}" 2>/dev/null || true; done
}
trap cleanup EXIT

start() {
  local i=$1 n=${names[$1]}
  "$bin" serve --embed --node "$n" --lease-ttl 2 \
    --name "$n" --data-dir "$dir/$n.etcd" \
    --listen-client-urls "http://127.0.0.1:$(client_port "$i")" \
    --advertise-client-urls "http://127.0.0.1:$(client_port "$i")" \
    --listen-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
    --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$i")" \
    --initial-cluster "$initial" >>"$dir/$n.log" 2>&1 &
  pids[$n]=$!
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 200 ms until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what (logs in $dir)"
    sleep 0.2
  done
}

lines_at_least() { [ "$(wc -l <"$dir/out.log" 2>/dev/null || echo 0)" -ge "$1" ]; }
elapsed_at_least() { [ "$SECONDS" -ge "$1" ]; }

log "starting s1 s2 s3 in $dir"
for i in 0 1 2; do start "$i"; done
wait_for 60 "the embedded cluster" "$bin" jobs list

out="$dir/out.log"
: >"$out"
for spec in "heartbeat */2" "report */5"; do
  read -r job every <<<"$spec"
  cat >"$dir/$job.json" <<EOF
{"name": "$job", "schedule": "$every * * * * *", "timezone": "UTC",
 "run": {"type": "shell", "command": "echo \"$job \$RAFTKV_CRON_SCHEDULED \$RAFTKV_CRON_NODE \$RAFTKV_CRON_TOKEN\" >> $out"},
 "concurrency": "allow", "missed": "run_all", "starting_deadline_secs": 60}
EOF
  "$bin" jobs add "$dir/$job.json"
done
"$bin" jobs list

log "running for ${seconds}s"
stop_at=$((SECONDS + seconds))
wait_for $((seconds + 30)) "${seconds}s of runs" elapsed_at_least "$stop_at"

dispatcher=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" get /raftkv-cron/dispatcher \
  --prefix --sort-by=CREATE --order=ASCEND --limit=1 --print-value-only 2>/dev/null | head -n1 || true)
victim=${dispatcher:-s1}
before=$(wc -l <"$out")
log "killing $victim (the dispatcher) with SIGKILL after $before runs"
kill -KILL "${pids[$victim]}"
wait "${pids[$victim]}" 2>/dev/null || true
unset "pids[$victim]"

stop_at=$((SECONDS + seconds))
wait_for $((seconds + 30)) "${seconds}s more of runs" elapsed_at_least "$stop_at"
wait_for 30 "runs after the kill" lines_at_least $((before + 3))

for job in heartbeat report; do
  echo
  echo "== history of $job =="
  "$bin" jobs history "$job" --limit 40
done

echo
status=0
dups=$(awk '{print $1, $2}' "$out" | sort | uniq -d)
if [ -n "$dups" ]; then
  echo "DUPLICATE runs:"
  echo "$dups"
  status=1
else
  echo "no duplicate: $(wc -l <"$out") runs, each (job, instant) once"
fi
# Consecutive instants of each job are one period apart: nothing was lost across the kill.
for spec in "heartbeat 2" "report 5"; do
  read -r job period <<<"$spec"
  gaps=$(awk -v j="$job" '$1 == j {print $2}' "$out" | sort | while read -r t; do date -u -d "$t" +%s; done |
    awk -v p="$period" 'NR > 1 && $1 - prev != p {print "gap before " $1} {prev = $1}')
  if [ -n "$gaps" ]; then
    echo "LOST runs of $job: $gaps"
    status=1
  else
    echo "no lost run of $job across the kill of $victim"
  fi
done
[ "$status" -eq 0 ] && log "ok (logs and data in $dir)"
exit "$status"
