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
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import torch

from backend import tp
from backend.model import Step
from backend.runner import ModelRunner, RunnerSpec, worker_main
from backend.sampling import SamplingParams, sample
from backend.weights import ModelSource

GIB = 1024**3
PARITY_TOKENS = 24  # greedy tokens per prompt in the graph-vs-eager check
PARITY_PROMPT_LENS = (9, 16, 23, 30)  # one per slot of a parity check


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


def _prefill(runner: ModelRunner, slot: int, prompt: list[int]) -> int:
    """Prefill ``prompt`` into ``slot``; the greedy first token."""
    device, n = runner.device, len(prompt)
    step = Step(
        tokens=torch.tensor([prompt], device=device),
        input_pos=torch.arange(n, device=device)[None],
        slots=torch.tensor([slot], device=device),
        kv_len=n,
        slot_start=slot,
        last_only=True,
    )
    return sample(runner.forward(step)[:, -1], [SamplingParams()], [None])[0]


def _random_prompt(runner: ModelRunner, length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, runner.config.vocab_size, (length,), generator=gen).tolist()


def _decode_step(runner: ModelRunner, last: dict[int, tuple[int, int]]) -> Step:
    """One token per slot, as the engine builds it; ``last`` maps slot -> (token, position)."""
    slots = sorted(last)
    contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
    device = runner.device
    return Step(
        tokens=torch.tensor([[last[s][0]] for s in slots], device=device),
        input_pos=torch.tensor([[last[s][1]] for s in slots], device=device),
        slots=torch.tensor(slots, device=device),
        kv_len=max(pos for _, pos in last.values()) + 1,
        slot_start=slots[0] if contiguous else None,
        slot_limit=slots[-1] + 1,
    )


def _decode_step_s(runner: ModelRunner, batch: int, prompt_len: int, steps: int) -> float:
    """Mean seconds per batched decode step after ``batch`` prefills (greedy, host-synced)."""
    prompts = [_random_prompt(runner, prompt_len, seed=slot) for slot in range(batch)]
    tokens = [_prefill(runner, slot, prompt) for slot, prompt in enumerate(prompts)]
    warm = 4
    start = 0.0
    for i in range(warm + steps):
        if i == warm:
            _sync(runner.device)
            start = time.perf_counter()
        step = _decode_step(runner, {s: (t, prompt_len + i) for s, t in enumerate(tokens)})
        logits = runner.forward(step)[:, -1]
        tokens = sample(logits, [SamplingParams()] * batch, [None] * batch)
    return (time.perf_counter() - start) / steps


def _greedy(
    runner: ModelRunner, prompts: dict[int, list[int]], new_tokens: int
) -> tuple[dict[int, list[int]], list[torch.Tensor]]:
    """Greedy tokens per slot, and each decode step's logits (float, on the host)."""
    out = {slot: [_prefill(runner, slot, prompt)] for slot, prompt in prompts.items()}
    logits_seen = []
    for _ in range(new_tokens - 1):
        last = {s: (out[s][-1], len(prompts[s]) + len(out[s]) - 1) for s in out}
        logits = runner.forward(_decode_step(runner, last))[:, -1]
        logits_seen.append(logits.float().cpu())
        for slot, token in zip(sorted(out), logits.argmax(-1).tolist(), strict=True):
            out[slot].append(token)
    return out, logits_seen


def graph_parity(runner: ModelRunner, slots: list[int], new_tokens: int) -> dict[str, Any]:
    """Greedy generation through graphs and eagerly from the same prompts: are tokens equal?

    ``max_abs_diff`` compares logits over the steps before any divergence, which tells a
    rounding difference (small) from a wrong input or slot (as large as the logits).
    """
    prompts = {
        s: _random_prompt(runner, length, seed=100 + s)
        for s, length in zip(slots, PARITY_PROMPT_LENS, strict=False)
    }
    runs = {}
    for use_graphs in (False, True):
        runner.use_graphs = use_graphs
        runs[use_graphs] = _greedy(runner, prompts, new_tokens)
    runner.use_graphs = True
    (eager, eager_logits), (graph, graph_logits) = runs[False], runs[True]
    agreeing = 0  # decode steps before the first differing token
    while agreeing < new_tokens - 1 and all(
        eager[s][: agreeing + 2] == graph[s][: agreeing + 2] for s in slots
    ):
        agreeing += 1
    diffs = [(graph_logits[i] - eager_logits[i]).abs().max().item() for i in range(agreeing)]
    graphs = runner.shard.graphs
    assert graphs is not None
    return {
        "slots": slots,
        "bucket": min(b for b in graphs.buckets if b > max(slots)),
        "tokens": new_tokens,
        "equal": eager == graph,
        "max_abs_diff": max(diffs, default=0.0),
    }


def _gpu_memory_used_gib(world: int, device: torch.device) -> list[float]:
    if device.type != "cuda":
        return [0.0]
    try:
        return [torch.cuda.device_memory_used(r) / GIB for r in range(world)]
    except Exception:  # NVML unavailable: fall back to this process's own allocations
        return [torch.cuda.max_memory_allocated() / GIB]


