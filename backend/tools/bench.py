"""GPU benchmark of the backend's model path: decode speed against the memory-bandwidth floor.

``python -m backend.tools.bench`` (alias ``python -m backend.bench``) measures HBM bandwidth
with a large device-to-device copy, then runs each (preset, tp, max-model-len) case in a fresh
process (so GPU memory and process groups never carry over) and prints a markdown table. Each
case drives the real :class:`~backend.runner.ModelRunner` (rank 0 here, ranks 1..N-1 spawned
as in serving) and samples greedily as the engine does; ``--scenarios`` presets are also timed
through the engine (:mod:`backend.tools.scenarios`).

A decode step must at least stream this rank's weights from HBM once, so its floor is
``streamed weight bytes per rank / measured bandwidth`` (= weight bytes / (N x bandwidth)
when everything is sharded evenly).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from backend import paged_attention, ranks
from backend.config import BackendConfig
from backend.model import PRESETS, PagedKVCache, Step, rope_tables
from backend.runner import ModelRunner, RunnerSpec
from backend.sampling import SamplingParams, sample
from backend.tools.launch import sharded_runner
from backend.tools.parity import (
    PARITY_PROMPT_LENS,
    decode_step,
    graph_parity,
    prefill,
    random_prompt,
)
from backend.tools.report import parity_lines, scenario_lines, table
from backend.tools.scenarios import (
    engine_decode_compared,
    itl_under_long_prefill,
    prefix_cached_ttft,
)
from backend.weights import ModelSource

GIB = 1024**3
PARITY_TOKENS = 24  # greedy tokens per prompt in the graph-vs-eager check
PARITY_SEQS = ([0, 1, 2, 3], [0, 2, 5])  # a full bucket of 4; 3 rows in bucket 4, one padding
ITL_BUDGETS = (8192, 512)  # max_num_batched_tokens: a 4,000-token prompt in one pass, in chunks
ITL_ROUNDS = 2  # each budget timed one step at a time, then with look-ahead, this many times
ENGINE_BATCHES = (1, 8)  # streams decoded together through the engine
ENGINE_ROUNDS = 3  # engine decode timed off, then with look-ahead, this many times over
PREFILL_GRAPH_TOKENS = BackendConfig.prefill_graph_tokens  # what a server captures by default


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
    max_model_len: int = 8192
    scenarios: bool = False  # also time prefix-cached TTFT and ITL under a long prefill
    compile: bool = False  # fuse the elementwise work with torch.compile
    profile: bool = False  # print the top kernels of one eager batch-1 decode step
    engine_batches: tuple[int, ...] = ENGINE_BATCHES  # with scenarios: engine decode batches
    engine_rounds: int = ENGINE_ROUNDS


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


def attention_kernel_ms(device: torch.device, repeats: int = 20) -> dict[str, float | str]:
    """Mean ms of the model's decode attention (batch 32, 1,024 cached positions) per kernel.

    Shows which SDPA kernel the default dispatch picks for the model's call (GQA folded into
    the query rows, a boolean mask, K/V gathered from blocks): its time should match the
    memory-efficient kernel's, not the math fallback's. A kernel that refuses the call shows
    its error instead. ``in-place`` is :mod:`backend.paged_attention`'s kernel on the same
    shape, reading 64 blocks per row from a paged cache (RoPE and the K/V write included, no
    gather, no mask): what decode steps on a GPU run.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(32, 8, 4, 128, device=device, dtype=torch.bfloat16)
    kv = torch.randn(32, 1024, 8, 128, device=device, dtype=torch.bfloat16).transpose(1, 2)
    mask = torch.ones(32, 1, 4, 1024, dtype=torch.bool, device=device)
    choices = {
        "default": [
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH,
        ],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION],
        "math": [SDPBackend.MATH],
    }
    result: dict[str, float | str] = {}
    for name, kernels in choices.items():
        try:
            with sdpa_kernel(kernels):
                for i in range(repeats + 2):
                    if i == 2:
                        _sync(device)
                        start = time.perf_counter()
                    torch.nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=mask)
                _sync(device)
            result[name] = (time.perf_counter() - start) / repeats * 1000
        except RuntimeError as exc:
            result[name] = str(exc).splitlines()[0][:80]
    if paged_attention.AVAILABLE:
        result["in-place"] = _in_place_attention_ms(device, repeats)
    return result


