"""The markdown report: the latency table, the closed-loop table and the targets.

"Best peer" is the best of the *other* proxies (Envoy, nginx, HAProxy rows): lowest p99, the
lower error rate breaking ties. The no-proxy row is a reference, never the best peer.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.runner import RowResult
from loadtests.scenarios import SCENARIOS, service_floor_p99_s

TAILGATE = "tailgate shipped defaults"  # what a user gets: the verdicts are its
TAILGATE_W2 = "tailgate weighted_score --workers 2"
FLOOR = "aiohttp floor"  # aiohttp's server + tailgate's upstream client (loadtests/floor.py)
PEER_KINDS = ("envoy", "nginx", "haproxy")
RATIO_TARGET = 0.8
OVERHEAD_P50_S = 0.0003
OVERHEAD_P99_S = 0.001
THROUGHPUT_TARGET = 0.5


def fmt_ms(value_s: float) -> str:
    """Milliseconds with sensible precision; ``fail`` where failures reach the percentile."""
    if math.isinf(value_s):
        return "fail"
    if math.isnan(value_s):
        return "n/a"
    ms = value_s * 1000
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def fmt_pct(rate: float) -> str:
    return "0" if rate == 0 else f"{rate * 100:.2f}%"


def _row_order(results: Sequence[RowResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        seen.setdefault(r.peer, None)
    return list(seen)


def _scenarios(results: Sequence[RowResult], closed: bool) -> list[str]:
    """Scenario names in run order, open-loop or closed-loop ones."""
    names = dict.fromkeys(r.scenario for r in results)
    return [n for n in names if n in SCENARIOS and (SCENARIOS[n].mode == "closed") == closed]


def latency_table(results: Sequence[RowResult]) -> str:
    """Rows: proxy and policy. Columns: each open-loop scenario's p50, p99, p99.9 (ms), errors."""
    names = _scenarios(results, closed=False)
    index = {(r.scenario, r.peer): r for r in results}
    head = ["proxy / policy"]
    for name in names:
        head += [f"{name} p50", f"{name} p99", f"{name} p99.9", f"{name} err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer in _row_order([r for r in results if r.scenario in names]):
        cells = [peer]
        for name in names:
            r = index.get((name, peer))
            if r is None or r.summary is None:
                cells += ["-"] * 3 + ["n/a" if r is not None else "-"]
                continue
            s = r.summary
            mark = "*" if r.behind_schedule else ""
            cells += [fmt_ms(s.p50_s) + mark, fmt_ms(s.p99_s), fmt_ms(s.p999_s)]
            cells.append(fmt_pct(s.error_rate))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def closed_table(results: Sequence[RowResult]) -> str:
    closed = set(_scenarios(results, closed=True))
    rows = [r for r in results if r.scenario in closed]
    if not rows:
        return ""
    lines = [
        "| proxy / policy | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.closed is None:
            lines.append(f"| {r.peer} | {r.note or 'n/a'} | - | - | - |")
            continue
        c = r.closed
        lines.append(
            f"| {r.peer} | {c.requests_per_s:,.0f} | {fmt_ms(c.p50_s)} | {fmt_ms(c.p99_s)} "
            f"| {c.errors} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    scenario: str
    tailgate: RowResult
    best: RowResult
    ratio: float
    passed: bool


def best_peer(results: Sequence[RowResult], scenario: str) -> RowResult | None:
    candidates = [
        r
        for r in results
        if r.scenario == scenario and r.summary is not None and r.peer.split()[0] in PEER_KINDS
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r.summary.p99_s, r.summary.error_rate))  # type: ignore[union-attr]


def _ratio(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if b == 0 or math.isinf(b):
        return 0.0 if not math.isinf(a) else math.inf
    return a / b


def verdicts(results: Sequence[RowResult], scenarios: Sequence[str]) -> list[Verdict]:
    out = []
    for name in scenarios:
        ours = next((r for r in results if r.scenario == name and r.peer == TAILGATE), None)
        best = best_peer(results, name)
        if ours is None or ours.summary is None or best is None or best.summary is None:
            continue
        ratio = _ratio(ours.summary.p99_s, best.summary.p99_s)
        passed = ratio <= RATIO_TARGET and ours.summary.error_rate <= best.summary.error_rate
        out.append(Verdict(name, ours, best, ratio, passed))
    return out


def targets_table(results: Sequence[RowResult], trouble: Sequence[str]) -> str:
    """The p99 ratio to the best peer per scenario, next to the floor no balancer can beat
    (the pods' own service-time p99) so an unreachable target reads as such."""
    names = _scenarios(results, closed=False)
    lines = [
        "| scenario | tailgate p99 ms | best peer | its p99 ms | p99 ratio (target <= 0.8) "
        "| service p99 floor ms | tailgate err | peer err | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts(results, [n for n in names if not n.startswith("overhead")]):
        assert v.tailgate.summary is not None and v.best.summary is not None
        scenario = SCENARIOS.get(v.scenario)
        floor_s = service_floor_p99_s(scenario) if scenario is not None else None
        met = ("yes" if v.passed else "**no**") if v.scenario in trouble else "(info)"
        below_floor = floor_s is not None and RATIO_TARGET * v.best.summary.p99_s < floor_s
        if met == "**no**" and below_floor:
            met = "**no**: 0.8x the peer is below the floor"
        lines.append(
            f"| {v.scenario} | {fmt_ms(v.tailgate.summary.p99_s)} | {v.best.peer} "
            f"| {fmt_ms(v.best.summary.p99_s)} | {v.ratio:.2f} "
            f"| {fmt_ms(floor_s) if floor_s is not None else '-'} "
            f"| {fmt_pct(v.tailgate.summary.error_rate)} | {fmt_pct(v.best.summary.error_rate)} "
            f"| {met} |"
        )
    return "\n".join(lines + _overhead_lines(results))


def _overhead_lines(results: Sequence[RowResult]) -> list[str]:
    index = {(r.scenario, r.peer): r for r in results}
    lines: list[str] = []
    direct = index.get(("overhead-open", "direct"))
    ours = index.get(("overhead-open", TAILGATE))
    if direct and ours and direct.summary and ours.summary:
        d50 = ours.summary.p50_s - direct.summary.p50_s
        d99 = ours.summary.p99_s - direct.summary.p99_s
        lines.append("")
        lines.append(
            f"Added latency over direct at 1,000 rps: p50 {d50 * 1000:+.2f} ms (target <= 0.3: "
            f"{'met' if d50 <= OVERHEAD_P50_S else '**missed**'}), p99 {d99 * 1000:+.2f} ms "
            f"(target <= 1: {'met' if d99 <= OVERHEAD_P99_S else '**missed**'})."
        )
    envoy = index.get(("overhead-closed", "envoy least_request"))
    ours_c = index.get(("overhead-closed", TAILGATE))
    if envoy and ours_c and envoy.closed and ours_c.closed:
        share = ours_c.closed.requests_per_s / envoy.closed.requests_per_s
        lines.append(
            f"Closed-loop throughput, one worker each: tailgate {ours_c.closed.requests_per_s:,.0f}"
            f" rps = {share:.2f}x Envoy's {envoy.closed.requests_per_s:,.0f} rps (target >= 0.5: "
            f"{'met' if share >= THROUGHPUT_TARGET else '**missed**'})."
        )
    w2 = index.get(("overhead-closed", TAILGATE_W2))
    if w2 is not None:
        text = f"{w2.closed.requests_per_s:,.0f} rps" if w2.closed else w2.note or "n/a"
        lines.append(f"tailgate --workers 2, closed loop: {text}.")
    return lines + _floor_lines(results)


def _floor_lines(results: Sequence[RowResult]) -> list[str]:
    """Each tailgate row of the closed loop as a share of the floor (what the request path
    costs above aiohttp's server and the upstream client) and of Envoy, in the same run."""
    closed = {r.peer: r.closed for r in results if r.scenario == "overhead-closed" and r.closed}
    floor = closed.get(FLOOR)
    if floor is None:
        return []
    envoy = closed.get("envoy least_request")
    lines = [
        f"Closed-loop floor ({FLOOR}): {floor.requests_per_s:,.0f} rps"
        + (f" = {floor.requests_per_s / envoy.requests_per_s:.2f}x Envoy's." if envoy else ".")
    ]
    for peer, row in closed.items():
        if peer.startswith("tailgate"):
            share = row.requests_per_s / envoy.requests_per_s if envoy else None
            versus_envoy = f", {share:.2f}x Envoy" if share is not None else ""
            lines.append(
                f"{peer}: {row.requests_per_s:,.0f} rps = "
                f"{row.requests_per_s / floor.requests_per_s:.2f}x the floor{versus_envoy}."
            )
    return lines


def backend_load_note(results: Sequence[RowResult]) -> str:
    """Backend requests per client request in the trouble scenarios (retries and hedges)."""
    rows = [r for r in results if r.backend_per_request is not None and r.peer != "direct"]
    if not rows:
        return ""
    parts = []
    for r in rows:
        hedged = ""
        if r.hedges:
            hedged = " (hedges " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.hedges.items()))
            hedged += ")"
        parts.append(f"{r.scenario}/{r.peer} {r.backend_per_request:.3f}{hedged}")
    return (
        "Backend requests per client request (1.050 = 5% extra from retries and hedges): "
        + ", ".join(parts)
        + "."
    )


def lag_note(results: Sequence[RowResult]) -> str:
    open_rows = [r for r in results if r.summary is not None]
    if not open_rows:
        return ""
    worst = max(open_rows, key=lambda r: r.lag_p99_s)
    behind = [f"{r.scenario}/{r.peer}" for r in open_rows if r.behind_schedule]
    text = (
        f"Generator schedule lag p99 (how late requests left against the Poisson schedule): at "
        f"most {worst.lag_p99_s * 1000:.2f} ms ({worst.scenario}, {worst.peer})."
    )
    if behind:
        return (
            text
            + " Behind schedule (lag p50 > 1 ms or p99 > 10 ms, marked *): "
            + ", ".join(behind)
            + "."
        )
    return text + " No run fell behind its schedule."


def notes(results: Sequence[RowResult]) -> str:
    missing = [f"- {r.scenario} / {r.peer}: {r.note}" for r in results if r.note]
    return "\n".join(missing)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run (``python -m MODULE ARGS``), as reports quote it."""
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))


def publish(text: str, markdown: Path | None) -> None:
    """Print a report, and write it to ``markdown`` too when one is given."""
    print(text)
    if markdown:
        markdown.write_text(text)
