"""Probes and ports of every rendered Deployment against what the service really serves: the admin
port of its services/<name>/config/default.toml and the routes of libs/telemetry/src/health.rs."""

from __future__ import annotations

import unittest

import support
from support import containers, render


class ProbesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.releases = {
            "default": render(),
            "all-on": render(support.values_all_on(), name="all-on", namespace="data"),
        }
        cls.live = support.route_containing("live")
        cls.ready = support.route_containing("ready")

    def deployments(self):
        for label, rendered in self.releases.items():
            for deployment in rendered.kind("Deployment"):
                yield label, rendered, rendered.component(deployment), deployment

    def test_routes_come_from_the_admin_router(self) -> None:
        routes = support.admin_routes()
        self.assertIn("/metrics", routes)
        self.assertEqual((self.live, self.ready), ("/health/live", "/health/ready"))

    def test_every_service_is_deployed(self) -> None:
        deployed = {service for _, _, service, _ in self.deployments()}
        self.assertEqual(deployed, set(support.service_names()))

    def test_probes_hit_the_admin_port_and_routes(self) -> None:
        expected = {"livenessProbe": self.live, "readinessProbe": self.ready, "startupProbe": self.live}
        for label, _, service, deployment in self.deployments():
            if support.default_config(service) is None:
                self.assertIn(service, support.PENDING)
                continue
            admin = support.admin_port(service)
            container = containers(deployment)[0]
            for probe, path in expected.items():
                with self.subTest(values=label, service=service, probe=probe):
                    get = container[probe]["httpGet"]
                    self.assertEqual(get["path"], path)
                    self.assertIn(get["path"], support.admin_routes())
                    self.assertEqual(support.port_number(container, get["port"]), admin)

    def test_container_ports_match_the_service_config(self) -> None:
        for label, rendered, service, deployment in self.deployments():
            if support.default_config(service) is None:
                continue
            container = containers(deployment)[0]
            ports = {p["containerPort"] for p in container["ports"]}
            wanted = {support.admin_port(service), *support.request_ports(service).values()}
            with self.subTest(values=label, service=service):
                self.assertEqual(ports, wanted)
                config = rendered.config_of(service)
                self.assertEqual(support.listen_port(config["admin"]["listen"]), support.admin_port(service))
                for section, port in support.request_ports(service).items():
                    self.assertEqual(support.port_number(container, section), port)
                    self.assertEqual(support.listen_port(config[section]["listen"]), port)
                annotations = deployment["spec"]["template"]["metadata"]["annotations"]
                if "prometheus.io/port" in annotations:
                    self.assertEqual(int(annotations["prometheus.io/port"]), support.admin_port(service))
                    self.assertIn(annotations["prometheus.io/path"], support.admin_routes())

    def test_metrics_services_point_at_the_admin_port(self) -> None:
        for label, rendered in self.releases.items():
            for svc in rendered.kind("Service"):
                if svc["metadata"]["labels"].get("value-engine.io/metrics") != "true":
                    continue
                service = rendered.component(svc)
                if support.default_config(service) is None:
                    continue
                (deployment,) = [d for d in rendered.kind("Deployment") if rendered.component(d) == service]
                with self.subTest(values=label, service=service):
                    (port,) = svc["spec"]["ports"]
                    self.assertEqual(support.port_number(containers(deployment)[0], port["targetPort"]),
                                     support.admin_port(service))


if __name__ == "__main__":
    unittest.main()
