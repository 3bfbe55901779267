"""Shared helpers of the deployment tests: facts read from the sources (service configs, admin
routes, metric contract) and the rendered chart / compose file.

Everything here derives from the repository itself, so the tests follow the code instead of
repeating it.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "value-engine"
TESTS = Path(__file__).resolve().parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "value-engine.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRICS_MD = ROOT / "deploy" / "metrics.md"
HEALTH_RS = ROOT / "libs" / "telemetry" / "src" / "health.rs"

# The Kubernetes version rendered objects are validated against.
KUBE_VERSION = "1.30.0"

# Services whose sources are still landing: a missing default.toml / binary is reported as a skip
# (visible in the test summary) instead of a failure. Every service has both today.
PENDING: set[str] = set()


# ---------------------------------------------------------------------------------------------
# Services and their configuration
# ---------------------------------------------------------------------------------------------


def service_names() -> list[str]:
    """Every service directory of the workspace (services/<name>/Cargo.toml)."""
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/Cargo.toml"))


def default_toml_path(service: str) -> Path:
    return ROOT / "services" / service / "config" / "default.toml"


@functools.cache
def default_config(service: str) -> dict[str, Any] | None:
    """The parsed services/<name>/config/default.toml, or None when it does not exist (yet)."""
    path = default_toml_path(service)
    if not path.exists():
        return None
    return tomllib.loads(path.read_text())


def env_prefix(service: str) -> str:
    """Same rule as ve_config::env_prefix: clickhouse-sink -> VE_CLICKHOUSE_SINK__."""
    return "VE_" + service.upper().replace("-", "_") + "__"


def env_to_key(service: str, var: str) -> str | None:
    """VE_CLICKHOUSE_SINK__KAFKA__BROKERS -> kafka.brokers (ve_config's EnvMap rule); None when the
    variable does not carry the service's prefix."""
    prefix = env_prefix(service)
    if not var.startswith(prefix) or len(var) == len(prefix):
        return None
    return var[len(prefix):].lower().replace("__", ".")


def key_exists(defaults: dict[str, Any], dotted: str) -> bool:
    """Whether `dotted` names a key of the defaults. A table that is empty in default.toml (like
    `[kafka.extra]`, raw librdkafka properties) is a free-form map: any key below it is valid."""
    node: Any = defaults
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return False
        if part not in node:
            return node == {} and node is not defaults
        node = node[part]
    return True


def leaf_keys(table: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of every scalar (and array) in a TOML document."""
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaf_keys(value, path + ".")
        else:
            yield path


def listen_port(value: str) -> int:
    host, _, port = value.rpartition(":")
    assert host, f"listen address without host: {value!r}"
    return int(port)


def admin_port(service: str) -> int:
    config = default_config(service)
    assert config is not None, f"{default_toml_path(service)} is missing"
    return listen_port(config["admin"]["listen"])


def request_ports(service: str) -> dict[str, int]:
    """The [http] / [grpc] listen ports of a service that takes requests."""
    config = default_config(service) or {}
    return {s: listen_port(config[s]["listen"]) for s in ("http", "grpc") if "listen" in config.get(s, {})}


@functools.cache
def admin_routes() -> list[str]:
    """The paths the admin router serves: the `.route("...")` strings of health.rs."""
    text = HEALTH_RS.read_text()
    routes = re.findall(r'\.route\(\s*"([^"]+)"', text)
    assert routes, f"no .route(\"...\") found in {HEALTH_RS}"
    return routes


def route_containing(word: str) -> str:
    matches = [r for r in admin_routes() if word in r]
    assert len(matches) == 1, f"expected one admin route containing {word!r}, found {matches}"
    return matches[0]


SECRET_KEYS = {"kafka.sasl_password", "registry.password", "clickhouse.password", "object_store.secret_access_key"}


# ---------------------------------------------------------------------------------------------
# The chart
# ---------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@functools.cache
def _chart():
    from helm_python.chart import Chart

    return Chart.load(str(CHART))


def chart():
    return _chart()


@dataclass
class Rendered:
    """A rendered release: its objects and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    files: dict[str, str] = field(default_factory=dict)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
        return found[0]

    def component(self, obj: dict[str, Any]) -> str:
        return obj["metadata"]["labels"]["app.kubernetes.io/component"]

    def config_of(self, service: str) -> dict[str, Any]:
        """The parsed config.toml of a service's ConfigMap."""
        cms = [c for c in self.kind("ConfigMap") if self.component(c) == service]
        assert len(cms) == 1, f"ConfigMap of {service}: found {len(cms)}"
        return tomllib.loads(cms[0]["data"]["config.toml"])


def render(values: dict[str, Any] | None = None, name: str = "ve", namespace: str = "value-engine") -> Rendered:
    manifests = chart().render(values=values or {}, name=name, namespace=namespace)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return Rendered(objects=objects, notes=notes, files=manifests)


def values_all_on() -> dict[str, Any]:
    return load_yaml(TESTS / "values-all-on.yaml")


def values_bad() -> list[tuple[str, str, dict[str, Any]]]:
    """(description, expected JSON pointer, values) for each document of values-bad.yaml."""
    out = []
    for raw in re.split(r"^---\s*$", (TESTS / "values-bad.yaml").read_text(), flags=re.M):
        m = re.search(r"^# expect at '([^']*)': (.+)$", raw, flags=re.M)
        if not m:
            continue
        out.append((m.group(2).strip(), m.group(1), yaml.safe_load(raw) or {}))
    assert out, "values-bad.yaml has no `# expect at` documents"
    return out


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe/service port (number or container port name) as a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


# ---------------------------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def compose_variables(text: str) -> dict[str, list[str | None]]:
    """Every ${VAR[:-default]} of a compose file: name -> defaults used (None: no default)."""
    found: dict[str, list[str | None]] = {}
    for m in _VAR.finditer(text):
        if m.group(0) == "$$":
            continue
        name = m.group(1) or m.group(3)
        found.setdefault(name, []).append(m.group(2))
    return found


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style interpolation ($$ escapes, ${VAR}, ${VAR:-default}) of every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            if env.get(name):
                return env[name]
            return m.group(2) or ""

        return _VAR.sub(sub, value)
    return value


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=VALUE: {line!r}"
        assert key not in out, f".env.example: {key} set twice"
        out[key] = value
    return out


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def compose_service_of(name: str, spec: dict[str, Any]) -> str | None:
    """The Value Engine service a compose service runs (its Dockerfile SERVICE build arg)."""
    args = (spec.get("build") or {}).get("args") or {}
    return args.get("SERVICE")


def compose_environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def compose_spec_schema() -> dict[str, Any]:
    """The Compose specification JSON schema, as vendored by check-jsonschema (PyPI)."""
    import importlib.resources

    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(ref.read_text())


# ---------------------------------------------------------------------------------------------
# The metric contract
# ---------------------------------------------------------------------------------------------

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus / Kubernetes service discovery add to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint", "node"}


@dataclass(frozen=True)
class ContractMetric:
    name: str  # concrete name for one service
    template: str  # as written in metrics.md, e.g. <svc>_events_consumed_total
    type: str
    labels: tuple[str, ...]
    service: str
    presence: str
    status: str


def metric_prefix(service: str) -> str:
    return service.replace("-", "_")


@functools.cache
def contract() -> tuple[ContractMetric, ...]:
    rows: list[ContractMetric] = []
    header: list[str] | None = None
    for line in METRICS_MD.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "Metric":
            header = [c.lower() for c in cells]
            continue
        if header is None or set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(header, cells))
        template = row["metric"].strip("`")
        labels = tuple(l.strip() for l in row["labels"].split(",") if l.strip())
        for service in (s.strip() for s in row["services"].split(",")):
            name = template.replace("<svc>", metric_prefix(service))
            rows.append(ContractMetric(name, template, row["type"], labels, service, row["presence"], row["status"]))
    assert rows, f"no metric rows in {METRICS_MD}"
    return tuple(rows)


def contract_names() -> dict[str, ContractMetric]:
    """Concrete metric name -> its row (the first, when several services share a name)."""
    out: dict[str, ContractMetric] = {}
    for row in contract():
        out.setdefault(row.name, row)
    return out


def series_to_family(name: str, families: dict[str, ContractMetric]) -> str | None:
    """A series name as queried (x_bucket of histogram x) -> the contract family, or None."""
    if name in families:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in families and families[base].type == "histogram":
                return base
    return None