def _in_place_attention_ms(device: torch.device, repeats: int) -> float:
    rows, width, block_size = 32, 64, 16
    cache = PagedKVCache(1 + rows * width, block_size, 8, 128, device=device, dtype=torch.bfloat16)
    cache.k.normal_()
    cache.v.normal_()
    table = torch.arange(1, 1 + rows * width, device=device).view(rows, width)
    pos = torch.full((rows, 1), width * block_size - 1, device=device)
    step = Step(pos, pos, table[:, -1] * block_size + block_size - 1, table)
    qkv = torch.randn(rows, 1, 48, 128, device=device, dtype=torch.bfloat16)
    cos, sin = rope_tables(PRESETS["8b"], width * block_size, device)
    cos, sin = cos.to(torch.bfloat16), sin.to(torch.bfloat16)
    paged_attention.decode_attention(qkv, cos, sin, cache.k, cache.v, step, block_size)  # JIT
    # Replayed as a graph, as decode steps run it: Python's launch cost would hide the kernel's.
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            paged_attention.decode_attention(qkv, cos, sin, cache.k, cache.v, step, block_size)
    graph.replay()
    _sync(device)
    start = time.perf_counter()
    graph.replay()
    _sync(device)
    return (time.perf_counter() - start) / repeats * 1000


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
        "replay_ms": {},
    }
    for batch in case.batches:
        runner.use_graphs = False
        step_s = _decode_step_s(runner, batch, case.prompt_len, case.steps)
        result["step_ms"][str(batch)] = step_s * 1000
        if graphs is not None and runner.device.type == "cuda":
            runner.use_graphs = True
            step_s = _decode_step_s(runner, batch, case.prompt_len, case.steps)
            result["graph_step_ms"][str(batch)] = step_s * 1000
            last = decode_step(runner, dict.fromkeys(range(batch), (0, case.prompt_len + 8)))
            result["replay_ms"][str(batch)] = graphs.replay_s(runner.graph_key(last)) * 1000
    if case.profile and runner.device.type == "cuda":
        result["profile"] = _profile(runner, case.prompt_len)
    return result


