"""The Prometheus config and alert rules: promtool accepts them, and they scrape and query
what the gateway really exports."""

from __future__ import annotations

import subprocess

from tests.deploy.files import PROMETHEUS_CONFIG, PROMETHEUS_RULES, REPO, load_yaml
from tests.deploy.promql import is_exported, metric_names
from tests.tools import require_tool

PROMTOOL_TIMEOUT_S = 60


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        cwd=REPO,
    )


def test_promtool_accepts_the_config_and_its_rules() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    result = _promtool("check", "rules", str(PROMETHEUS_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_jobs_cover_the_gateway_admin_port_and_every_compose_backend() -> None:
    compose = load_yaml(REPO / "docker-compose.yml")["services"]
    jobs = {j["job_name"]: j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    targets = {
        name: {t for config in job["static_configs"] for t in config["targets"]}
        for name, job in jobs.items()
    }
    assert targets["tailgate-gateway"] == {"gateway:9901"}
    backends = {f"{name}:8000" for name in compose if name.startswith("backend-")}
    assert targets["tailgate-backend"] == backends


def test_alerts_query_exported_metrics(gateway_families: set[str]) -> None:
    rules = [r for g in load_yaml(PROMETHEUS_RULES)["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        unknown = {n for n in metric_names(rule["expr"]) if not is_exported(n, gateway_families)}
        assert not unknown, f"{rule['alert']} queries {unknown}, which the gateway never exports"
