"""The Dockerfile (parsed by BuildKit's own parser, PyPI `dockerfile`) and .dockerignore: the
toolchain matches rust-toolchain.toml, dependencies build in their own layer, the runtime is
non-root, every service's binary exists under the name the image copies, the build context keeps
every file the workspace compiles in, and the per-service container config the image generates
is accepted by the service (keys and ports from its default.toml)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import tomllib
import unittest
from pathlib import Path

import dockerfile

import support
from support import PENDING, ROOT


def stages(commands) -> dict[str, list]:
    out: dict[str, list] = {}
    current = None
    for c in commands:
        if c.cmd == "FROM":
            value = list(c.value)
            current = value[2] if len(value) >= 3 and value[1].upper() == "AS" else f"stage{len(out)}"
            out[current] = [c]
        elif current is not None:
            out[current].append(c)
    return out


def global_args(commands) -> dict[str, str]:
    args = {}
    for c in commands:
        if c.cmd == "FROM":
            break
        if c.cmd == "ARG":
            name, _, default = c.value[0].partition("=")
            args[name] = default
    return args


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex), in order (last match wins, like Docker)."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negated, re.compile(regex + "$")))
    return out


def ignored(path: str) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in ignore_patterns():
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


def binary_name(service: str) -> str | None:
    manifest = tomllib.loads((ROOT / "services" / service / "Cargo.toml").read_text())
    bins = manifest.get("bin", [])
    if bins:
        return bins[0]["name"]
    if (ROOT / "services" / service / "src" / "main.rs").exists():
        return manifest["package"]["name"]
    return None


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.commands = dockerfile.parse_file(str(support.DOCKERFILE))
        cls.stages = stages(cls.commands)
        cls.args = global_args(cls.commands)

    def test_toolchain_matches_rust_toolchain_toml(self) -> None:
        channel = tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
        self.assertEqual(self.args["RUST_VERSION"], channel)
        chef = self.stages["chef"][0]
        self.assertIn("rust:${RUST_VERSION}", chef.value[0])

    def test_multi_stage_with_a_dependency_layer(self) -> None:
        self.assertEqual(list(self.stages)[-1], "runtime", "the runtime is the default target")
        builder = self.stages["builder"]
        originals = [c.original for c in builder]
        cook = next(i for i, o in enumerate(originals) if "cargo chef cook" in o)
        copy_all = next(i for i, c in enumerate(builder) if c.cmd == "COPY" and list(c.value[-2:]) == [".", "."])
        build = next(i for i, o in enumerate(originals) if "cargo build" in o)
        self.assertLess(cook, copy_all, "dependencies are cooked before the sources are copied")
        self.assertLess(copy_all, build)
        before = [c for c in builder[:cook] if c.cmd == "COPY"]
        self.assertTrue(all("recipe.json" in c.original for c in before), "only the recipe before cooking")
        for i in (cook, build):
            self.assertIn("--release", originals[i])
            self.assertIn("--locked", originals[i])

    def test_runtime_is_small_and_non_root(self) -> None:
        runtime = self.stages["runtime"]
        self.assertIn("distroless/cc", self.args["RUNTIME_IMAGE"])
        user = [c for c in runtime if c.cmd == "USER"]
        self.assertEqual(len(user), 1)
        uid = user[0].value[0].split(":")[0]
        self.assertTrue(uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot can verify it)")
        entry = [c for c in runtime if c.cmd == "ENTRYPOINT"]
        self.assertTrue(entry and entry[0].json, "exec-form ENTRYPOINT")
        for c in runtime:
            self.assertNotEqual(c.cmd, "RUN", "distroless has no shell")

    def test_every_service_builds_the_binary_the_image_copies(self) -> None:
        """The pick stage copies target/release/ve-${SERVICE}; the chart and compose call
        /usr/local/bin/ve-<service>."""
        pick = " ".join(c.original for c in self.stages["pick"])
        self.assertIn('target/release/ve-${SERVICE}', pick)
        for service in support.service_names():
            with self.subTest(service=service):
                name = binary_name(service)
                if name is None:
                    self.assertIn(service, PENDING)
                    self.skipTest(f"services/{service} has no binary yet")
                self.assertEqual(name, f"ve-{service}")

    def test_build_context_keeps_what_the_build_needs(self) -> None:
        needed = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"]
        members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
        for member in members:
            needed.append(f"{member}/Cargo.toml")
            needed += [str(p.relative_to(ROOT)) for p in (ROOT / member / "src").rglob("*.rs")]
            config = ROOT / member / "config" / "default.toml"
            if config.exists():
                needed.append(str(config.relative_to(ROOT)))
        # Files compiled in with include_str!/include_bytes!.
        for source in (ROOT / "libs").rglob("*.rs"):
            for rel in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
                needed.append(os.path.relpath((source.parent / rel).resolve(), ROOT))
        for source in (ROOT / "services").rglob("*.rs"):
            for rel in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
                needed.append(os.path.relpath((source.parent / rel).resolve(), ROOT))
        self.assertEqual([p for p in needed if ignored(p)], [], ".dockerignore drops files the build reads")
        for path in ("target/debug/x", ".git/HEAD", "helm/value-engine/values.yaml", ".env", "deploy/tests/x.py"):
            self.assertTrue(ignored(path), f"{path} should stay out of the build context")

    def test_container_config_opens_the_listen_addresses(self) -> None:
        """Runs the pick stage's shell script (as BuildKit would) on each service's default.toml."""
        (script,) = [c.value[0] for c in self.stages["pick"] if c.cmd == "RUN"]
        for service in support.service_names():
            defaults = support.default_config(service)
            if defaults is None:
                continue
            with self.subTest(service=service), tempfile.TemporaryDirectory() as work:
                workdir = Path(work)
                binary = workdir / "target" / "release" / f"ve-{service}"
                binary.parent.mkdir(parents=True)
                binary.write_text("")
                binary.chmod(0o755)
                config_dir = workdir / "services" / service / "config"
                config_dir.mkdir(parents=True)
                config_dir.joinpath("default.toml").write_text(support.default_toml_path(service).read_text())
                fake_busybox = workdir / "busybox"
                fake_busybox.write_text("")
                body = script.replace("/out", str(workdir / "out")).replace("/bin/busybox", str(fake_busybox))
                result = subprocess.run(["sh", "-c", body], cwd=workdir, env={"SERVICE": service, "PATH": "/usr/bin:/bin"},
                                        capture_output=True, text=True)
                self.assertEqual(result.returncode, 0, result.stderr)
                generated = tomllib.loads((workdir / "out" / "etc" / "container.toml").read_text())
                for key in support.leaf_keys(generated):
                    self.assertTrue(support.key_exists(defaults, key), key)
                    self.assertTrue(key.endswith(".listen"), key)
                for section, table in defaults.items():
                    if isinstance(table, dict) and "listen" in table:
                        self.assertEqual(generated[section]["listen"], f"0.0.0.0:{support.listen_port(table['listen'])}")
                self.assertTrue((workdir / "out" / "bin" / "ve-service").is_symlink())

    def test_container_config_is_not_shadowed_by_the_chart(self) -> None:
        runtime = " ".join(c.original for c in self.stages["runtime"])
        m = re.search(r"VE_CONFIG=(\S+)", runtime)
        self.assertIsNotNone(m)
        chart_mount = "/etc/value-engine"
        deployment = (support.CHART / "templates" / "deployment.yaml").read_text()
        self.assertIn(f"mountPath: {chart_mount}", deployment)
        self.assertFalse(m.group(1).startswith(chart_mount + "/"), "the ConfigMap mount would hide it")


if __name__ == "__main__":
    unittest.main()
