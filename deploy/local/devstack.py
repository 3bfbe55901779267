#!/usr/bin/env python3
"""Value Engine local stack: broker (Tansu), schema registry, ClickHouse engine (chDB front),
object store directory, then every service, all on loopback, logs in .stack/logs.

    devstack.py up [--infra-only] [--profile debug|release]   start and wait for health
    devstack.py run [...]                                      up, then stay in the foreground; Ctrl-C stops all
    devstack.py down                                           stop everything this stack started
    devstack.py status                                         what runs, and /health/ready of each service

A real ClickHouse wins over the local engine: set VE_CLICKHOUSE_URL (and optionally
VE_CLICKHOUSE_USER / VE_CLICKHOUSE_PASSWORD) and the chDB front is not started.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("VE_STACK_DIR", ROOT / ".stack"))
LOGS, RUN = STACK / "logs", STACK / "run"
PY = STACK / "venv" / "bin" / "python"
TANSU = STACK / "bin" / "tansu"

# VE_STACK_PORT_OFFSET shifts every port, so a second stack (a CI run beside a dev stack) can
# run on the same machine.
OFFSET = int(os.environ.get("VE_STACK_PORT_OFFSET", "0"))
BROKER_PORT = 9092 + OFFSET
BROKER = f"127.0.0.1:{BROKER_PORT}"
REGISTRY_PORT, REGISTRY_ADMIN = 8081 + OFFSET, 9109 + OFFSET
CLICKHOUSE_PORT = 8123 + OFFSET

# service -> admin port (must match services/<name>/config/default.toml)
SERVICES = {name: port + OFFSET for name, port in {
    "gateway": 9101, "normalizer": 9102, "enricher": 9103, "rules": 9104,
    "clickhouse-sink": 9105, "s3-archiver": 9106, "invoicer": 9107, "query-api": 9108,
}.items()}
# Request ports of the services that take traffic (must match their default.toml).
LISTEN_PORTS = {"gateway": {"HTTP": 8080, "GRPC": 50051}, "query-api": {"HTTP": 8088, "GRPC": 50052}}
USES_CLICKHOUSE = {"clickhouse-sink", "query-api"}
USES_ARCHIVE = {"s3-archiver"}


def log(msg):
    print(f"devstack: {msg}", flush=True)


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def http_ok(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def wait_for(what, probe, timeout, proc=None, logfile=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if probe():
            return
        if proc is not None and proc.poll() is not None:
            tail = logfile.read_text()[-3000:] if logfile and logfile.exists() else ""
            sys.exit(f"devstack: {what} exited with {proc.returncode} during start-up:\n{tail}")
        time.sleep(0.2)
    sys.exit(f"devstack: {what} not healthy after {timeout}s (see {logfile})")


# Processes this invocation started: `run` mode stops them from here, so a lost pid file can
# never leave one running.
STARTED = {}


def start(name, argv, env=None):
    LOGS.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    logfile = LOGS / f"{name}.log"
    out = open(logfile, "ab")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    STARTED[name] = proc.pid
    log(f"started {name} (pid {proc.pid}), log {logfile}")
    return proc, logfile


def bin_path(profile, name):
    return ROOT / "target" / profile / name


def service_env(name):
    prefix = "VE_" + name.upper().replace("-", "_") + "__"
    env = {
        prefix + "KAFKA__BROKERS": BROKER,
        prefix + "REGISTRY__URL": f"http://127.0.0.1:{REGISTRY_PORT}",
        prefix + "ADMIN__LISTEN": f"127.0.0.1:{SERVICES[name]}",
    }
    for section, port in LISTEN_PORTS.get(name, {}).items():
        env[prefix + section + "__LISTEN"] = f"127.0.0.1:{port + OFFSET}"
    if name in USES_CLICKHOUSE:
        if os.environ.get("VE_CLICKHOUSE_URL"):
            env[prefix + "CLICKHOUSE__URL"] = os.environ["VE_CLICKHOUSE_URL"]
            env[prefix + "CLICKHOUSE__USER"] = os.environ.get("VE_CLICKHOUSE_USER", "default")
            env[prefix + "CLICKHOUSE__PASSWORD"] = os.environ.get("VE_CLICKHOUSE_PASSWORD", "")
        else:
            env[prefix + "CLICKHOUSE__URL"] = f"http://127.0.0.1:{CLICKHOUSE_PORT}"
            env[prefix + "CLICKHOUSE__COMPRESSION"] = "none"
    if name in USES_ARCHIVE:
        env[prefix + "OBJECT_STORE__URL"] = (STACK / "archive").as_uri()
    return env


def up(args):
    for tool, hint in ((TANSU, "tansu"), (PY, "python venv")):
        if not tool.exists():
            sys.exit(f"devstack: {hint} missing at {tool}; run `make deps` first")
    procs = []
    if port_open(BROKER_PORT):
        log(f"broker already listening on {BROKER_PORT}, reusing it")
    else:
        # Tansu keeps topics in memory, so a new broker starts every topic at offset 0. The
        # ClickHouse data and archive of an earlier broker would then disagree with the topics
        # (the sink's per-partition watermarks would skip the new records): the local stack is
        # ephemeral as a whole.
        for stale in ("clickhouse", "archive"):
            if (STACK / stale).exists():
                log(f"new broker: clearing {STACK / stale} from the previous run")
                shutil.rmtree(STACK / stale)
        p, lf = start("broker", [str(TANSU), "broker", "--listener-url", f"tcp://{BROKER}",
                                 "--advertised-listener-url", f"tcp://{BROKER}",
                                 "--storage-engine", "memory://tansu/"])
        wait_for("broker", lambda: port_open(BROKER_PORT), 30, p, lf)
        procs.append(p)

    if os.environ.get("VE_CLICKHOUSE_URL"):
        log(f"using ClickHouse at {os.environ['VE_CLICKHOUSE_URL']} (local engine not started)")
    elif http_ok(f"http://127.0.0.1:{CLICKHOUSE_PORT}/ping"):
        log(f"ClickHouse engine already answering on {CLICKHOUSE_PORT}, reusing it")
    else:
        p, lf = start("clickhouse", [str(PY), str(ROOT / "deploy/local/chdb_http.py"),
                                     "--host", "127.0.0.1", "--port", str(CLICKHOUSE_PORT),
                                     "--data-dir", str(STACK / "clickhouse")])
        wait_for("clickhouse engine", lambda: http_ok(f"http://127.0.0.1:{CLICKHOUSE_PORT}/ping"), 120, p, lf)

    (STACK / "archive").mkdir(parents=True, exist_ok=True)

    if http_ok(f"http://127.0.0.1:{REGISTRY_PORT}/config"):
        log(f"schema registry already answering on {REGISTRY_PORT}, reusing it")
    else:
        exe = bin_path(args.profile, "ve-schema-registry")
        if not exe.exists():
            sys.exit(f"devstack: {exe} missing; build first (`cargo build{' --release' if args.profile == 'release' else ''}`)")
        p, lf = start("schema-registry", [str(exe)], {
            "VE_SCHEMA_REGISTRY__KAFKA__BROKERS": BROKER,
            "VE_SCHEMA_REGISTRY__HTTP__LISTEN": f"127.0.0.1:{REGISTRY_PORT}",
            "VE_SCHEMA_REGISTRY__ADMIN__LISTEN": f"127.0.0.1:{REGISTRY_ADMIN}",
        })
        wait_for("schema registry", lambda: http_ok(f"http://127.0.0.1:{REGISTRY_ADMIN}/health/ready"), 60, p, lf)

    if args.infra_only:
        log("local stack is up (infrastructure only)")
        return
    started = []
    for name, admin in SERVICES.items():
        exe = bin_path(args.profile, f"ve-{name}")
        if not exe.exists():
            sys.exit(f"devstack: {exe} missing; build first")
        started.append((name, admin, *start(name, [str(exe)], service_env(name))))
    for name, admin, p, lf in started:
        wait_for(name, lambda a=admin: http_ok(f"http://127.0.0.1:{a}/health/ready"), 90, p, lf)
        log(f"{name} ready: http://127.0.0.1:{admin}/health/ready")
    log(f"all services ready; gateway http://127.0.0.1:{8080 + OFFSET}, query-api http://127.0.0.1:{8088 + OFFSET}")


def pids():
    if not RUN.exists():
        return []
    out = []
    for f in RUN.glob("*.pid"):
        try:
            out.append((f.stem, int(f.read_text()), f))
        except ValueError:
            f.unlink()
    return out


def alive(pid):
    """True while `pid` runs. Reaps it when it is our child (`run` mode), since an exited child
    stays a zombie that `kill(pid, 0)` still finds."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


