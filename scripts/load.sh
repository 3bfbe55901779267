#!/usr/bin/env bash
# Reproduces the README's load figures: release build, whole local stack, a tenant without rate
# limit, then ve-load at 5,000 events/s (end-to-end latency, peak memory at that load), at
# 10,000 events/s and flat out. Every run waits until all its events are visible in ClickHouse, so
# the next one starts on a drained pipeline and the whole-path rate is measured, not assumed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY=.stack/venv/bin/python
DURATION="${DURATION:-30}"
OFFSET="${VE_STACK_PORT_OFFSET:-0}"
GATEWAY="http://127.0.0.1:$((8080 + OFFSET))"
CLICKHOUSE="http://127.0.0.1:$((8123 + OFFSET))"

bash scripts/install-deps.sh >/dev/null
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --bins --locked
cleanup() { "$PY" deploy/local/devstack.py down >/dev/null || true; }
trap cleanup EXIT
"$PY" deploy/local/devstack.py up --profile release

tenant="load$(date +%s)"
key=$(target/release/ve-ctl --brokers "127.0.0.1:$((9092 + OFFSET))" --registry "http://127.0.0.1:$((8081 + OFFSET))" \
      --json tenant create --id "$tenant" --name "Load test" --plan enterprise \
        --rate-limit-eps 100000000 --burst 100000000 | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("api_key") or d["key"]["api_key"])')
# A threshold rule every cpu_load sample over 90 fires (alert latency, below).
target/release/ve-ctl --brokers "127.0.0.1:$((9092 + OFFSET))" --registry "http://127.0.0.1:$((8081 + OFFSET))" \
  rule set --tenant "$tenant" --id cpu-high --name "CPU high" --metric cpu_load --operator '>' \
  --threshold 90 --for-seconds 0 --group-by host >/dev/null
sleep 2 # the gateway and the rules service follow the control topics live

echo "## machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
# CPU ticks (user + system) of every process the stack started, one "name ticks" line each.
ticks() {
  for f in .stack/run/*.pid; do
    echo "$(basename "$f" .pid) $(awk '{print $14 + $15}' "/proc/$(cat "$f")/stat" 2>/dev/null || echo 0)"
  done
}
run() {
  echo
  echo "### ve-load $*"
  local before out accepted hz
  before=$(ticks)
  out=$(mktemp)
  target/release/ve-load --gateway "$GATEWAY" --tenant "$tenant" --key "$key" \
    --duration "$DURATION" --batch 100 --size 300 "$@" | tee "$out"
  # The run's profile: CPU each process spent from the first send until the run's events were
  # visible (or the run ended), per accepted event.
  accepted=$(sed -n 's/^| accepted (durable) | \([0-9]*\) .*/\1/p' "$out")
  rm -f "$out"
  hz=$(getconf CLK_TCK)
  echo
  echo "| process | CPU s in this run | CPU µs per accepted event |"
  echo "|---|---|---|"
  join <(echo "$before" | sort) <(ticks | sort) | awk -v n="${accepted:-0}" -v hz="$hz" '
    { s = ($3 - $2) / hz; printf "| %s | %.1f | %s |\n", $1, s, (n > 0 ? sprintf("%.1f", s * 1e6 / n) : "-") }'
}
rss() {
  echo
  echo "### peak resident memory (VmHWM) and CPU time used, $1"
  echo "| process | peak RSS MiB | CPU time |"
  echo "|---|---|---|"
  for f in .stack/run/*.pid; do
    name=$(basename "$f" .pid)
    pid=$(cat "$f")
    rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$pid/status" 2>/dev/null || echo "?")
    cpu=$(ps -o cputime= -p "$pid" 2>/dev/null | tr -d ' ' || echo "?")
    echo "| $name | $rss | $cpu |"
  done
}
MIX=web=60,app=30,metric=10
run --rate 5000 --concurrency 8 --mix "$MIX" --clickhouse "$CLICKHOUSE" --database value_engine
rss "since start, after the 5,000 events/s run"
echo
echo "### alert latency (pipeline drained)"
"$PY" scripts/alert_latency.py --gateway "$GATEWAY" --query-api "http://127.0.0.1:$((8088 + OFFSET))" \
  --tenant "$tenant" --key "$key" --samples 20
run --rate 10000 --concurrency 16 --mix "$MIX" --clickhouse "$CLICKHOUSE" --database value_engine
run --rate 0 --concurrency 32 --mix web=100 --clickhouse "$CLICKHOUSE" --database value_engine --wait 600
rss "since start, after all runs"

# The gateway's own capacity on this machine: the broker, registry and ClickHouse engine keep
# running, the consuming services are paused (SIGSTOP), so the gateway and the broker have the two
# cores to themselves. Resumed afterwards; the figure is "accepted durably" (broker acks=all).
echo
echo "### gateway alone (consumers paused)"
paused=()
for name in normalizer enricher clickhouse-sink s3-archiver rules invoicer query-api; do
  f=".stack/run/$name.pid"
  [ -f "$f" ] && kill -STOP "$(cat "$f")" && paused+=("$(cat "$f")")
done
resume() { for pid in "${paused[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done; }
trap 'resume; cleanup' EXIT
run --rate 0 --concurrency 32 --mix web=100 --duration 20
resume
