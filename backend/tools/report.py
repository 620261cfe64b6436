"""The benchmark's printed output: the markdown table and the lines of each case's checks.

Pure formatting of the result dictionaries :mod:`backend.tools.bench` collects.
"""

from __future__ import annotations

from typing import Any


def table(bandwidth: float, results: list[dict[str, Any]], batches: list[int]) -> str:
    """One row per (case, batch); "% of floor" is floor / step time (100: at the floor)."""
    head = (
        "| preset | TP | max-model-len | weights/GPU (GiB) | GPU mem used (GiB) | TTFT (ms) "
        "| batch | floor (ms) | eager step (ms) | graph step (ms) | graph replay alone (ms) "
        "| graph % of floor | graph tok/s |"
    )
    rows = [head, "|" + "---|" * 13]
    for r in results:
        floor_ms = r["streamed_bytes"] / bandwidth * 1000
        mem = " / ".join(f"{m:.1f}" for m in r["gpu_mem_used_gib"])
        for batch in batches:
            eager = r["step_ms"].get(str(batch))
            graph = r["graph_step_ms"].get(str(batch))
            replay = r.get("replay_ms", {}).get(str(batch))
            rows.append(
                f"| {r['preset']} | {r['tp']} | {r['max_model_len']} "
                f"| {r['weights_gib_per_gpu']:.2f} | {mem} | {r['ttft_ms']:.1f} | {batch} "
                f"| {floor_ms:.2f} | {_ms(eager)} | {_ms(graph)} | {_ms(replay)} "
                f"| {f'{floor_ms / graph * 100:.0f}%' if graph else '-'} "
                f"| {f'{batch / graph * 1000:.0f}' if graph else '-'} |"
            )
    return "\n".join(rows)


def _runs(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parity_lines(result: dict[str, Any]) -> tuple[list[str], bool]:
    """Human lines for a case's graph-vs-eager checks, and whether all of them passed.

    Only float32 checks decide: in bf16 the graph's kernels may round differently from eager's
    (logit differences of ~0.1 against a spread of ~1), so a differing greedy pick there is
    reported for information, not counted as a failure.
    """
    lines, ok = [], True
    for check in result["parity"]:
        decisive = check["dtype"] == "float32"
        ok &= check["equal"] or not decisive
        if check["equal"]:
            verdict = "PASS, graph == eager"
        else:
            verdict = "FAIL, picks differ" if decisive else "picks differ (bf16 rounding, info)"
        lines.append(
            f"parity {result['preset']} tp={result['tp']} {check['dtype']} seqs={check['seqs']} "
            f"(bucket {check['bucket']}), {check['tokens']} greedy tokens each: {verdict} "
            f"({check['differing']} differ); max |logit diff| {check['max_abs_diff']:.3g} "
            f"against a logit std of {check['logit_std']:.3g}"
        )
    return lines, ok


def scenario_lines(result: dict[str, Any]) -> list[str]:
    """Human lines for a case's engine scenarios (prefix-cached TTFT, ITL under prefill)."""
    lines = []
    for ttft in result.get("ttft_cached", []):
        prefill = "graphs" if ttft.get("prefill_graphs") else "eager"
        lines.append(
            f"prefix cache {result['preset']} (short prefills {prefill}): "
            f"{ttft['prompt_len']}-token prompt, first "
            f"{ttft['cached_len']} shared: TTFT {ttft['cached_ttft_ms']:.1f} ms cached vs "
            f"{ttft['uncached_ttft_ms']:.1f} ms uncached (ratio {ttft['ratio']:.3f}; "
            f"{ttft['hit_tokens']} of {ttft['query_tokens']} prompt tokens hit)"
        )
    for d in result.get("engine_decode", []):
        lines.append(
            f"engine decode {result['preset']} batch {d['batch']}, median ms between a stream's "
            f"tokens per run: one step at a time {_runs(d['off_itl_ms'])}, look-ahead "
            f"{_runs(d['on_itl_ms'])}; look-ahead / one step at a time {d['ratio']:.3f}; "
            f"greedy tokens {'equal' if d['tokens_equal'] else 'DIFFER'}"
        )
    for itl in result.get("itl", []):
        how = "look-ahead" if itl["look_ahead"] else "one step at a time"
        lines.append(
            f"ITL {result['preset']} max_num_batched_tokens={itl['budget']} ({how}): a running "
            f"stream's steady {itl['steady_itl_ms']:.1f} ms/token; while a {itl['long_len']}-token "
            f"prompt prefills: max {itl['max_itl_during_prefill_ms']:.1f} ms, mean "
            f"{itl['mean_itl_during_prefill_ms']:.1f} ms (its TTFT {itl['long_ttft_ms']:.0f} ms)"
        )
    return lines
