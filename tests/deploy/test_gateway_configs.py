"""``tailgate check-config`` accepts every gateway config shipped in config/ and deploy/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.files import REPO, embedded_gateway_configs, gateway_config_files

CHECK_TIMEOUT_S = 30


def _check_config(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tailgate")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway"]
    return subprocess.run(
        [*command, "check-config", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        cwd=REPO,
    )


def test_every_shipped_gateway_config_is_valid(tmp_path: Path) -> None:
    embedded = embedded_gateway_configs()
    assert embedded, "no ConfigMap under deploy/k8s embeds a gateway.yaml"
    paths = gateway_config_files()
    for i, (source, text) in enumerate(sorted(embedded.items())):
        path = tmp_path / f"embedded-{i}.yaml"
        path.write_text(f"# from {source}\n{text}", encoding="utf-8")
        paths.append(path)
    result = _check_config(paths)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(paths)


def test_check_config_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above has teeth: a bad value fails with exit status 2 and names the field."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("discovery: {type: dns, port: 8000}\n", encoding="utf-8")
    result = _check_config([bad])
    assert result.returncode == 2
    assert "discovery" in result.stderr


@pytest.mark.parametrize("source", sorted(embedded_gateway_configs()))
def test_dns_discovery_names_the_headless_backend_service(source: str) -> None:
    """Each Kubernetes gateway config discovers the backends through backend.yaml's Service."""
    import yaml

    from tests.deploy.files import find_object

    config = yaml.safe_load(embedded_gateway_configs()[source])
    service = find_object("Service", "tailgate-backend")
    assert service["spec"]["clusterIP"] == "None"
    discovery = config["discovery"]
    assert discovery["type"] == "dns"
    assert discovery["name"].split(".")[0] == service["metadata"]["name"]
    assert discovery["port"] in {p["port"] for p in service["spec"]["ports"]}