def _profile(runner: ModelRunner, prompt_len: int) -> str:
    """The top GPU kernels of three eager batch-1 decode steps, as torch.profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    runner.use_graphs = False
    first = prefill(runner, 0, random_prompt(runner.config.vocab_size, prompt_len, seed=3))
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        for i in range(3):
            runner.forward(decode_step(runner, {0: (first, prompt_len + i)}))
        _sync(runner.device)
    return prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=14, max_name_column_width=60
    )


def run_case(case: Case) -> dict[str, Any]:
    """One case in this process as rank 0; returns its measurements and parity checks."""
    needed = max(case.prompt_len + case.steps, max(PARITY_PROMPT_LENS) + PARITY_TOKENS) + 8
    spec = RunnerSpec(
        source=ModelSource(preset=case.preset),
        world=case.world,
        device_type=case.device_type,
        dtype=case.dtype,
        max_batch_size=max(*case.batches, *case.engine_batches, 8),
        max_model_len=max(needed, case.max_model_len),
        timeout_s=120,
        cuda_graphs=case.cuda_graphs,
        prefill_graph_tokens=PREFILL_GRAPH_TOKENS if case.cuda_graphs else 0,
        compile=case.compile,
    )
    # One run of blocks per batch row (what the hand-driven sequences use), plus the null block.
    spec = replace(spec, num_blocks=spec.max_batch_size * spec.max_width + 1)
    t0 = time.perf_counter()
    with sharded_runner(spec) as runner:
        load_s = time.perf_counter() - t0
        result: dict[str, Any] = {
            "preset": case.preset + ("+compile" if case.compile else ""),
            "tp": case.world,
            "max_model_len": spec.max_model_len,
            "load_s": load_s,
            "parity": [],
        }
        if case.timings:
            result |= _measure(runner, case)
        if case.scenarios:
            runner.use_graphs = runner.shard.graphs is not None
            result["ttft_cached"] = []
            for prefill_graphs in sorted({False, runner.shard.prefill_graphs is not None}):
                runner.use_prefill_graphs = prefill_graphs  # the tail after the prefix
                ttft = prefix_cached_ttft(runner, spec.max_model_len)
                result["ttft_cached"].append(ttft | {"prefill_graphs": prefill_graphs})
            runner.use_prefill_graphs = runner.shard.prefill_graphs is not None
            result["engine_decode"] = [
                engine_decode_compared(runner, spec.max_model_len, batch, case.engine_rounds)
                for batch in case.engine_batches
            ]
            result["itl"] = [  # alternating, so the look-ahead's effect shows beside the noise
                itl_under_long_prefill(runner, spec.max_model_len, budget, look_ahead=look_ahead)
                for budget in ITL_BUDGETS
                for _ in range(ITL_ROUNDS)
                for look_ahead in (False, True)
            ]
        if case.cuda_graphs:
            for seqs in PARITY_SEQS:
                result["parity"].append(graph_parity(runner, seqs, PARITY_TOKENS))
        result["gpu_mem_used_gib"] = _gpu_memory_used_gib(case.world, runner.device)
        return result


def _run_one(case: Case, timeout_s: float) -> dict[str, Any] | str:
    """One case in a fresh process: its result, or why it failed."""
    cmd = [sys.executable, "-m", "backend.tools.bench", "--one", json.dumps(asdict(case))]
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
    compiled = " compiled" if case.compile else ""
    print(
        f"done {case.preset} tp={case.world} {case.dtype}{compiled} "
        f"max_model_len={result.get('max_model_len')}: load {result['load_s']:.1f}s{capture}"
    )
    for batch, ms in result.get("replay_ms", {}).items():
        print(f"  graph replay alone (GPU time, no host work), batch {batch}: {ms:.2f} ms")
    if result.get("profile"):
        print(result["profile"])
    lines, passed = parity_lines(result)
    lines += scenario_lines(result)
    # Both modes replay the same graphs on the same batches: any differing token is a bug.
    passed &= all(d["tokens_equal"] for d in result.get("engine_decode", []))
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
    engine_batches = tuple(int(b) for b in a.engine_batches.split(","))
    lengths = [int(n) for n in a.max_model_lens.split(",")]
    scenario_presets = set(filter(None, a.scenarios.split(",")))
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
            max_model_len=length,
            scenarios=preset in scenario_presets and length == lengths[0],
            engine_batches=engine_batches,
            engine_rounds=a.engine_rounds,
        )
        for preset in a.presets.split(",")
        for w in worlds
        for length in (lengths if preset == a.context_preset else lengths[:1])
    ]
    profiled = set(filter(None, a.profile.split(",")))
    timed = [
        replace(c, profile=c.preset in profiled and c.max_model_len == lengths[0]) for c in timed
    ]
    compiled = [
        Case(
            preset,
            w,
            a.device,
            "bfloat16" if cuda else "float32",
            a.prompt_len,
            a.steps,
            batches,
            a.cuda_graphs,
            max_model_len=lengths[0],
            compile=True,
        )
        for preset in filter(None, a.compile.split(","))
        for w in worlds
    ]
    timed += compiled
    exact = [
        Case(
            a.parity_preset,
            w,
            a.device,
            "float32",
            a.prompt_len,
            a.steps,
            batches,
            True,
            False,
            max_model_len=256,
        )
        for w in worlds
        if a.cuda_graphs and a.parity_preset
    ]
    exact += [replace(c, compile=True) for c in exact if a.parity_preset in a.compile.split(",")]
    return timed + exact


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.tools.bench", description=__doc__)
    p.add_argument("--presets", default="1b,8b")
    p.add_argument("--tp", default="1", help="TP degrees to compare (e.g. 1,2)")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument(
        "--max-model-lens",
        default="8192,512",
        help="server context limits; the first for every preset, all for --context-preset",
    )
    p.add_argument("--context-preset", default="1b", help="preset timed at every --max-model-lens")
    p.add_argument(
        "--compile", default="1b,8b", help="presets also timed with torch.compile'd pointwise ops"
    )
    p.add_argument("--profile", default="8b", help="presets whose eager step is profiled")
    p.add_argument(
        "--scenarios",
        default="8b",
        help="presets also timed through the engine: prefix-cached TTFT, ITL under prefill",
    )
    p.add_argument(
        "--engine-batches",
        default=",".join(map(str, ENGINE_BATCHES)),
        help="with --scenarios: streams decoded together through the engine, per timing",
    )
    p.add_argument(
        "--engine-rounds",
        type=int,
        default=ENGINE_ROUNDS,
        help="engine decode timed one step at a time, then with look-ahead, this many times",
    )
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
        batches = {k: tuple(case[k]) for k in ("batches", "engine_batches")}
        result = run_case(Case(**{**case, **batches}))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    device = ranks.device_for(0, a.device)
    bandwidth = measure_bandwidth_bytes_per_s(device, int(a.copy_gib * GIB))
    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    name = torch.cuda.get_device_name(0) if gpus else "cpu"
    print(f"device: {name} x{gpus}, torch {torch.__version__}")
    print(f"memory copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s", flush=True)
    if gpus:
        kernels = attention_kernel_ms(device)
        shown = ", ".join(
            f"{k} {v:.3f} ms" if isinstance(v, float) else f"{k}: {v}" for k, v in kernels.items()
        )
        print(f"decode attention (batch 32, 1024 positions, GQA folded): {shown}", flush=True)
    results, ok = _run_cases(_cases(a, gpus), a.case_timeout)
    print()
    print(table(bandwidth, results, [int(b) for b in a.batches.split(",")]))
    if not ok:
        print("\nFAILED: see the case and parity lines above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
