#!/usr/bin/env bash
# The test command: installs what is missing, builds, starts the local stack (broker, registry,
# ClickHouse engine, object store), runs every test layer against it, and stops what it started.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
STACK="${VE_STACK_DIR:-$ROOT/.stack}"
PY="$STACK/venv/bin/python"

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked

cleanup() { "$PY" deploy/local/devstack.py down || true; }
trap cleanup EXIT
"$PY" deploy/local/devstack.py up --infra-only

OFFSET="${VE_STACK_PORT_OFFSET:-0}"
export VE_TEST_BROKERS="127.0.0.1:$((9092 + OFFSET))"
export VE_TEST_REGISTRY="http://127.0.0.1:$((8081 + OFFSET))"
export VE_TEST_CLICKHOUSE="http://127.0.0.1:$((8123 + OFFSET))"
# The local engine speaks uncompressed ClickHouse HTTP.
export VE_TEST_CLICKHOUSE_COMPRESSION="${VE_TEST_CLICKHOUSE_COMPRESSION:-none}"
cargo nextest run --workspace --locked --profile ci

"$PY" deploy/local/test_chdb_http.py
# Deployment tests: chart, probes, compose, Dockerfile, the metric contract against the dashboard
# and alert rules, then the live cross-check (every service started on this stack, traffic through
# all of them, each /metrics scraped).
PYTHON="$PY" bash deploy/tests/run.sh test_chart test_probes test_compose test_dockerfile \
  test_metrics_contract.ContractFileTest test_metrics_contract.DashboardTest \
  test_metrics_contract.AlertRulesTest test_metrics_contract.ExpositionCheckTest
PYTHON="$PY" bash deploy/tests/live.sh
echo "all tests passed"
