#!/usr/bin/env bash
# Runs the deployment tests (chart, probes, compose, Dockerfile, metric contract).
#
#   deploy/tests/run.sh                       # every test
#   deploy/tests/run.sh test_chart test_probes  # some modules (or Module.Class.test names)
#   deploy/tests/run.sh --install ...          # pip install deploy/requirements.txt first
#
# PYTHON: the interpreter to use (default python3), e.g. PYTHON=/tmp/venv/bin/python.
# VE_ADMIN_URLS: service=url pairs of running services for the live metrics test
# (test_metrics_contract.LiveMetricsTest), which fails without it.
# The last line reads "N passed, N failed, N skipped"; the exit status is 0 only if all passed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

if [ "${1:-}" = "--install" ]; then
  shift
  "$PYTHON" -m pip install --quiet -r "$here/../requirements.txt"
fi

if ! "$PYTHON" -c 'import helm_python, kubernetes_validate, jsonschema, yaml, check_jsonschema, compose_spec, promql_parser, dockerfile' 2>/dev/null; then
  echo "missing Python packages for $PYTHON; run: $PYTHON -m pip install -r deploy/requirements.txt (or $0 --install)" >&2
  exit 2
fi

cd "$here"
VE_TESTS_DIR="$here" exec "$PYTHON" - "$@" <<'PY'
import os
import sys
import unittest

here = os.environ["VE_TESTS_DIR"]
sys.path.insert(0, here)
loader = unittest.defaultTestLoader
names = sys.argv[1:]
suite = loader.loadTestsFromNames(names) if names else loader.discover(here, pattern="test_*.py", top_level_dir=here)
result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)


def method(test):
    return getattr(test, "test_case", test).id()


failed = {method(t) for t, _ in result.failures + result.errors} | {method(t) for t in result.unexpectedSuccesses}
skipped = {method(t) for t, _ in result.skipped} - failed
passed = result.testsRun - len(failed) - len(skipped) - len(result.expectedFailures)
print(f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped")
sys.exit(0 if result.wasSuccessful() else 1)
PY
