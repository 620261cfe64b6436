"""``python -m loadtests``: run the scenarios against tailgate and its peers, print the report.

python -m loadtests --duration 20s
python -m loadtests --duration 3s --scenarios slow-pod,errors --peers "tailgate weighted_score"
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from loadtests import report
from loadtests.peers import PEERS
from loadtests.plot import plot
from loadtests.runner import RowResult, Settings, run_all
from loadtests.scenarios import SCENARIOS


def _duration_s(text: str) -> float:
    """``20s``, ``500ms``, ``1m`` or plain seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def _names(text: str | None, known: dict[str, object], what: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {unknown}; known: {list(known)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    p.add_argument("--duration", default="20s", help="measured time per scenario and peer")
    p.add_argument("--warmup", default="2s", help="unmeasured load before each measurement")
    p.add_argument("--scenarios", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument("--peers", help="comma-separated subset of: " + ", ".join(PEERS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--proxy-cpus", default="0", help="taskset list for proxies ('' = no pin)")
    p.add_argument("--load-cpus", default="1", help="taskset list for load and pods")
    p.add_argument("--out", type=Path, default=Path("loadtests/results"))
    p.add_argument("--plot", type=Path, help="PNG path (default OUT/latency.png)")
    p.add_argument("--markdown", type=Path, help="also write the report to this file")
    p.add_argument("--profile", action="store_true", help="py-spy every tailgate row to OUT/")
    return p


def render(results: list[RowResult], trouble: list[str], plot_ref: str, cmd: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "## Load tests: tailgate against Envoy, nginx and HAProxy",
        "",
        f"Run {when} with:",
        "",
        f"    {cmd}",
        "",
        "Open-loop latency in ms over all requests (failures rank as the slowest; `fail` where "
        "they reach the percentile), errors as a share of requests:",
        "",
        report.latency_table(results),
        "",
        report.lag_note(results),
        "",
        report.backend_load_note(results),
        "",
        "Closed loop (wrk):",
        "",
        report.closed_table(results),
        "",
        "Targets (best peer = best of Envoy, nginx, HAProxy rows by p99):",
        "",
        report.targets_table(results, trouble),
        "",
        f"![latency distributions]({plot_ref})",
    ]
    extra = report.notes(results)
    if extra:
        parts += ["", "Rows without numbers:", "", extra]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenario_names = _names(args.scenarios, SCENARIOS, "scenarios") or list(SCENARIOS)  # type: ignore[arg-type]
    peer_names = _names(args.peers, PEERS, "peers")  # type: ignore[arg-type]
    settings = Settings(
        duration_s=_duration_s(args.duration),
        warmup_s=_duration_s(args.warmup),
        seed=args.seed,
        proxy_cpus=args.proxy_cpus or None,
        load_cpus=args.load_cpus or None,
        log_dir=args.out / "logs",
        profile_dir=args.out / "profiles" if args.profile else None,
    )
    if settings.load_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in settings.load_cpus.split(",")})

    def progress(r: RowResult) -> None:
        if r.summary is not None:
            s = r.summary
            print(f"{r.scenario:16} {r.peer:38} p50 {report.fmt_ms(s.p50_s):>7} p99 "
                  f"{report.fmt_ms(s.p99_s):>7} err {report.fmt_pct(s.error_rate):>7} "
                  f"n={s.count} lag99={r.lag_p99_s * 1000:.2f}ms", file=sys.stderr)  # fmt: skip
        elif r.closed is not None:
            print(f"{r.scenario:16} {r.peer:38} {r.closed.requests_per_s:,.0f} rps",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"{r.scenario:16} {r.peer:38} {r.note}", file=sys.stderr)

    scenarios = [SCENARIOS[n] for n in scenario_names]
    results = run_all(scenarios, peer_names, settings, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "ranked_latency_s": None} for r in results]  # latencies: too many
    (args.out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    png = args.plot or args.out / "latency.png"
    written = plot(results, png, f"tailgate vs peers, {args.duration} per run")
    trouble = [s.name for s in scenarios if s.trouble]
    cmd = report.command_line("loadtests", argv)
    plot_ref = str(png) if written else "(matplotlib not installed: no plot)"
    text = render(results, trouble, plot_ref, cmd)
    report.publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
