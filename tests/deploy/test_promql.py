"""The metric-name reader the dashboard and alert checks rely on."""

from __future__ import annotations

import pytest

from tests.deploy.promql import families, is_exported, metric_names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        ('sum by (code) (rate(tailgate_requests_total{code=~"5.."}[$__rate_interval]))',
         {"tailgate_requests_total"}),
        ("histogram_quantile(0.95, sum by (backend, le) (rate(x_seconds_bucket[5m])))",
         {"x_seconds_bucket"}),
        ('sum(rate(a_total{b!="-"}[1m])) / ignoring (b) group_left () sum(rate(a_total[1m]))',
         {"a_total"}),
        ("max by (backend) (s) == 1 and on (backend) t offset 5m", {"s", "t"}),
        ('label_replace(g, "dst", "$1", "src", "(.*)")', {"g"}),
        ("vllm:num_requests_waiting > bool 2", {"vllm:num_requests_waiting"}),
        ("sum without (instance) (rate(c_total[${interval}]))", {"c_total"}),
    ],
)  # fmt: skip
def test_metric_names_finds_selected_series_only(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_families_reads_help_and_type_lines() -> None:
    page = (
        "# HELP req_total Requests.\n# TYPE req_total counter\n"
        'req_total{code="200"} 3.0\n# TYPE lat_seconds histogram\nlat_seconds_bucket{le="1"} 1\n'
    )
    assert families(page) == {"req_total", "lat_seconds"}


@pytest.mark.parametrize(
    ("name", "exported"),
    [("lat_seconds_bucket", True), ("lat_seconds_count", True), ("req_total", True),
     ("lat_seconds", True), ("lat", False), ("other_bucket", False)],
)  # fmt: skip
def test_is_exported_maps_sample_suffixes_to_their_family(name: str, exported: bool) -> None:
    assert is_exported(name, {"lat_seconds", "req_total"}) is exported
