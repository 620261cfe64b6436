"""GPU benchmark of the backend's model path: decode speed against the memory-bandwidth floor.

``python -m backend.bench`` measures HBM bandwidth with a large device-to-device copy, then runs
each (preset, tp) case in a fresh process (so GPU memory and process groups never carry over)
and prints a markdown table. Each case drives the real :class:`~backend.runner.ModelRunner`
(rank 0 here, ranks 1..N-1 spawned as in serving) and samples greedily as the engine does.

A decode step must at least stream this rank's weights from HBM once, so its floor is
``streamed weight bytes per rank / measured bandwidth`` (= weight bytes / (N x bandwidth)
when everything is sharded evenly).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from backend import tp
from backend.parity import PARITY_PROMPT_LENS, decode_step, graph_parity, prefill, random_prompt
from backend.runner import ModelRunner, RunnerSpec, worker_main
from backend.sampling import SamplingParams, sample
from backend.weights import ModelSource

GIB = 1024**3
PARITY_TOKENS = 24  # greedy tokens per prompt in the graph-vs-eager check
PARITY_SLOTS = ([0, 1, 2, 3], [0, 2, 5])  # contiguous, no padding; scattered, with padding


@dataclass(frozen=True)
class Case:
    """One model load: a (preset, tp, dtype) to time, or only to check graphs against eager."""

    preset: str
    world: int
    device_type: str
    dtype: str
    prompt_len: int
    steps: int
    batches: tuple[int, ...]
    cuda_graphs: bool
    timings: bool = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth_bytes_per_s(
    device: torch.device, size_bytes: int = 4 * GIB, repeats: int = 10
) -> float:
    """Memory rate of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    elapsed_s = time.perf_counter() - start
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * size_bytes * repeats / elapsed_s


def attention_regrowth_ms(device: torch.device, cudnn: bool, steps: int = 32) -> float:
    """Mean ms of a decode-shaped attention call whose KV length grows by one each call.

    Shows what a kernel that plans per shape (cuDNN) costs in decoding, where no two
    consecutive steps share a KV length.
    """
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    q = torch.randn(1, 32, 1, 128, device=device, dtype=torch.bfloat16)
    kv = torch.randn(1, 8, 514 + steps, 128, device=device, dtype=torch.bfloat16)
    start = 0.0
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            start = time.perf_counter()
        length = 512 + i
        mask = torch.ones(1, 1, 1, length, dtype=torch.bool, device=device)
        k = kv[:, :, :length]
        torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask, enable_gqa=True)
    _sync(device)
    torch.backends.cuda.enable_cudnn_sdp(True)
    return (time.perf_counter() - start) / steps * 1000


def _streamed_bytes(runner: ModelRunner) -> int:
    """Weight bytes a decode step reads on this rank (the embedding only by rows)."""
    model = runner.model
    params = [model.lm_head.weight, model.norm.weight, *model.layers.parameters()]
    return sum(p.numel() * p.element_size() for p in params)


def _decode_step_s(runner: ModelRunner, batch: int, prompt_len: int, steps: int) -> float:
    """Mean seconds per batched decode step after ``batch`` prefills (greedy, host-synced)."""
    vocab = runner.config.vocab_size
    prompts = [random_prompt(vocab, prompt_len, seed=slot) for slot in range(batch)]
    tokens = [prefill(runner, slot, prompt) for slot, prompt in enumerate(prompts)]
    warm = 4
    start = 0.0
    for i in range(warm + steps):
        if i == warm:
            _sync(runner.device)
            start = time.perf_counter()
        step = decode_step(runner, {s: (t, prompt_len + i) for s, t in enumerate(tokens)})
        logits = runner.forward(step)[:, -1]
        tokens = sample(logits, [SamplingParams()] * batch, [None] * batch)
    return (time.perf_counter() - start) / steps


def _gpu_memory_used_gib(world: int, device: torch.device) -> list[float]:
    if device.type != "cuda":
        return [0.0]
    try:
        return [torch.cuda.device_memory_used(r) / GIB for r in range(world)]
    except Exception:  # NVML unavailable: fall back to this process's own allocations
        return [torch.cuda.max_memory_allocated() / GIB]


