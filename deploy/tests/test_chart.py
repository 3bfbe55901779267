"""The Helm chart, rendered by the real Helm library (helm-python-sdk): lint, Kubernetes schema
validation of every object, values.schema.json, and the chart's promises (config keys the
services accept, credentials only from the Secret, non-root, grace period above the drain budget,
selectors that select)."""

from __future__ import annotations

import copy
import unittest

import jsonschema
import kubernetes_validate
import yaml
from helm_python import chart as helm_chart
from helm_python.errors import HelmError

import support
from support import CHART, KUBE_VERSION, PENDING, Rendered, containers, render

# ServiceMonitor is a CRD (Prometheus Operator), outside the Kubernetes schemas: its required shape,
# from the monitoring.coreos.com/v1 API reference.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}


def validate_object(obj: dict) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    # strict: unknown fields are errors too.
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


class ChartTestCase(unittest.TestCase):
    default: Rendered
    all_on: Rendered

    @classmethod
    def setUpClass(cls) -> None:
        cls.default = render()
        cls.all_on = render(support.values_all_on(), name="all-on", namespace="data")

    def releases(self):
        yield "default", self.default, {}
        yield "all-on", self.all_on, support.values_all_on()


class LintAndSchemaTest(ChartTestCase):
    def test_lint_is_clean(self) -> None:
        for label, _, values in self.releases():
            with self.subTest(values=label):
                report = helm_chart.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
                problems = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(report["errors"], [], report)
                self.assertEqual(problems, [], report)

    def test_every_object_validates_against_kubernetes(self) -> None:
        for label, rendered, _ in self.releases():
            self.assertTrue(rendered.objects, label)
            for obj in rendered.objects:
                with self.subTest(values=label, object=f"{obj['kind']}/{obj['metadata']['name']}"):
                    validate_object(obj)

    def test_all_on_renders_every_kind(self) -> None:
        kinds = {o["kind"] for o in self.all_on.objects}
        expected = {
            "Deployment", "ConfigMap", "Service", "ServiceAccount", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "Ingress", "NetworkPolicy", "ServiceMonitor",
        }
        self.assertEqual(expected - kinds, set())
        names = {self.all_on.component(d) for d in self.all_on.kind("Deployment")}
        self.assertEqual(names, set(support.service_names()), "one Deployment per service, registry included")

    def test_default_release(self) -> None:
        names = {self.default.component(d) for d in self.default.kind("Deployment")}
        self.assertEqual(names, set(support.service_names()) - {"schema-registry"}, "registry off by default")
        kinds = {o["kind"] for o in self.default.objects}
        self.assertFalse(kinds & {"Ingress", "NetworkPolicy", "ServiceMonitor"}, "optional objects are off by default")
        hpas = {self.default.component(h) for h in self.default.kind("HorizontalPodAutoscaler")}
        consumers = {"normalizer", "enricher", "clickhouse-sink", "s3-archiver"}
        self.assertEqual(hpas, consumers | {"gateway"}, "HPA for the gateway and the scalable consumer services")
        # The invoicer runs the scheduled period close and rate rules count across partitions:
        # single instances unless the operator opts in.
        singles = {self.default.component(d): d["spec"].get("replicas") for d in self.default.kind("Deployment")
                   if self.default.component(d) in {"rules", "invoicer"}}
        self.assertEqual(singles, {"rules": 1, "invoicer": 1})
        self.assertIn("Value Engine", self.default.notes)

    def test_schema_accepts_the_good_values(self) -> None:
        c = support.chart()
        for label, _, values in self.releases():
            with self.subTest(values=label):
                c.validate_schema(values)
                jsonschema.validate(c.merge_values(values), c.schema)

    def test_schema_rejects_the_bad_values(self) -> None:
        c = support.chart()
        for reason, pointer, values in support.values_bad():
            with self.subTest(reason):
                with self.assertRaises(HelmError) as caught:
                    c.validate_schema(values)
                self.assertIn(f"at '{pointer}'", str(caught.exception))
                # The same document is refused by a plain JSON-schema validator and by render.
                errors = list(jsonschema.Draft7Validator(c.schema).iter_errors(c.merge_values(values)))
                self.assertTrue(errors, reason)
                with self.assertRaises(HelmError):
                    c.render(values=values, name="bad")

    def test_schema_is_strict(self) -> None:
        """additionalProperties: false on every object whose keys the chart defines."""
        schema = support.chart().schema
        loose: list[str] = []

        def walk(node, path):
            if not isinstance(node, dict):
                return
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path or "/")
            for key in ("properties", "definitions"):
                for name, child in node.get(key, {}).items():
                    walk(child, f"{path}/{name}")
            for key in ("items", "additionalProperties"):
                walk(node.get(key), f"{path}/{key}")

        walk(schema, "")
        self.assertEqual(loose, [])

    def test_render_refuses_unsafe_combinations(self) -> None:
        cases = {
            "grace period not above the drain budget": {"terminationGracePeriodSeconds": 20, "drainTimeoutMs": 20000},
            "grace period eaten by the preStop sleep": {"terminationGracePeriodSeconds": 25, "preStopSleepSeconds": 10},
            "SASL without a Secret": {"kafka": {"saslMechanism": "SCRAM-SHA-256"}},
            "ingress without rules": {"ingress": {"enabled": True}},
            "min above max replicas": {"defaults": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        }
        for reason, values in cases.items():
            with self.subTest(reason), self.assertRaises(HelmError):
                render(values)


class ConfigTest(ChartTestCase):
    def test_config_keys_exist_in_the_services_defaults(self) -> None:
        """The services reject unknown keys: every key the chart writes must be in default.toml."""
        for label, rendered, _ in self.releases():
            for cm in rendered.kind("ConfigMap"):
                service = rendered.component(cm)
                defaults = support.default_config(service)
                with self.subTest(values=label, service=service):
                    if defaults is None:
                        self.assertIn(service, PENDING)
                        self.skipTest(f"{support.default_toml_path(service)} does not exist yet")
                    config = rendered.config_of(service)
                    unknown = [k for k in support.leaf_keys(config) if not support.key_exists(defaults, k)]
                    self.assertEqual(unknown, [], f"keys not in services/{service}/config/default.toml")

    def test_config_sets_what_containers_need(self) -> None:
        """Listen addresses on 0.0.0.0 with the default ports, and every endpoint section the
        service has pointed at the values' endpoints."""
        endpoint = {"kafka": "brokers", "registry": "url", "clickhouse": "url", "object_store": "url"}
        for label, rendered, _ in self.releases():
            for service in {rendered.component(d) for d in rendered.kind("Deployment")}:
                defaults = support.default_config(service)
                if defaults is None:
                    continue
                config = rendered.config_of(service)
                with self.subTest(values=label, service=service):
                    for section, table in defaults.items():
                        if isinstance(table, dict) and "listen" in table:
                            self.assertEqual(
                                config[section]["listen"],
                                f"0.0.0.0:{support.listen_port(table['listen'])}",
                                f"[{section}] listen",
                            )
                        if section in endpoint and endpoint[section] in table:
                            self.assertIn(section, config, f"[{section}] endpoints not configured")
                            self.assertNotIn("127.0.0.1", str(config[section][endpoint[section]]))
                    self.assertEqual(set(config) - set(defaults), set(), "sections the service does not have")

    def test_overrides_reach_the_config(self) -> None:
        sink = self.all_on.config_of("clickhouse-sink")
        self.assertEqual(sink["kafka"]["batch_size"], 20000, "service override wins over defaults.config")
        self.assertEqual(sink["clickhouse"]["compression"], "none")
        enricher = self.all_on.config_of("enricher")
        self.assertEqual(enricher["kafka"]["batch_size"], 5000)
        self.assertEqual(enricher["kafka"]["extra"], {"fetch.wait.max.ms": "100"})
        self.assertEqual(enricher["admin"]["drain_timeout_ms"], 25000)
        self.assertIsInstance(enricher["kafka"]["partitions"], int, "integers stay integers in TOML")
        self.assertNotIn("partitions", self.all_on.config_of("schema-registry")["kafka"],
                         "the registry's schema log keeps its single partition")
        registry = self.all_on.named("Service", "all-on-value-engine-schema-registry")
        self.assertEqual(enricher["registry"]["url"], f"http://{registry['metadata']['name']}:8081")
        self.assertEqual(self.default.config_of("enricher")["registry"]["url"],
                         support.chart().values["externalSchemaRegistry"]["url"])

    def test_env_keys_exist_and_credentials_come_from_the_secret(self) -> None:
        for label, rendered, values in self.releases():
            for deployment in rendered.kind("Deployment"):
                service = rendered.component(deployment)
                defaults = support.default_config(service)
                container = containers(deployment)[0]
                with self.subTest(values=label, service=service):
                    secret_vars = set()
                    for env in container.get("env", []):
                        name = env["name"]
                        if not name.startswith("VE_"):
                            continue
                        key = support.env_to_key(service, name)
                        self.assertIsNotNone(key, f"{name} is not for {service}")
                        if defaults is not None:
                            self.assertTrue(support.key_exists(defaults, key), f"{name} -> {key} unknown")
                        if key in support.SECRET_KEYS:
                            ref = env["valueFrom"]["secretKeyRef"]
                            self.assertEqual(ref["name"], values["existingSecret"])
                            secret_vars.add(key)
                    config_keys = set(support.leaf_keys(rendered.config_of(service)))
                    self.assertFalse(config_keys & support.SECRET_KEYS, "a credential in the ConfigMap")
                    if values.get("existingSecret") and defaults is not None:
                        # all-on sets every username / mechanism, so every credential is read,
                        # except the registry's when the chart's own (password-less) one is used.
                        wanted = {k for k in support.SECRET_KEYS if support.key_exists(defaults, k)}
                        if values.get("schemaRegistry", {}).get("enabled"):
                            wanted.discard("registry.password")
                        self.assertEqual(secret_vars, wanted)

    def test_config_is_mounted_and_passed(self) -> None:
        for label, rendered, _ in self.releases():
            for deployment in rendered.kind("Deployment"):
                service = rendered.component(deployment)
                pod = deployment["spec"]["template"]["spec"]
                container = pod["containers"][0]
                with self.subTest(values=label, service=service):
                    self.assertEqual(container["command"], [f"/usr/local/bin/ve-{service}"])
                    config_arg = container["args"][container["args"].index("--config") + 1]
                    mount = next(m for m in container["volumeMounts"] if config_arg.startswith(m["mountPath"] + "/"))
                    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
                    cm = rendered.named("ConfigMap", volume["configMap"]["name"])
                    self.assertIn(config_arg.rsplit("/", 1)[1], cm["data"])
                    self.assertEqual(rendered.component(cm), service)


class PodSafetyTest(ChartTestCase):
    def test_non_root_read_only(self) -> None:
        for label, rendered, _ in self.releases():
            for deployment in rendered.kind("Deployment"):
                pod = deployment["spec"]["template"]["spec"]
                with self.subTest(values=label, deployment=deployment["metadata"]["name"]):
                    self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                    self.assertNotEqual(pod["securityContext"].get("runAsUser"), 0)
                    self.assertFalse(pod["automountServiceAccountToken"])
                    for c in pod["containers"]:
                        sc = c["securityContext"]
                        self.assertTrue(sc["readOnlyRootFilesystem"])
                        self.assertFalse(sc["allowPrivilegeEscalation"])
                        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                        self.assertIn("resources", c)

    def test_grace_period_exceeds_drain_budget(self) -> None:
        for label, rendered, _ in self.releases():
            for deployment in rendered.kind("Deployment"):
                service = rendered.component(deployment)
                pod = deployment["spec"]["template"]["spec"]
                drain_ms = rendered.config_of(service)["admin"]["drain_timeout_ms"]
                sleep = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                with self.subTest(values=label, service=service):
                    self.assertGreater(pod["terminationGracePeriodSeconds"] * 1000, drain_ms + sleep * 1000)

    def test_credentials_are_read_only_where_used(self) -> None:
        values = {"existingSecret": "creds"}
        rendered = render(values)
        env = {rendered.component(d): {e["name"] for e in containers(d)[0].get("env", [])}
               for d in rendered.kind("Deployment")}
        self.assertEqual(env["clickhouse-sink"], {"VE_CLICKHOUSE_SINK__CLICKHOUSE__PASSWORD"})
        self.assertEqual(env["s3-archiver"], set(), "no access key id: no S3 secret (e.g. IRSA)")
        self.assertEqual(env["gateway"], set(), "no SASL, no registry username")
        values.update(kafka={"saslMechanism": "SCRAM-SHA-256", "brokers": "b:9092"},
                      externalSchemaRegistry={"username": "u"}, objectStore={"accessKeyId": "k", "url": "s3://b/p"})
        env = {support.env_to_key(rendered.component(d), e["name"])
               for d in render(values).kind("Deployment") for e in containers(d)[0].get("env", [])}
        self.assertEqual(env, support.SECRET_KEYS)

    def test_secret_values_never_rendered(self) -> None:
        for label, rendered, _ in self.releases():
            text = "\n".join(rendered.files.values())
            with self.subTest(values=label):
                self.assertNotIn("kind: Secret\n", text, "the chart only references an existing Secret")


class WiringTest(ChartTestCase):
    def pods_of(self, rendered: Rendered, selector: dict) -> list[dict]:
        return [
            d for d in rendered.kind("Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    def test_selectors_select_their_pods(self) -> None:
        for label, rendered, _ in self.releases():
            for d in rendered.kind("Deployment"):
                with self.subTest(values=label, deployment=d["metadata"]["name"]):
                    self.assertEqual(self.pods_of(rendered, d["spec"]["selector"]["matchLabels"]), [d])
            for pdb in rendered.kind("PodDisruptionBudget"):
                with self.subTest(values=label, pdb=pdb["metadata"]["name"]):
                    self.assertEqual(len(self.pods_of(rendered, pdb["spec"]["selector"]["matchLabels"])), 1)
            for hpa in rendered.kind("HorizontalPodAutoscaler"):
                target = hpa["spec"]["scaleTargetRef"]
                with self.subTest(values=label, hpa=hpa["metadata"]["name"]):
                    d = rendered.named("Deployment", target["name"])
                    self.assertNotIn("replicas", d["spec"], "the HPA owns replicas")
            for np in rendered.kind("NetworkPolicy"):
                with self.subTest(values=label, networkpolicy=np["metadata"]["name"]):
                    (d,) = self.pods_of(rendered, np["spec"]["podSelector"]["matchLabels"])
                    names = {p["name"] for p in containers(d)[0]["ports"]}
                    for rule in np["spec"]["ingress"]:
                        for port in rule["ports"]:
                            self.assertIn(port["port"], names)

    def test_services_reach_named_ports(self) -> None:
        for label, rendered, _ in self.releases():
            for svc in rendered.kind("Service"):
                with self.subTest(values=label, service=svc["metadata"]["name"]):
                    (d,) = self.pods_of(rendered, svc["spec"]["selector"])
                    for port in svc["spec"]["ports"]:
                        support.port_number(containers(d)[0], port["targetPort"])

    def test_api_services_expose_http_and_grpc(self) -> None:
        for label, rendered, _ in self.releases():
            for service in ("gateway", "query-api"):
                with self.subTest(values=label, service=service):
                    svcs = [s for s in rendered.kind("Service") if rendered.component(s) == service]
                    ports = {p["name"] for s in svcs for p in s["spec"]["ports"]}
                    self.assertEqual(ports, {"http", "grpc", "admin"})

    def test_every_service_has_a_metrics_service_the_monitor_selects(self) -> None:
        monitor = self.all_on.kind("ServiceMonitor")[0]
        selector = monitor["spec"]["selector"]["matchLabels"]
        endpoints = {e["port"] for e in monitor["spec"]["endpoints"]}
        selected = [s for s in self.all_on.kind("Service") if selector.items() <= s["metadata"]["labels"].items()]
        self.assertEqual({self.all_on.component(s) for s in selected},
                         {self.all_on.component(d) for d in self.all_on.kind("Deployment")})
        for s in selected:
            self.assertTrue(endpoints <= {p["name"] for p in s["spec"]["ports"]})
        self.assertEqual(monitor["spec"]["endpoints"][0]["path"], "/metrics")
        self.assertIn("/metrics", support.admin_routes())

    def test_ingress_routes_to_existing_ports(self) -> None:
        ingress = self.all_on.kind("Ingress")[0]
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = self.all_on.named("Service", backend["name"])
                self.assertIn(backend["port"]["name"], {p["name"] for p in svc["spec"]["ports"]})

    def test_disabled_service_disappears(self) -> None:
        values = copy.deepcopy(support.values_all_on())
        values["services"]["invoicer"]["enabled"] = False
        rendered = render(values)
        self.assertFalse([o for o in rendered.objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "invoicer"])


if __name__ == "__main__":
    unittest.main()
