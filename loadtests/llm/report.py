"""The LLM report: one table per scenario (TTFT, TPOT, end-to-end, goodput, errors, cache
hits) and the TTFT distributions as a plot, drawn by :mod:`loadtests.plot`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from loadtests.llm.runner import LlmRow
from loadtests.llm.scenarios import SCENARIOS
from loadtests.llm.summary import Slo
from loadtests.plot import plot
from loadtests.report import fmt_ms, fmt_pct
from loadtests.runner import RowResult

HEAD = (
    "| peer | TTFT p50 | TTFT p90 | TTFT p99 | TTFT p99 warm | TPOT p50 | TPOT p99 | e2e p99 "
    "| goodput rps (share) | errors | prefix hits | follow-ups kept | aborted |"
)


def row_line(row: LlmRow) -> str:
    s = row.summary
    if s is None:
        return f"| {row.peer} | {row.note} |" + " - |" * 11
    mark = "*" if s.behind_schedule else ""
    hits = "n/a" if math.isnan(row.cache_hit_rate) else f"{row.cache_hit_rate * 100:.0f}%"
    kept = "n/a" if math.isnan(s.kept_share) else f"{s.kept_share * 100:.0f}%"
    cells = [
        row.peer + mark,
        fmt_ms(s.ttft_p50_s),
        fmt_ms(s.ttft_p90_s),
        fmt_ms(s.ttft_p99_s),
        fmt_ms(s.ttft_warm_p99_s),
        fmt_ms(s.tpot_p50_s),
        fmt_ms(s.tpot_p99_s),
        fmt_ms(s.e2e_p99_s),
        f"{s.goodput_rps:.2f} ({s.slo_share * 100:.0f}%)",
        f"{fmt_pct(s.error_rate)} of {s.requests}",
        hits,
        kept,
        str(row.aborted),
    ]
    return "| " + " | ".join(cells) + " |"


def tables(rows: Sequence[LlmRow]) -> str:
    parts = []
    for name in dict.fromkeys(r.scenario for r in rows):
        title = SCENARIOS[name].title if name in SCENARIOS else name
        cold = max(
            (r.summary.cold_opens for r in rows if r.scenario == name and r.summary), default=0
        )
        heading = f"**{name}**: {title}" + (f" ({cold} cold opens)" if cold else "")
        parts += [heading, "", HEAD, "|" + "---|" * 13]
        parts += [row_line(r) for r in rows if r.scenario == name]
        parts.append("")
    return "\n".join(parts)


def lag_note(rows: Sequence[LlmRow]) -> str:
    measured = [r for r in rows if r.summary is not None]
    if not measured:
        return ""
    worst = max(measured, key=lambda r: r.summary.lag_p99_s)  # type: ignore[union-attr]
    behind = [f"{r.scenario}/{r.peer}" for r in measured if r.summary.behind_schedule]  # type: ignore[union-attr]
    text = (
        f"Client schedule lag p99: at most {worst.summary.lag_p99_s * 1000:.1f} ms "  # type: ignore[union-attr]
        f"({worst.scenario}, {worst.peer})."
    )
    if behind:
        return text + " Behind schedule (marked *): " + ", ".join(behind) + "."
    return text + " No run fell behind its schedule."


def hedge_note(rows: Sequence[LlmRow]) -> str:
    """tailgate's hedges per row (``tailgate_hedges_total`` by event): a hedge goes to another
    backend, so on prefix-cached traffic it is affinity undone."""
    cells = [
        f"{r.scenario}/{r.peer} " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.hedges.items()))
        for r in rows
        if r.hedges
    ]
    return "tailgate hedges: " + "; ".join(cells) + "." if cells else "tailgate hedges: none."


def legend(slo: Slo) -> str:
    return (
        "Milliseconds; TTFT and e2e percentiles rank failures as the slowest (`fail` where "
        "they reach the percentile); TPOT over successful streams. Goodput: requests that "
        f"succeeded with TTFT <= {slo.ttft_s * 1000:.0f} ms and TPOT <= "
        f"{slo.tpot_s * 1000:.0f} ms, per second (share of all requests). Prefix hits: prompt "
        "tokens the pods found cached (vLLM's prefix_cache_hits / queries), over the fleet. "
        "Follow-ups kept: follow-up turns served by the pod that served the session's "
        "previous turn (each answer's system_fingerprint names its pod). TTFT p99 warm: "
        "without the cold opens, sessions' first turns whose system prompt no earlier session "
        "carried (no pod can hold it: a whole prefill whatever the router does)."
    )


def plot_ttft(rows: Sequence[LlmRow], path: Path, title: str) -> Path | None:
    """TTFT distributions, one panel per scenario, one line per peer."""
    as_rows = [RowResult(r.scenario, r.peer, ranked_latency_s=r.ranked_ttft_s) for r in rows]
    return plot(as_rows, path, title, ylabel="time to first token (ms, log)")
