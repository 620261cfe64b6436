"""``python -m loadtests.llm``: the LLM fleet against tailgate's policies and the peers.

python -m loadtests.llm --duration 20s --markdown BENCHMARKS-llm.md
python -m loadtests.llm --duration 10s --scenarios equal --peers "tailgate weighted_score"
python -m loadtests.llm --scenarios equal --tailgate "affinity=weighted_score:affinity.yaml"

``--tailgate LABEL=POLICY[:FILE]`` adds a tailgate row whose config is the benchmark's with
FILE's YAML merged over it (repeatable), so a new policy or setting is one flag away.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from loadtests.__main__ import _duration_s, _names
from loadtests.llm import report
from loadtests.llm.runner import LLM_BUDGET, LLM_PEERS, LlmRow, run_all, tailgate_peer
from loadtests.llm.scenarios import SCENARIOS
from loadtests.llm.summary import Slo
from loadtests.peers import Peer
from loadtests.report import command_line, publish
from loadtests.runner import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.llm", description=__doc__.splitlines()[0])
    p.add_argument("--duration", default="20s", help="how long sessions keep starting per row")
    p.add_argument("--scenarios", help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument("--peers", help="comma-separated subset of: " + ", ".join(LLM_PEERS))
    p.add_argument(
        "--tailgate",
        action="append",
        default=[],
        metavar="LABEL=POLICY[:FILE]",
        help="an extra tailgate row, FILE's YAML merged over its config",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--slo-ttft", default="500ms")
    p.add_argument("--slo-tpot", default="50ms")
    p.add_argument("--proxy-cpus", default="0", help="taskset list for peers ('' = no pin)")
    p.add_argument("--load-cpus", default="1", help="taskset list for the pods and the client")
    p.add_argument("--out", type=Path, default=Path("loadtests/results/llm"))
    p.add_argument("--plot", type=Path, help="PNG path (default OUT/ttft.png)")
    p.add_argument("--markdown", type=Path, help="also write the report to this file")
    return p


def extra_peer(spec: str) -> Peer:
    """``LABEL=POLICY[:FILE]`` as a tailgate peer."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"--tailgate wants LABEL=POLICY[:FILE], not {spec!r}")
    policy, _, path = rest.partition(":")
    return tailgate_peer(policy, Path(path).read_text() if path else "", label)


def render(rows: list[LlmRow], slo: Slo, plot_ref: str, cmd: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "## LLM fleet: tailgate's policies against SGLang's router, nginx and Envoy",
        "",
        f"Run {when} with:",
        "",
        f"    {cmd}",
        "",
        report.legend(slo),
        "",
        report.tables(rows),
        report.lag_note(rows),
        "",
        report.hedge_note(rows),
        "",
        f"![TTFT distributions]({plot_ref})",
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = _names(args.scenarios, SCENARIOS, "scenarios") or list(SCENARIOS)  # type: ignore[arg-type]
    labels = _names(args.peers, LLM_PEERS, "peers")  # type: ignore[arg-type]
    peers = [LLM_PEERS[label] for label in (labels if labels is not None else LLM_PEERS)]
    peers += [extra_peer(spec) for spec in args.tailgate]
    settings = Settings(
        duration_s=_duration_s(args.duration),
        warmup_s=0.0,
        seed=args.seed,
        proxy_cpus=args.proxy_cpus or None,
        load_cpus=args.load_cpus or None,
        budget=LLM_BUDGET,
        client_timeout_s=LLM_BUDGET.total_s,
        log_dir=args.out / "logs",
    )
    slo = Slo(_duration_s(args.slo_ttft), _duration_s(args.slo_tpot))
    if settings.load_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in settings.load_cpus.split(",")})

    def progress(row: LlmRow) -> None:
        print(f"{row.scenario:12} {report.row_line(row)} {row.hedges}", file=sys.stderr, flush=True)

    rows = run_all([SCENARIOS[n] for n in names], peers, settings, slo, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    dump = [{**asdict(r), "ranked_ttft_s": None} for r in rows]
    (args.out / "results.json").write_text(json.dumps(dump, indent=1, default=str))
    png = args.plot or args.out / "ttft.png"
    written = report.plot_ttft(rows, png, f"LLM fleet, TTFT per peer, {args.duration} per row")
    cmd = command_line("loadtests.llm", argv)
    text = render(rows, slo, str(png) if written else "(matplotlib not installed: no plot)", cmd)
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
