"""The metric contract (deploy/metrics.md) against its users and its producers.

Static part: every PromQL expression of the Grafana dashboard and the alert rules parses, and every
metric (and label) it uses is in the contract; the dashboard and the rules cover what on-call
needs.

Live part (LiveMetricsTest): scrapes each running service's /metrics, listed in VE_ADMIN_URLS as
comma-separated `service=url` pairs (url: the admin base URL, e.g.
`gateway=http://127.0.0.1:9101`), and checks that the service exports every contract metric of
its own. It FAILS when VE_ADMIN_URLS is unset: it needs the running system, and whether to skip it
is a decision for whoever runs the suite, not for the test. Its checking logic is unit-tested
against a fake /metrics page (ExpositionCheckTest).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import unittest
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

import promql_parser
import yaml

import support
from support import ContractMetric

# Grafana's variables, replaced by something PromQL accepts before parsing.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "x",
    "$namespace": ".*",
}
AGGREGATION_LABELS = {"le", "quantile"}


def grafana_expr(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


@dataclass
class Usage:
    metrics: set[str]
    labels: set[str]


def usage(expr: str) -> Usage:
    """Metric names and label names (matchers, by/without, on/ignoring) of a PromQL expression."""
    ast = promql_parser.parse(expr)
    metrics: set[str] = set()
    labels: set[str] = set()

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            metrics.add(node.name)
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                labels.update(matching.labels)
        return True

    promql_parser.walk(ast, visit)
    return Usage(metrics, labels)


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []

    def panels(items: Iterable[dict]) -> Iterable[dict]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out.append((panel["title"], grafana_expr(target["expr"])))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if var["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((?:([^,]+),\s*)?(\w+)\)", text)
            assert m, f"variable {var['name']}: unsupported query {text!r}"
            if m.group(1):
                out.append((f"variable {var['name']}", m.group(1)))
    return out


def alert_rules() -> list[dict]:
    doc = support.load_yaml(support.ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


class ContractFileTest(unittest.TestCase):
    def test_contract_rows_are_well_formed(self) -> None:
        services = set(support.service_names()) | {"prometheus"}
        seen: set[tuple[str, str]] = set()
        for row in support.contract():
            with self.subTest(metric=row.name, service=row.service):
                self.assertIn(row.service, services)
                self.assertIn(row.type, ("counter", "gauge", "histogram", "summary"))
                self.assertIn(row.presence, ("always", "after-traffic", "on-error"))
                self.assertIn(row.status, ("exported", "planned"))
                self.assertRegex(row.name, r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
                if row.type == "counter":
                    self.assertTrue(row.name.endswith("_total"), "counters end in _total")
                if row.service != "prometheus" and "<svc>" not in row.template and not row.name.startswith("ve_"):
                    self.assertTrue(row.name.startswith(support.metric_prefix(row.service) + "_"),
                                    "service metrics carry the service prefix")
                self.assertNotIn((row.name, row.service), seen, "listed twice")
                seen.add((row.name, row.service))

    def test_required_contract_metrics_are_listed(self) -> None:
        names = support.contract_names()
        stages = ["normalizer", "enricher", "rules", "clickhouse-sink", "s3-archiver", "invoicer"]
        for stage in stages:
            p = support.metric_prefix(stage)
            for suffix, kind in [("_events_consumed_total", "counter"), ("_batch_flush_seconds", "histogram"),
                                 ("_consumer_lag", "gauge"), ("_dlq_records_total", "counter"),
                                 ("_pipeline_errors_total", "counter"), ("_records_produced_total", "counter"),
                                 ("_produce_errors_total", "counter")]:
                with self.subTest(metric=p + suffix):
                    self.assertEqual(names[p + suffix].type, kind)
        self.assertEqual(names["clickhouse_sink_consumer_lag"].labels, ("topic", "partition"))
        for name in ["gateway_http_requests_total", "gateway_request_duration_seconds", "gateway_events_accepted_total",
                     "gateway_events_rejected_total", "clickhouse_sink_rows_inserted_total",
                     "clickhouse_sink_flush_failures_total", "s3_archiver_objects_written_total"]:
            self.assertIn(name, names)

    def test_exported_metrics_are_in_the_code(self) -> None:
        """Rows marked `exported` name their source; the name (or its <svc> template) is in it."""
        for row in support.contract():
            if row.status != "exported" or row.service == "prometheus":
                continue
            with self.subTest(metric=row.template):
                text = support.METRICS_MD.read_text()
                line = next(l for l in text.splitlines() if l.startswith(f"| `{row.template}`"))
                m = re.search(r"Source: `([^`]+)`", line)
                self.assertIsNotNone(m, "exported rows name their source file")
                source = (support.ROOT / m.group(1)).read_text()
                literal = row.template.replace("<svc>_", "")
                self.assertIn(literal, source)


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.dashboard = json.loads(support.DASHBOARD.read_text())
        cls.exprs = dashboard_exprs(cls.dashboard)

    def test_every_expression_parses_and_uses_contract_metrics(self) -> None:
        families = support.contract_names()
        self.assertTrue(self.exprs)
        for title, expr in self.exprs:
            with self.subTest(panel=title, expr=expr):
                used = usage(expr)
                unknown = {m for m in used.metrics if support.series_to_family(m, families) is None}
                self.assertEqual(unknown, set(), "not in deploy/metrics.md")
                allowed = support.TARGET_LABELS | AGGREGATION_LABELS
                for m in used.metrics:
                    family = support.series_to_family(m, families)
                    if family:
                        allowed |= set(families[family].labels)
                self.assertEqual(used.labels - allowed, set(), "labels the metrics do not have")

    def test_dashboard_structure(self) -> None:
        d = self.dashboard
        self.assertTrue(d["uid"] and d["title"])
        self.assertIsInstance(d["schemaVersion"], int)
        ids = []
        for panel in d["panels"]:
            ids.append(panel["id"])
            grid = panel["gridPos"]
            self.assertLessEqual(grid["x"] + grid["w"], 24, panel["title"])
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            self.assertTrue(panel.get("description"), f"{panel['title']}: describe what the panel shows")
            refs = [t["refId"] for t in panel["targets"]]
            self.assertEqual(len(refs), len(set(refs)), panel["title"])
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        names = {v["name"] for v in d["templating"]["list"]}
        self.assertIn("datasource", names)

    def test_dashboard_covers_the_on_call_questions(self) -> None:
        used = [(title, usage(expr)) for title, expr in self.exprs]

        def panels_using(metric: str, label: str | None = None) -> list[str]:
            return [t for t, u in used if metric in u.metrics and (label is None or label in u.labels)]

        stages = ["normalizer", "enricher", "rules", "clickhouse-sink", "s3-archiver", "invoicer"]
        self.assertTrue(panels_using("gateway_events_accepted_total"), "ingest rate")
        self.assertTrue(panels_using("gateway_http_requests_total", "status"), "gateway status codes")
        self.assertTrue(panels_using("gateway_request_duration_seconds_bucket"), "gateway latency")
        for stage in stages:
            p = support.metric_prefix(stage)
            with self.subTest(stage=stage):
                self.assertTrue(panels_using(f"{p}_events_consumed_total"), "per-stage throughput")
                self.assertTrue(panels_using(f"{p}_consumer_lag", "partition"), "lag per group and partition")
                self.assertTrue(panels_using(f"{p}_dlq_records_total"), "DLQ rate")
                self.assertTrue(panels_using(f"{p}_batch_flush_seconds_bucket"), "batch flush latency")


class AlertRulesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.rules = alert_rules()

    def test_rules_file_shape(self) -> None:
        doc = support.load_yaml(support.ALERTS)
        self.assertEqual(set(doc), {"groups"})
        names = [g["name"] for g in doc["groups"]]
        self.assertEqual(len(names), len(set(names)))
        for group in doc["groups"]:
            self.assertEqual(set(group) - {"name", "interval", "rules", "limit", "labels"}, set())
            for rule in group["rules"]:
                with self.subTest(alert=rule.get("alert"), service=rule.get("labels", {}).get("service")):
                    self.assertEqual(set(rule) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, set())
                    self.assertRegex(rule["alert"], r"^[A-Z][A-Za-z0-9]+$")
                    self.assertRegex(rule["for"], r"^([0-9]+(ms|s|m|h|d|w|y))+$")
                    self.assertIn(rule["labels"]["severity"], ("critical", "warning", "info"))
                    self.assertIn("service", rule["labels"])
                    for key in ("summary", "description", "runbook"):
                        self.assertTrue(str(rule["annotations"].get(key, "")).strip(), f"annotation {key}")

    def test_every_expression_parses_and_uses_contract_metrics(self) -> None:
        families = support.contract_names()
        for rule in self.rules:
            with self.subTest(alert=rule["alert"], service=rule["labels"]["service"]):
                used = usage(rule["expr"])
                unknown = {m for m in used.metrics if support.series_to_family(m, families) is None}
                self.assertEqual(unknown, set(), "not in deploy/metrics.md")
                allowed = support.TARGET_LABELS | AGGREGATION_LABELS
                for m in used.metrics:
                    allowed |= set(families[support.series_to_family(m, families)].labels)
                self.assertEqual(used.labels - allowed, set())

    def test_service_label_matches_the_metrics(self) -> None:
        for rule in self.rules:
            service = rule["labels"]["service"]
            if "{{" in service:
                continue
            used = usage(rule["expr"]).metrics
            own = {m for m in used if m.startswith(support.metric_prefix(service) + "_")}
            with self.subTest(alert=rule["alert"], service=service):
                self.assertTrue(own, f"no {service} metric in {rule['expr']!r}")

    def test_on_call_coverage(self) -> None:
        by_name: dict[str, list[dict]] = {}
        for rule in self.rules:
            by_name.setdefault(rule["alert"], []).append(rule)

        def services(alert: str) -> set[str]:
            return {r["labels"]["service"] for r in by_name.get(alert, [])}

        stages = {"normalizer", "enricher", "rules", "clickhouse-sink", "s3-archiver", "invoicer"}
        self.assertEqual(services("VEConsumerLagGrowing"), stages, "consumer lag growing")
        self.assertEqual(services("VEDeadLetterRateHigh"), stages, "DLQ rate")
        self.assertEqual(services("VEPipelineErrors"), stages, "error rate")
        self.assertIn("gateway", services("VEGatewayHighErrorRate"), "gateway error rate")
        self.assertIn("gateway", services("VENoEventsIngested"), "no data ingested")
        self.assertIn("clickhouse-sink", services("VEClickHouseFlushFailures"), "sink flush failures")
        for alert in ("VEConsumerLagGrowing", "VENoEventsIngested", "VEClickHouseFlushFailures"):
            metrics = set().union(*(usage(r["expr"]).metrics for r in by_name[alert]))
            self.assertTrue(metrics)
        self.assertTrue(any("_consumer_lag" in m for r in by_name["VEConsumerLagGrowing"] for m in usage(r["expr"]).metrics))


# ---------------------------------------------------------------------------------------------
# Live metrics
# ---------------------------------------------------------------------------------------------


@dataclass
class ExpositionReport:
    missing: list[str]  # required, not exported
    wrong_type: list[str]  # exported with another TYPE
    not_seen_on_error: list[str]  # on-error rows not (yet) exported: informational

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong_type


def parse_exposition(text: str) -> tuple[dict[str, str], set[str]]:
    """(family -> TYPE, sample names) of a Prometheus text exposition."""
    types: dict[str, str] = {}
    samples: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
        elif not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return types, samples


def check_exposition(service: str, text: str, rows: Iterable[ContractMetric] | None = None) -> ExpositionReport:
    """Which contract metrics of `service` a /metrics page lacks."""
    rows = [r for r in (rows if rows is not None else support.contract()) if r.service == service]
    types, samples = parse_exposition(text)
    missing, wrong, unseen = [], [], []
    for row in rows:
        if row.type == "histogram":
            present = row.name in types or f"{row.name}_bucket" in samples
        else:
            present = row.name in types or row.name in samples
        if not present:
            (unseen if row.presence == "on-error" else missing).append(row.name)
        elif row.name in types and types[row.name] != row.type:
            wrong.append(f"{row.name}: TYPE {types[row.name]}, contract says {row.type}")
    return ExpositionReport(missing, wrong, unseen)


def admin_urls(value: str) -> dict[str, str]:
    """`gateway=http://127.0.0.1:9101,normalizer=http://...` -> {service: base url}."""
    out: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in value.split(","))):
        service, sep, url = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"VE_ADMIN_URLS entry {item!r} is not service=http://host:port")
        out[service.strip()] = url.strip().rstrip("/")
    return out


def scrape(url: str, timeout: float = 5.0) -> str:
    target = url if url.endswith("/metrics") else url + "/metrics"
    with urllib.request.urlopen(target, timeout=timeout) as response:
        return response.read().decode()


class LiveMetricsTest(unittest.TestCase):
    """Needs the running system: VE_ADMIN_URLS=gateway=http://127.0.0.1:9101,normalizer=... (after
    sending traffic through it, so `after-traffic` series exist)."""

    def test_running_services_export_their_contract_metrics(self) -> None:
        raw = os.environ.get("VE_ADMIN_URLS")
        if not raw:
            self.fail(
                "VE_ADMIN_URLS is not set: this test scrapes running services. Start them (docker compose up, "
                "or the local stack), send traffic, then set VE_ADMIN_URLS to comma-separated service=url pairs, "
                "e.g. VE_ADMIN_URLS=gateway=http://127.0.0.1:9101,normalizer=http://127.0.0.1:9102"
            )
        urls = admin_urls(raw)
        known = set(support.service_names())
        self.assertEqual(set(urls) - known, set(), "unknown service names in VE_ADMIN_URLS")
        for service, url in urls.items():
            with self.subTest(service=service, url=url):
                report = check_exposition(service, scrape(url))
                if report.not_seen_on_error:
                    print(f"\n{service}: on-error metrics not exported yet (fine on a healthy system): "
                          f"{', '.join(report.not_seen_on_error)}")
                self.assertEqual(report.missing, [], f"{service} lacks contract metrics")
                self.assertEqual(report.wrong_type, [])


FAKE_ROWS = [
    ContractMetric("normalizer_events_consumed_total", "<svc>_events_consumed_total", "counter", (), "normalizer", "always", "exported"),
    ContractMetric("normalizer_batch_flush_seconds", "<svc>_batch_flush_seconds", "histogram", (), "normalizer", "always", "exported"),
    ContractMetric("normalizer_consumer_lag", "<svc>_consumer_lag", "gauge", ("topic", "partition"), "normalizer", "after-traffic", "exported"),
    ContractMetric("normalizer_produce_errors_total", "<svc>_produce_errors_total", "counter", ("topic",), "normalizer", "on-error", "exported"),
    ContractMetric("gateway_events_accepted_total", "gateway_events_accepted_total", "counter", (), "gateway", "always", "planned"),
]

FAKE_METRICS = """\
# TYPE normalizer_events_consumed_total counter
normalizer_events_consumed_total 42
# TYPE normalizer_batch_flush_seconds histogram
normalizer_batch_flush_seconds_bucket{le="0.005"} 3
normalizer_batch_flush_seconds_bucket{le="+Inf"} 4
normalizer_batch_flush_seconds_sum 0.02
normalizer_batch_flush_seconds_count 4
# TYPE normalizer_consumer_lag gauge
normalizer_consumer_lag{topic="ingest.raw.v1",partition="0"} 0
"""


class ExpositionCheckTest(unittest.TestCase):
    """The live check's logic, on fake /metrics pages."""

    def test_complete_page_passes(self) -> None:
        report = check_exposition("normalizer", FAKE_METRICS, FAKE_ROWS)
        self.assertTrue(report.ok, report)
        self.assertEqual(report.not_seen_on_error, ["normalizer_produce_errors_total"])

    def test_missing_metric_is_reported(self) -> None:
        page = "\n".join(l for l in FAKE_METRICS.splitlines() if "consumer_lag" not in l)
        report = check_exposition("normalizer", page, FAKE_ROWS)
        self.assertEqual(report.missing, ["normalizer_consumer_lag"])
        self.assertFalse(report.ok)

    def test_histogram_needs_buckets(self) -> None:
        page = FAKE_METRICS.replace("# TYPE normalizer_batch_flush_seconds histogram\n", "")
        page = "\n".join(l for l in page.splitlines() if "_bucket" not in l)
        report = check_exposition("normalizer", page, FAKE_ROWS)
        self.assertEqual(report.missing, ["normalizer_batch_flush_seconds"])

    def test_wrong_type_is_reported(self) -> None:
        page = FAKE_METRICS.replace("normalizer_consumer_lag gauge", "normalizer_consumer_lag counter")
        report = check_exposition("normalizer", page, FAKE_ROWS)
        self.assertEqual(len(report.wrong_type), 1)

    def test_rows_of_other_services_are_ignored(self) -> None:
        report = check_exposition("gateway", "", FAKE_ROWS)
        self.assertEqual(report.missing, ["gateway_events_accepted_total"])

    def test_admin_urls(self) -> None:
        self.assertEqual(admin_urls("gateway=http://127.0.0.1:9101/, rules=http://h:9104"),
                         {"gateway": "http://127.0.0.1:9101", "rules": "http://h:9104"})
        with self.assertRaises(ValueError):
            admin_urls("gateway:9101")

    def test_scrape_over_http(self) -> None:
        """End to end over a loopback HTTP server standing in for a service's admin port."""

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = FAKE_METRICS.encode() if self.path == "/metrics" else b""
                self.send_response(200 if body else 404)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            (service, base), = admin_urls(f"normalizer={url}").items()
            self.assertTrue(check_exposition(service, scrape(base), FAKE_ROWS).ok)
        finally:
            server.shutdown()
            server.server_close()

    def test_real_contract_rows_for_every_service(self) -> None:
        """Each deployed service has contract rows, so the live check is never empty for it."""
        services = {r.service for r in support.contract()}
        for service in set(support.service_names()) - {"query-api"}:
            self.assertIn(service, services)


if __name__ == "__main__":
    unittest.main()