def _ttft_ms(runner: ModelRunner, prompt_len: int) -> float:
    """Median of 5 host-synced prefills plus first token (after 2 warm-ups)."""
    prompt = random_prompt(runner.config.vocab_size, prompt_len, seed=1)
    times = []
    for i in range(7):
        _sync(runner.device)
        t = time.perf_counter()
        prefill(runner, 0, prompt)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _measure(runner: ModelRunner, case: Case) -> dict[str, Any]:
    graphs = runner.shard.graphs
    result: dict[str, Any] = {
        "ttft_ms": _ttft_ms(runner, case.prompt_len),
        "weights_gib_per_gpu": runner.weight_bytes() / GIB,
        "streamed_bytes": _streamed_bytes(runner),
        "capture_s": graphs.capture_s if graphs else None,
        "step_ms": {},
        "graph_step_ms": {},
    }
    for batch in case.batches:
        runner.use_graphs = False
        step_s = _decode_step_s(runner, batch, case.prompt_len, case.steps)
        result["step_ms"][str(batch)] = step_s * 1000
        if graphs is not None:
            runner.use_graphs = True
            step_s = _decode_step_s(runner, batch, case.prompt_len, case.steps)
            result["graph_step_ms"][str(batch)] = step_s * 1000
    return result


def _exit_on_worker_death(reason: str) -> None:
    """A dead rank would leave rank 0 waiting forever inside a replayed collective."""
    print(f"tensor-parallel {reason}", file=sys.stderr, flush=True)
    os._exit(3)


def run_case(case: Case) -> dict[str, Any]:
    """One case in this process as rank 0; returns its measurements and parity checks."""
    spec = RunnerSpec(
        source=ModelSource(preset=case.preset),
        world=case.world,
        device_type=case.device_type,
        dtype=case.dtype,
        max_batch_size=max(*case.batches, 8),
        max_model_len=max(case.prompt_len + case.steps, max(PARITY_PROMPT_LENS) + PARITY_TOKENS)
        + 8,
        timeout_s=120,
        cuda_graphs=case.cuda_graphs,
    )
    world = case.world
    store = tp.open_store("127.0.0.1", 0, spec.rank(0), spec.timeout_s) if world > 1 else None
    spec = replace(spec, store_port=store.port if store else 0)
    workers = tp.Workers.launch(world, worker_main, (spec,))
    workers.watch(_exit_on_worker_death)
    t0 = time.perf_counter()
    runner = ModelRunner.start(spec, store)
    load_s = time.perf_counter() - t0
    try:
        result = {"preset": case.preset, "tp": world, "load_s": load_s, "parity": []}
        if case.timings:
            result |= _measure(runner, case)
        if case.cuda_graphs:
            for slots in PARITY_SLOTS:
                result["parity"].append(graph_parity(runner, slots, PARITY_TOKENS))
        result["gpu_mem_used_gib"] = _gpu_memory_used_gib(world, runner.device)
        return result
    finally:
        workers.expect_exit()
        runner.close()
        workers.stop(30)


def _table(bandwidth: float, results: list[dict[str, Any]], batches: list[int]) -> str:
    head = (
        "| preset | TP | weights/GPU (GiB) | GPU mem used (GiB, per GPU) | TTFT (ms) | batch "
        "| floor (ms) | eager step (ms) | graph step (ms) | eager / floor | graph / floor "
        "| eager tok/s | graph tok/s |"
    )
    rows = [head, "|" + "---|" * 13]
    for r in results:
        floor_ms = r["streamed_bytes"] / bandwidth * 1000
        mem = " / ".join(f"{m:.1f}" for m in r["gpu_mem_used_gib"])
        for batch in batches:
            cells = []
            for key in ("step_ms", "graph_step_ms"):
                ms = r[key].get(str(batch))
                if ms is None:
                    cells.append(("-", "-", "-"))
                else:
                    cells.append((f"{ms:.2f}", f"{ms / floor_ms:.2f}", f"{batch / ms * 1000:.0f}"))
            (e_ms, e_floor, e_tok), (g_ms, g_floor, g_tok) = cells
            rows.append(
                f"| {r['preset']} | {r['tp']} | {r['weights_gib_per_gpu']:.2f} | {mem} "
                f"| {r['ttft_ms']:.1f} | {batch} | {floor_ms:.2f} | {e_ms} | {g_ms} "
                f"| {e_floor} | {g_floor} | {e_tok} | {g_tok} |"
            )
    return "\n".join(rows)


def _parity_lines(result: dict[str, Any]) -> tuple[list[str], bool]:
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
            f"parity {result['preset']} tp={result['tp']} {check['dtype']} slots={check['slots']} "
            f"(bucket {check['bucket']}), {check['tokens']} greedy tokens each: {verdict} "
            f"({check['differing']} differ); max |logit diff| {check['max_abs_diff']:.3g} "
            f"against a logit std of {check['logit_std']:.3g}"
        )
    return lines, ok


