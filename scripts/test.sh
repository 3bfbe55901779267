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

export VE_TEST_BROKERS=127.0.0.1:9092
export VE_TEST_REGISTRY=http://127.0.0.1:8081
export VE_TEST_CLICKHOUSE=http://127.0.0.1:8123
cargo nextest run --workspace --locked --profile ci

"$PY" deploy/local/test_chdb_http.py
if [ -x deploy/tests/run.sh ]; then
  PYTHON="$PY" bash deploy/tests/run.sh
fi
echo "all tests passed"
