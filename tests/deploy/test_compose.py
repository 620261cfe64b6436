"""docker-compose.yml and its GPU override: valid for Compose, and shaped as documented."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.deploy.files import COMPOSE_FILES, REPO, load_yaml
from tests.tools import require_tool

COMPOSE_TIMEOUT_S = 60


def _compose(*files: Any, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    compose = require_tool("docker-compose")
    command = [compose, "--project-directory", str(REPO)]
    for path in files:
        command += ["-f", str(path)]
    return subprocess.run(
        [*command, "config", *args],
        capture_output=True,
        text=True,
        timeout=COMPOSE_TIMEOUT_S,
        cwd=REPO,
    )


def test_compose_files_are_valid() -> None:
    base, gpu = COMPOSE_FILES
    for files in ((base,), (base, gpu)):
        result = _compose(*files, args=("-q",))
        assert result.returncode == 0, result.stderr


def test_gpu_override_gives_a_backend_the_gpus_and_tensor_parallelism() -> None:
    result = _compose(*COMPOSE_FILES, args=())
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    gpu_backends = [
        s for s in services.values() if s.get("deploy", {}).get("resources", {}).get("reservations")
    ]
    assert gpu_backends, "no service reserves devices"
    for service in gpu_backends:
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices)
        assert "--tp" in service["command"] and "cuda" in service["command"]


def test_stack_has_three_cpu_backends_one_slowed_and_the_monitoring() -> None:
    services = load_yaml(COMPOSE_FILES[0])["services"]
    backends = {n: s for n, s in services.items() if n.startswith("backend-")}
    assert len(backends) == 3
    assert all(s["command"][:2] == ["--preset", "tiny"] for s in backends.values())
    assert sum("--fault-latency" in s["command"] for s in backends.values()) == 1
    assert {"gateway", "prometheus", "grafana"} <= services.keys()
    for name in ("gateway", *backends):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