def _ttft_ms(runner: ModelRunner, prompt_len: int) -> float:
    """Median of 5 host-synced prefills plus first token (after 2 warm-ups)."""
    prompt = _random_prompt(runner, prompt_len, seed=1)
    times = []
    for i in range(7):
        _sync(runner.device)
        t = time.perf_counter()
        _prefill(runner, 0, prompt)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _measure(
    runner: ModelRunner, batches: list[int], prompt_len: int, steps: int
) -> dict[str, Any]:
    graphs = runner.shard.graphs
    result: dict[str, Any] = {
        "ttft_ms": _ttft_ms(runner, prompt_len),
        "weights_gib_per_gpu": runner.weight_bytes() / GIB,
        "streamed_bytes": _streamed_bytes(runner),
        "capture_s": graphs.capture_s if graphs else None,
        "step_ms": {},
        "graph_step_ms": {},
        "parity": [],
    }
    for batch in batches:
        runner.use_graphs = False
        result["step_ms"][str(batch)] = _decode_step_s(runner, batch, prompt_len, steps) * 1000
        if graphs is not None:
            runner.use_graphs = True
            graph_s = _decode_step_s(runner, batch, prompt_len, steps)
            result["graph_step_ms"][str(batch)] = graph_s * 1000
    if graphs is not None:
        # Contiguous slots with no padding, then scattered slots with padding rows.
        for slots in ([0, 1, 2, 3], [0, 2, 5]):
            result["parity"].append(graph_parity(runner, slots, PARITY_TOKENS))
    return result


def run_case(
    preset: str,
    world: int,
    device_type: str,
    prompt_len: int,
    steps: int,
    batches: list[int],
    cuda_graphs: bool,
) -> dict[str, Any]:
    """One (preset, tp) case in this process as rank 0; returns its measurements."""
    spec = RunnerSpec(
        source=ModelSource(preset=preset),
        world=world,
        device_type=device_type,
        dtype="bfloat16" if device_type == "cuda" else "float32",
        max_batch_size=max(*batches, 8),
        max_model_len=max(prompt_len + steps, max(PARITY_PROMPT_LENS) + PARITY_TOKENS) + 8,
        timeout_s=120,
        cuda_graphs=cuda_graphs,
    )
    store = tp.open_store("127.0.0.1", 0, spec.rank(0), spec.timeout_s) if world > 1 else None
    spec = replace(spec, store_port=store.port if store else 0)
    workers = tp.Workers.launch(world, worker_main, (spec,))
    t0 = time.perf_counter()
    runner = ModelRunner.start(spec, store)
    load_s = time.perf_counter() - t0
    try:
        result = {"preset": preset, "tp": world, "load_s": load_s}
        result |= _measure(runner, batches, prompt_len, steps)
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
    """Human lines for a case's graph-vs-eager checks, and whether all of them passed."""
    lines, ok = [], True
    for check in result["parity"]:
        ok &= check["equal"]
        lines.append(
            f"parity {result['preset']} tp={result['tp']} slots={check['slots']} "
            f"(bucket {check['bucket']}), {check['tokens']} greedy tokens each: "
            f"{'PASS, graph == eager' if check['equal'] else 'FAIL, tokens differ'}; "
            f"max |logit diff| before any divergence {check['max_abs_diff']:.3g}"
        )
    return lines, ok


def _run_one(
    args: argparse.Namespace, preset: str, world: int, graphs: bool
) -> dict[str, Any] | str:
    """One case in a fresh process: its result, or why it failed."""
    cmd = [sys.executable, "-m", "backend.bench", "--one", "--presets", preset, "--tp", str(world)]
    cmd += ["--device", args.device, "--batches", args.batches]
    cmd += ["--prompt-len", str(args.prompt_len), "--steps", str(args.steps)]
    cmd += [] if graphs else ["--no-cuda-graphs"]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=args.case_timeout
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        return f"timed out after {args.case_timeout}s:\n{tail!r}"
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return f"exit {out.returncode}:\n{out.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def _run_cases(args: argparse.Namespace, gpus: int) -> tuple[list[dict[str, Any]], bool]:
    """Every (preset, tp) case; a case whose graphs fail is rerun eagerly for its numbers."""
    results, ok = [], True
    for preset in args.presets.split(","):
        for world in (int(t) for t in args.tp.split(",")):
            if args.device == "cuda" and world > gpus:
                print(f"skip {preset} tp={world}: only {gpus} GPUs")
                continue
            result = _run_one(args, preset, world, args.cuda_graphs)
            if isinstance(result, str) and args.cuda_graphs:
                ok = False
                print(f"case {preset} tp={world} with CUDA graphs failed, {result}", flush=True)
                result = _run_one(args, preset, world, graphs=False)
            if isinstance(result, str):
                ok = False
                print(f"case {preset} tp={world} failed, {result}", flush=True)
                continue
            lines, passed = _parity_lines(result)
            ok &= passed
            capture = (
                f", graphs captured in {result['capture_s']:.2f}s" if result["capture_s"] else ""
            )
            print(f"done {preset} tp={world}: load {result['load_s']:.1f}s{capture}", flush=True)
            print("\n".join(lines), flush=True)
            results.append(result)
    return results, ok


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
    p.add_argument("--case-timeout", type=float, default=300, help="seconds per (preset, tp)")
    p.add_argument("--one", action="store_true", help="internal: run a single case, print JSON")
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    if a.one:
        result = run_case(
            a.presets, int(a.tp), a.device, a.prompt_len, a.steps, batches, a.cuda_graphs
        )
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
    results, ok = _run_cases(a, gpus)
    print()
    print(_table(bandwidth, results, batches))
    if not ok:
        print("\nFAILED: see the case and parity lines above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
