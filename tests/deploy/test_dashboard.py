"""The Grafana dashboard: valid JSON on the provisioned datasource, valid PromQL, and every
query names a metric the gateway or the backend really exports (scraped live)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.files import DASHBOARDS, DEPLOY, REPO, load_yaml
from tests.deploy.promql import is_exported, metric_names
from tests.tools import require_tool

# Grafana's interval variables, replaced by a fixed range so promtool can parse the queries.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")
# What the dashboard must show (issue 7): request rate, latency percentiles, traffic share,
# scores, queue depth, ejections, breaker states.
REQUIRED = {
    "tailgate_requests_total",
    "tailgate_request_duration_seconds_bucket",
    "tailgate_upstream_score",
    "tailgate_upstream_queue_depth",
    "tailgate_ejections_total",
    "tailgate_upstream_circuit_state",
    # issue 19: per backend and model, TTFT and TPOT percentiles, tokens/s and goodput
    "tailgate_time_to_first_token_seconds_bucket",
    "tailgate_time_per_output_token_seconds_bucket",
    "tailgate_tokens_total",
    "tailgate_slo_requests_total",
    "tailgate_cache_requests_total",  # the response cache's hit rate
    "vllm:prefix_cache_hits_total",  # the backends' prefix-cache hit rate (affinity)
}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    (dashboard,) = DASHBOARDS
    used = set().union(*(metric_names(e) for e in _exprs(dashboard)))
    assert used >= REQUIRED


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_use_the_provisioned_datasource(path: Path) -> None:
    provisioned = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uids = {d["uid"] for d in provisioned["datasources"]}
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel["targets"], panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_name_exported_metrics(
    path: Path, gateway_families: set[str], backend_families: set[str]
) -> None:
    exported = gateway_families | backend_families
    unknown = {
        (name, expr)
        for expr in _exprs(path)
        for name in metric_names(expr)
        if not is_exported(name, exported)
    }
    assert not unknown, f"queries name metrics nobody exports: {sorted(unknown)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_are_valid_promql(path: Path, tmp_path: Path) -> None:
    """promtool parses every query, wrapped as a recording rule."""
    promtool = require_tool("promtool")
    rules = []
    for i, expr in enumerate(_exprs(path)):
        for variable in GRAFANA_INTERVALS:
            expr = expr.replace(variable, "1m")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
