#!/usr/bin/env bash
# The live metric cross-check (issue: every metric the dashboard and the alert rules use is really
# exported). Starts every service on the local stack (reusing a running broker, registry and
# ClickHouse engine), drives traffic through all of them — events of every load kind through the
# gateway until they are in ClickHouse, a rule that fires, a billing period closed, a query-api
# report — then scrapes each admin port and runs test_metrics_contract.LiveMetricsTest.
#
#   deploy/tests/live.sh            # debug binaries (cargo build --workspace --bins first)
#   PROFILE=release deploy/tests/live.sh
#
# Leaves the services running; `deploy/local/devstack.py down` stops them (scripts/test.sh does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.stack/venv/bin/python}"
PROFILE="${PROFILE:-debug}"
BIN="target/$PROFILE"
OFFSET="${VE_STACK_PORT_OFFSET:-0}"
port() { echo $(($1 + OFFSET)); }

"$PY" deploy/local/devstack.py up --profile "$PROFILE"

ctl() {
  "$BIN/ve-ctl" --brokers "127.0.0.1:$(port 9092)" --registry "http://127.0.0.1:$(port 8081)" "$@"
}
tenant="live$(date +%s)"
key=$(ctl --json tenant create --id "$tenant" --name "Live metrics" --plan paid \
  | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("api_key") or d["key"]["api_key"])')
# ve-load's cpu_load samples run 0..99 per host: this rule fires and resolves.
ctl rule set --tenant "$tenant" --id cpu-high --name "CPU high" --metric cpu_load \
  --operator '>' --threshold 90 --for-seconds 0 --group-by host >/dev/null

"$BIN/ve-load" --gateway "http://127.0.0.1:$(port 8080)" --tenant "$tenant" --key "$key" \
  --rate 300 --duration 5 --batch 50 --concurrency 4 --mix web=50,app=30,metric=20 \
  --clickhouse "http://127.0.0.1:$(port 8123)" --database value_engine --wait 120

# A billing period closed on demand (the invoicer's admin endpoint), and a query-api report.
curl -fsS -X POST "http://127.0.0.1:$(port 9107)/v1/billing/close" \
  -H 'content-type: application/json' \
  -d "{\"period_start\": \"$(date -u +%Y-%m-01T00:00:00Z)\"}" >/dev/null
curl -fsS -X POST "http://127.0.0.1:$(port 8088)/report" \
  -H "authorization: Bearer $tenant:$key" -H 'content-type: application/json' \
  -d '{"template": "overview_stats"}' >/dev/null

# Lag gauges come from librdkafka statistics, emitted every 5 s.
sleep 6
urls=""
for pair in gateway=9101 normalizer=9102 enricher=9103 rules=9104 clickhouse-sink=9105 \
            s3-archiver=9106 invoicer=9107 query-api=9108 schema-registry=9109; do
  urls="$urls,${pair%%=*}=http://127.0.0.1:$(port "${pair##*=}")"
done
VE_ADMIN_URLS="${urls#,}" PYTHON="$PY" bash deploy/tests/run.sh test_metrics_contract.LiveMetricsTest
