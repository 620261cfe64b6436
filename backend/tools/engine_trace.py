"""Where the engine's decode time goes on a GPU: the idle gaps between the GPU's work.

    python -m backend.tools.engine_trace --preset 1b --batch 1 --out DIR

Profiles :func:`backend.tools.scenarios.engine_decode` (GPU activity only, so the profiler adds
no per-op cost on the host) one step at a time and with the decode look-ahead, writes each
Chrome trace to ``DIR``, and prints per mode the GPU's idle gaps of at least ``--min-gap-us``
between one piece of device work and the next. Without the look-ahead the host's work for a
step (reading its tokens, building the next) sits between two steps: about one gap per step.
With it working, those gaps close and the GPU runs one step after the other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from backend.runner import RunnerSpec
from backend.tools.launch import sharded_runner
from backend.tools.scenarios import engine_decode
from backend.weights import ModelSource

TOKENS = 64  # per stream; engine_decode leaves out the first 16


def idle_gaps_us(busy: list[tuple[float, float]], min_gap_us: float) -> list[float]:
    """Gaps of at least ``min_gap_us`` between the ``(start_us, end_us)`` intervals' union."""
    gaps = []
    end_us: float | None = None
    for start_us, stop_us in sorted(busy):
        if end_us is not None and start_us - end_us >= min_gap_us:
            gaps.append(start_us - end_us)
        end_us = stop_us if end_us is None else max(end_us, stop_us)
    return gaps


def gap_summary(gaps_us: list[float], steps: int) -> dict[str, float]:
    """How many idle gaps there were per decode step, and their median and total (µs)."""
    return {
        "gaps": len(gaps_us),
        "gaps_per_step": len(gaps_us) / steps,
        "median_gap_us": statistics.median(gaps_us) if gaps_us else 0.0,
        "idle_us_per_step": sum(gaps_us) / steps,
    }


def _device_intervals(prof: torch.profiler.profile) -> list[tuple[float, float]]:
    """(start, end) in µs of every kernel, copy and fill the GPU ran."""
    return [
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    ]


def trace(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Both modes on one loaded model; a Chrome trace of each under ``a.out``."""
    from torch.profiler import ProfilerActivity, profile

    spec = RunnerSpec(
        source=ModelSource(preset=a.preset),
        world=1,
        device_type="cuda",
        dtype="bfloat16",
        max_batch_size=max(a.batch, 8),
        max_model_len=a.max_model_len,
        cuda_graphs=True,
        timeout_s=120,
    )
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    with sharded_runner(spec) as runner:
        engine_decode(runner, a.max_model_len, a.batch, look_ahead=True, tokens=TOKENS)  # warm
        for look_ahead in (False, True):
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                run = engine_decode(runner, a.max_model_len, a.batch, look_ahead, tokens=TOKENS)
            name = f"{a.preset}-b{a.batch}-{'ahead' if look_ahead else 'serial'}.json"
            prof.export_chrome_trace(str(a.out / name))
            gaps = idle_gaps_us(_device_intervals(prof), a.min_gap_us)
            results.append(  # one decode step per token of a stream
                {"look_ahead": look_ahead, "itl_ms": run["itl_ms"], "trace": name}
                | gap_summary(gaps, TOKENS)
            )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.tools.engine_trace", description=__doc__)
    p.add_argument("--preset", default="1b")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--min-gap-us", type=float, default=50.0, help="shorter idle gaps not counted")
    p.add_argument("--out", type=Path, required=True, help="folder for the Chrome traces")
    a = p.parse_args(argv)
    for r in trace(a):
        how = "look-ahead" if r["look_ahead"] else "one step at a time"
        print(
            f"engine trace {a.preset} batch {a.batch} ({how}): {r['itl_ms']:.3f} ms between "
            f"tokens (profiled); GPU idle gaps >= {a.min_gap_us:.0f} us: {r['gaps']} "
            f"({r['gaps_per_step']:.2f} per step), median {r['median_gap_us']:.0f} us, "
            f"{r['idle_us_per_step']:.0f} us idle per step; trace {r['trace']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
