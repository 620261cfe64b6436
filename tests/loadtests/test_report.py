import math

import pytest

from loadtests import report
from loadtests.profiles import frame_name, summarize_collapsed
from loadtests.runner import RowResult
from loadtests.scenarios import SCENARIOS, service_floor_p99_s
from loadtests.stats import Summary
from loadtests.wrk import WrkResult, parse_duration_s, parse_output

TAILGATE = "tailgate shipped defaults"
WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080/v1/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.12ms    1.10ms  40.00ms   90.00%
  Latency Distribution
     50%  812.00us
     75%    6.00ms
     90%    7.00ms
     99%    1.20s
  20000 requests in 10.00s, 3.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:   2000.50
Transfer/sec:    300.00KB
"""


def test_wrk_output_is_parsed_with_errors_counted() -> None:
    r = parse_output(WRK_OUTPUT)
    assert r == WrkResult(2000.5, 0.000812, 1.2, errors=10, requests=20000)
    assert parse_duration_s("2m") == 120.0
    with pytest.raises(ValueError):
        parse_output("garbage")


def _row(scenario: str, peer: str, p99_s: float, errors: int = 0) -> RowResult:
    s = Summary(1000, errors, 10.0, 0.02, 0.05, p99_s, p99_s * 2, 1.0)
    return RowResult(scenario, peer, summary=s)


RESULTS = [
    _row("hang", "direct", math.inf, errors=200),
    _row("hang", "tailgate shipped defaults", 0.080),
    _row("hang", "envoy least_request", 0.120),
    _row("hang", "nginx least_conn", 0.100, errors=1),
    _row("hang", "haproxy leastconn", 0.100),
    RowResult(
        "overhead-closed", "tailgate shipped defaults", closed=WrkResult(3000, 0.001, 0.004, 0, 1)
    ),
    RowResult(
        "overhead-closed", "envoy least_request", closed=WrkResult(12000, 0.001, 0.002, 0, 1)
    ),
    RowResult("overhead-closed", "tailgate weighted_score --workers 2", note="not available: x"),
]


def test_best_peer_excludes_direct_and_breaks_ties_on_errors() -> None:
    best = report.best_peer(RESULTS, "hang")
    assert best is not None and best.peer == "haproxy leastconn"
    [v] = report.verdicts(RESULTS, ["hang"])
    assert v.ratio == pytest.approx(0.8) and v.passed


def test_latency_table_rows_and_cells() -> None:
    table = report.latency_table(RESULTS)
    lines = table.splitlines()
    assert lines[0] == "| proxy / policy | hang p50 | hang p99 | hang p99.9 | hang err |"
    assert "| direct | 20.0 | fail | fail | 20.00% |" in lines
    assert "| tailgate shipped defaults | 20.0 | 80.0 | 160 | 0 |" in lines
    assert len(lines) == 2 + 5


def test_targets_and_closed_tables_state_ratios() -> None:
    targets = report.targets_table(RESULTS, ["hang"])
    assert "| hang | 80.0 | haproxy leastconn | 100 | 0.80 | 70.6 | 0 | 0 | yes |" in targets
    assert "0.25x Envoy's 12,000 rps (target >= 0.5: **missed**)" in targets
    assert "tailgate --workers 2, closed loop: not available: x." in targets
    closed = report.closed_table(RESULTS)
    assert "| tailgate shipped defaults | 3,000 | 1.00 | 4.00 | 0 |" in closed


def test_tailgate_rows_are_stated_against_the_floor_and_envoy() -> None:
    assert "the floor" not in report.targets_table(RESULTS, ["hang"])  # no floor row, no line
    floor = RowResult("overhead-closed", "aiohttp floor", closed=WrkResult(6000, 0, 0, 0, 1))
    targets = report.targets_table([*RESULTS, floor], ["hang"])
    assert "Closed-loop floor (aiohttp floor): 6,000 rps = 0.50x Envoy's." in targets
    assert "tailgate shipped defaults: 3,000 rps = 0.50x the floor, 0.25x Envoy." in targets


def test_a_target_below_the_service_floor_says_so() -> None:
    # The pods' lognormal service time (mean 25 ms, sigma 0.5) has p99 70.6 ms; 0.8 x a peer's
    # 80 ms is 64 ms, below it: no balancer sending each request once can meet that target.
    assert service_floor_p99_s(SCENARIOS["hang"]) == pytest.approx(0.0706, abs=0.0001)
    assert service_floor_p99_s(SCENARIOS["slow-pod"]) == pytest.approx(0.0706, abs=0.0001)
    assert service_floor_p99_s(SCENARIOS["overhead-open"]) is None
    rows = [
        _row("hang", "tailgate shipped defaults", 0.090),
        _row("hang", "haproxy leastconn", 0.080),
    ]
    targets = report.targets_table(rows, ["hang"])
    verdict = "**no**: 0.8x the peer is below the floor"
    assert (
        f"| hang | 90.0 | haproxy leastconn | 80.0 | 1.12 | 70.6 | 0 | 0 | {verdict} |" in targets
    )


def test_fmt_ms_precision() -> None:
    assert [report.fmt_ms(v) for v in (0.00042, 0.0421, 0.4213)] == ["0.42", "42.1", "421"]


def test_collapsed_stacks_give_self_and_total_shares() -> None:
    lines = [
        "main (gateway/cli.py:10);send (/x/site-packages/aiohttp/client.py:5) 3",
        "main (gateway/cli.py:10) 1",
        "not a sample line",
    ]
    shares = summarize_collapsed(lines)
    assert shares.samples == 4
    assert shares.self_share["aiohttp/client.py:send"] == pytest.approx(0.75)
    assert shares.total_share["gateway/cli.py:main"] == pytest.approx(1.0)
    assert frame_name("f (/a/b/gateway/proxy.py:1)") == "gateway/proxy.py:f"


def test_plot_writes_a_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    from loadtests.plot import plot

    rows = [
        RowResult("hang", "tailgate shipped defaults", ranked_latency_s=[0.01, 0.02, math.inf]),
        RowResult("hang", "envoy least_request", ranked_latency_s=[0.01, 0.03, 0.04]),
    ]
    out = plot(rows, tmp_path / "p.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