def _run_one(case: Case, timeout_s: float) -> dict[str, Any] | str:
    """One case in a fresh process: its result, or why it failed."""
    cmd = [sys.executable, "-m", "backend.bench", "--one", json.dumps(asdict(case))]
    cmd += ["--case-timeout", str(timeout_s)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return f"timed out after {timeout_s:.0f}s:\n{tail[-4000:]}"
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return f"exit {out.returncode}:\n{out.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def _report(case: Case, result: dict[str, Any]) -> bool:
    """Print a finished case's load line and parity lines; whether its parity checks passed."""
    capture = f", graphs captured in {result['capture_s']:.2f}s" if result.get("capture_s") else ""
    print(f"done {case.preset} tp={case.world} {case.dtype}: load {result['load_s']:.1f}s{capture}")
    lines, passed = _parity_lines(result)
    print("\n".join(lines), flush=True)
    return passed


def _run_cases(cases: list[Case], timeout_s: float) -> tuple[list[dict[str, Any]], bool]:
    """Every case; one whose graphs fail is rerun eagerly so its eager numbers still come."""
    results, ok = [], True
    for case in cases:
        result = _run_one(case, timeout_s)
        if isinstance(result, str) and case.cuda_graphs and case.timings:
            ok = False
            print(f"case {case.preset} tp={case.world} with CUDA graphs failed, {result}")
            case = replace(case, cuda_graphs=False)
            result = _run_one(case, timeout_s)
        if isinstance(result, str):
            ok = False
            print(f"case {case.preset} tp={case.world} {case.dtype} failed, {result}", flush=True)
            continue
        ok &= _report(case, result)
        if case.timings:
            results.append(result)
    return results, ok


def _cases(a: argparse.Namespace, gpus: int) -> list[Case]:
    """Timed cases (bf16 on GPUs), then float32 parity cases where rounding cannot flip picks."""
    cuda = a.device == "cuda"
    worlds = [w for w in (int(t) for t in a.tp.split(",")) if not cuda or w <= gpus]
    batches = tuple(int(b) for b in a.batches.split(","))
    timed = [
        Case(
            preset,
            w,
            a.device,
            "bfloat16" if cuda else "float32",
            a.prompt_len,
            a.steps,
            batches,
            a.cuda_graphs,
        )
        for preset in a.presets.split(",")
        for w in worlds
    ]
    exact = [
        Case(a.parity_preset, w, a.device, "float32", a.prompt_len, a.steps, batches, True, False)
        for w in worlds
        if a.cuda_graphs and a.parity_preset
    ]
    return timed + exact


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.bench", description=__doc__)
    p.add_argument("--presets", default="1b,8b")
    p.add_argument("--tp", default="1,2", help="TP degrees to compare")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=64, help="timed decode steps per batch size")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke test")
    p.add_argument("--copy-gib", type=float, default=4.0, help="size of the bandwidth copy")
    p.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="measure eager decoding only (no graph capture, no parity check)",
    )
    p.add_argument(
        "--parity-preset", default="1b", help="float32 graph-vs-eager check ('' to skip)"
    )
    p.add_argument("--case-timeout", type=float, default=180, help="seconds per model load")
    p.add_argument("--one", metavar="CASE_JSON", help="internal: run one case, print JSON")
    a = p.parse_args(argv)
    if a.one:
        # A hang inside a replayed collective is invisible to NCCL's watchdog: show where.
        faulthandler.dump_traceback_later(max(1.0, a.case_timeout - 10), exit=True)
        case = json.loads(a.one)
        result = run_case(Case(**{**case, "batches": tuple(case["batches"])}))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    device = tp.device_for(0, a.device)
    bandwidth = measure_bandwidth_bytes_per_s(device, int(a.copy_gib * GIB))
    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    name = torch.cuda.get_device_name(0) if gpus else "cpu"
    print(f"device: {name} x{gpus}, torch {torch.__version__}")
    print(f"memory copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s", flush=True)
    if gpus:
        on, off = (attention_regrowth_ms(device, cudnn) for cudnn in (True, False))
        print(
            f"decode attention, KV length growing each call: cuDNN allowed {on:.2f} ms/call, "
            f"cuDNN off {off:.3f} ms/call",
            flush=True,
        )
    results, ok = _run_cases(_cases(a, gpus), a.case_timeout)
    print()
    print(_table(bandwidth, results, [int(b) for b in a.batches.split(",")]))
    if not ok:
        print("\nFAILED: see the case and parity lines above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
