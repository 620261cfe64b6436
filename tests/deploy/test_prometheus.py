"""The Prometheus config and alert rules: promtool accepts them, and they scrape and query
what the gateway really exports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

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


def test_ttft_alert_fires_on_a_p95_above_800ms_only(tmp_path: Path) -> None:
    """promtool runs the alert on synthetic histograms: a backend whose answers all take
    0.75-1 s to a first token (p95 ~0.99 s) fires; one answering under 250 ms does not."""

    def buckets(backend: str, counts: dict[str, str]) -> list[dict[str, str]]:
        name = "tailgate_time_to_first_token_seconds_bucket"
        return [
            {"series": f'{name}{{backend="{backend}",model="m",le="{le}"}}', "values": values}
            for le, values in counts.items()
        ]

    (rule,) = (
        r
        for g in load_yaml(PROMETHEUS_RULES)["groups"]
        for r in g["rules"]
        if r.get("alert") == "TailgateTimeToFirstTokenHigh"
    )
    # p95 of 100 answers in (0.75, 1.0]: 0.75 + 0.25 * 0.95 = 0.9875 s
    description = rule["annotations"]["description"].replace(
        "{{ $value | humanizeDuration }}", "987.5ms"
    )
    slow = buckets("slow", {"0.25": "0x20", "0.75": "0x20", "1.0": "0+100x20", "+Inf": "0+100x20"})
    fast = buckets(
        "fast", {"0.25": "0+100x20", "0.75": "0+100x20", "1.0": "0+100x20", "+Inf": "0+100x20"}
    )
    tests = {
        "rule_files": [str(PROMETHEUS_RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": slow + fast,
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "TailgateTimeToFirstTokenHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "backend": "slow",
                                    "model": "m",
                                },
                                "exp_annotations": {
                                    "summary": "TTFT p95 of m on slow is above 800 ms",
                                    "description": description,
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "ttft-alert-test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