ORDER = list(SERVICES) + ["schema-registry", "clickhouse", "broker"]


def down(_args=None):
    found = {name: (pid, f) for name, pid, f in pids()}
    for name, pid in STARTED.items():
        found.setdefault(name, (pid, RUN / f"{name}.pid"))
    entries = sorted(((n, p, f) for n, (p, f) in found.items()),
                     key=lambda e: ORDER.index(e[0]) if e[0] in ORDER else -1)
    for name, pid, f in entries:
        try:
            os.killpg(pid, signal.SIGTERM)
            log(f"stopping {name} (pid {pid})")
        except ProcessLookupError:
            pass
        deadline = time.time() + 25
        while time.time() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            log(f"{name} did not stop in time, killing")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        f.unlink(missing_ok=True)


def status(_args):
    for name, pid, _ in pids():
        try:
            os.kill(pid, 0)
            alive = "running"
        except ProcessLookupError:
            alive = "dead"
        extra = ""
        if name in SERVICES:
            extra = " ready" if http_ok(f"http://127.0.0.1:{SERVICES[name]}/health/ready") else " NOT ready"
        print(f"{name:16} pid {pid:7} {alive}{extra}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "run"):
        p = sub.add_parser(cmd)
        p.add_argument("--infra-only", action="store_true", help="broker, registry, ClickHouse engine, object store only")
        p.add_argument("--profile", default="debug", choices=["debug", "release"])
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args()
    if args.cmd == "up":
        up(args)
    elif args.cmd == "run":
        try:
            up(args)
            log("running; Ctrl-C stops everything")
            stop = []
            # A handler, not a blocked mask: children inherit the mask and must still see SIGTERM.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.append(1))
            while not stop:
                time.sleep(0.5)
        except SystemExit as e:
            print(e, file=sys.stderr)
            down()
            raise
        down()
    elif args.cmd == "down":
        down()
    else:
        status(args)


if __name__ == "__main__":
    main()
