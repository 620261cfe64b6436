"""Latency distributions as a PNG: one panel per open-loop scenario, one line per peer.

The x axis is in "nines" (90%, 99%, 99.9%) so the tail gets as much room as the median;
failed requests are drawn at the top of the panel, where they rank in the "all requests" view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from loadtests.runner import RowResult


def nines(q: float) -> float:
    """Position of quantile ``q`` in [0, 1) on the nines axis: 0.9 -> 1, 0.99 -> 2."""
    return -math.log10(1 - q)


def plot(
    results: Sequence[RowResult],
    path: Path,
    title: str = "",
    ylabel: str = "latency (ms, log)",
) -> Path | None:
    """Write the PNG; None (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scenarios = list(dict.fromkeys(r.scenario for r in results if r.ranked_latency_s))
    if not scenarios:
        return None
    labels = list(dict.fromkeys(r.peer for r in results if r.ranked_latency_s))
    palette = plt.get_cmap("tab10")
    color = {label: palette(i % 10) for i, label in enumerate(labels)}  # same in every panel
    cols = min(3, len(scenarios))
    rows = math.ceil(len(scenarios) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, scenarios, strict=False):
        runs = [r for r in results if r.scenario == name and r.ranked_latency_s]
        finite = [v for r in runs for v in r.ranked_latency_s if not math.isinf(v)]
        ceiling_ms = max(finite, default=1.0) * 1000 * 1.5
        for r in runs:
            n = len(r.ranked_latency_s)
            xs = [nines((i + 0.5) / n) for i in range(n)]
            ys = [ceiling_ms if math.isinf(v) else v * 1000 for v in r.ranked_latency_s]
            style = "-" if r.peer.startswith("tailgate") else "--"
            ax.plot(xs, ys, style, color=color[r.peer], label=r.peer, linewidth=1.4)
        ax.set_yscale("log")
        ax.set_xticks([0, 1, 2, 3, 4], ["0%", "90%", "99%", "99.9%", "99.99%"])
        ax.set_xlim(0, 3.3)
        ax.axhline(ceiling_ms, color="grey", linewidth=0.6)
        ax.text(0.05, ceiling_ms * 1.03, "failed", color="grey", fontsize=8)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], color=color[p], linestyle="-" if p.startswith("tailgate") else "--")
        for p in labels
    ]
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
