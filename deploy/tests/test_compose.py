"""docker-compose.yml: valid against the Compose specification (its JSON schema, and the strict
compose_spec parser), every service's environment made of keys its default.toml has, health
checks on the real admin port and readiness route, dependencies on healthy services, and an
.env.example that lists every setting with the compose file's own defaults."""

from __future__ import annotations

import json
import re
import unittest

import compose_spec
import jsonschema

import support
from support import PENDING


def seconds(duration: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+)(ms|us|h|m|s)", duration):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total


class ComposeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.text = support.COMPOSE.read_text()
        cls.doc = support.compose()
        cls.env = support.env_example()
        cls.resolved = support.interpolate(cls.doc, cls.env)
        cls.services = cls.doc["services"]
        cls.ve = {
            name: support.compose_service_of(name, spec)
            for name, spec in cls.services.items()
            if support.compose_service_of(name, spec)
        }

    def test_valid_against_the_compose_spec_schema(self) -> None:
        schema = support.compose_spec_schema()
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
        errors = sorted(validator_class(schema).iter_errors(self.doc), key=lambda e: list(e.path))
        self.assertEqual([f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors], [])

    def test_parsed_by_the_strict_compose_parser(self) -> None:
        parsed = compose_spec.PyCompose.from_json(json.dumps(self.resolved))
        parsed.validate()
        self.assertEqual(parsed.service_names(), list(self.services))

    def test_schema_check_is_not_vacuous(self) -> None:
        schema = support.compose_spec_schema()
        validator = jsonschema.validators.validator_for(schema)(schema)
        self.assertTrue(list(validator.iter_errors({"services": {"x": {"image": "a", "helthcheck": {}}}})))
        self.assertTrue(list(validator.iter_errors({"services": {"x": {"depends_on": {"y": {"condition": "up"}}}}})))

    def test_every_service_is_in_compose(self) -> None:
        self.assertEqual(set(self.ve.values()), set(support.service_names()))
        for name, service in self.ve.items():
            self.assertEqual(name, service, "compose service named after the Value Engine service")

    def test_environment_keys_exist_in_default_toml(self) -> None:
        for name, service in self.ve.items():
            defaults = support.default_config(service)
            env = support.compose_environment(self.services[name])
            with self.subTest(service=service):
                if defaults is None:
                    self.assertIn(service, PENDING)
                    self.skipTest(f"{support.default_toml_path(service)} does not exist yet")
                self.assertTrue(env, "no environment")
                for var in env:
                    if not var.startswith("VE_"):
                        continue
                    key = support.env_to_key(service, var)
                    self.assertIsNotNone(key, f"{var}: not this service's prefix {support.env_prefix(service)}")
                    self.assertTrue(support.key_exists(defaults, key), f"{var} -> {key}: not in default.toml")

    def test_listen_addresses_are_reachable_and_match_the_code(self) -> None:
        for name, service in self.ve.items():
            defaults = support.default_config(service)
            if defaults is None:
                continue
            env = support.compose_environment(self.resolved["services"][name])
            prefix = support.env_prefix(service)
            with self.subTest(service=service):
                for section, table in defaults.items():
                    if isinstance(table, dict) and "listen" in table:
                        var = f"{prefix}{section.upper()}__LISTEN"
                        self.assertIn(var, env, f"[{section}] listen stays on loopback in a container")
                        self.assertEqual(env[var], f"0.0.0.0:{support.listen_port(table['listen'])}")

    def test_endpoints_point_at_compose_services(self) -> None:
        endpoints = {"KAFKA__BROKERS", "REGISTRY__URL", "CLICKHOUSE__URL", "OBJECT_STORE__ENDPOINT"}
        for name, service in self.ve.items():
            env = support.compose_environment(self.resolved["services"][name])
            with self.subTest(service=service):
                for var, value in env.items():
                    if var.removeprefix(support.env_prefix(service)) in endpoints:
                        host = re.sub(r"^\w+://", "", value).split(":")[0].split("/")[0]
                        self.assertIn(host, self.services, f"{var}={value}")

    def test_credentials_are_settings(self) -> None:
        for name, service in self.ve.items():
            env = support.compose_environment(self.services[name])
            for var, value in env.items():
                key = support.env_to_key(service, var)
                if key in support.SECRET_KEYS:
                    with self.subTest(service=service, var=var):
                        self.assertRegex(value, r"^\$\{[A-Z_]+(:-[^}]*)?\}$", "credentials come from .env")

    def test_health_checks_probe_readiness_on_the_admin_port(self) -> None:
        ready = support.route_containing("ready")
        for name, spec in self.resolved["services"].items():
            with self.subTest(service=name):
                if spec.get("restart") == "no":
                    continue  # one-shot
                self.assertIn("healthcheck", spec)
                test = spec["healthcheck"]["test"]
                self.assertIn(test[0], ("CMD", "CMD-SHELL"))
                service = self.ve.get(name)
                if service is None or support.default_config(service) is None:
                    continue
                # The binary's own --healthcheck GETs /health/ready on its configured admin port
                # (libs/service); the Dockerfile links the service binary as ve-service.
                self.assertEqual(test[1:], ["/usr/local/bin/ve-service", "--healthcheck"])
                self.assertIn("ve-service", support.DOCKERFILE.read_text())
                self.assertIn('"--healthcheck"', (support.ROOT / "libs/service/src/lib.rs").read_text())
                self.assertIn("/health/ready", (support.ROOT / "libs/service/src/lib.rs").read_text())
                self.assertTrue(ready.endswith("ready"))

    def test_depends_on_waits_for_health(self) -> None:
        for name, spec in self.services.items():
            for dep, cond in (spec.get("depends_on") or {}).items():
                with self.subTest(service=name, dependency=dep):
                    self.assertIn(dep, self.services)
                    self.assertIn(cond["condition"], ("service_healthy", "service_completed_successfully"))
                    if cond["condition"] == "service_healthy":
                        self.assertIn("healthcheck", self.services[dep])
                    else:
                        self.assertEqual(self.services[dep].get("restart"), "no")
        for name in self.ve:
            self.assertEqual(self.services[name]["depends_on"]["redpanda"]["condition"], "service_healthy")
        for name, service in self.ve.items():
            sections = set(support.default_config(service) or {})
            deps = set(self.services[name]["depends_on"])
            with self.subTest(service=service):
                if "clickhouse" in sections:
                    self.assertIn("clickhouse", deps)
                if "object_store" in sections:
                    self.assertIn("minio-init", deps)

    def test_minio_bucket_is_created(self) -> None:
        init = self.resolved["services"]["minio-init"]
        script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
        self.assertIn("mc mb", script)
        bucket = self.env["ARCHIVE_BUCKET"]
        env = support.compose_environment(self.resolved["services"]["s3-archiver"])
        self.assertTrue(env["VE_S3_ARCHIVER__OBJECT_STORE__URL"].startswith(f"s3://{bucket}/"))

    def test_redpanda_serves_the_schema_registry_on_8081(self) -> None:
        command = " ".join(self.services["redpanda"]["command"])
        self.assertIn("--schema-registry-addr=internal://0.0.0.0:8081", command)
        self.assertEqual(self.env["REGISTRY_URL"], "http://redpanda:8081")

    def test_services_run_locked_down(self) -> None:
        for name, service in self.ve.items():
            spec = self.resolved["services"][name]
            defaults = support.default_config(service)
            with self.subTest(service=service):
                self.assertTrue(spec["read_only"])
                self.assertEqual(spec["cap_drop"], ["ALL"])
                self.assertNotIn(spec.get("user", "65532").split(":")[0], ("0", "root"))
                if defaults:
                    drain_s = int(support.compose_environment(spec).get(
                        f"{support.env_prefix(service)}ADMIN__DRAIN_TIMEOUT_MS",
                        defaults["admin"]["drain_timeout_ms"])) / 1000
                    self.assertGreater(seconds(spec["stop_grace_period"]), drain_s)

    def test_observability_profile_scrapes_every_service(self) -> None:
        prometheus = self.services["prometheus"]
        # host path -> container path of the bind mounts
        mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in prometheus["volumes"] if v.startswith("./"))
        self.assertIn(f"--config.file={mounts['./deploy/prometheus/prometheus.yml']}", prometheus["command"])
        config = support.load_yaml(support.ROOT / "deploy" / "prometheus" / "prometheus.yml")
        self.assertEqual(config["rule_files"], [mounts["./deploy/prometheus/alerts.yml"]])
        jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
        always_on = {n for n, s in self.ve.items() if not self.services[n].get("profiles")}
        self.assertEqual(set(jobs), always_on, "a job per service, named after it (the alert rules match on job)")
        for job, targets in jobs.items():
            self.assertEqual(targets, [f"{job}:{support.admin_port(job)}"])
        grafana = self.services["grafana"]
        dashboards = support.load_yaml(support.ROOT / "deploy/grafana/provisioning/dashboards/value-engine.yml")
        path = dashboards["providers"][0]["options"]["path"]
        self.assertIn(f"./deploy/grafana/value-engine.json:{path}/value-engine.json:ro", grafana["volumes"])

    def test_env_example_lists_every_setting_with_the_same_default(self) -> None:
        used = support.compose_variables(self.text)
        self.assertEqual(set(used) - set(self.env), set(), "used by docker-compose.yml, missing in .env.example")
        self.assertEqual(set(self.env) - set(used), set(), "in .env.example, unused by docker-compose.yml")
        for var, defaults in used.items():
            with self.subTest(var=var):
                self.assertEqual({d for d in defaults}, {self.env[var]}, "compose default differs from .env.example")


if __name__ == "__main__":
    unittest.main()
