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


def _prefill(runner: ModelRunner, slot: int, prompt_len: int) -> int:
    device = runner.device
    step = Step(
        tokens=torch.randint(0, runner.config.vocab_size, (1, prompt_len), device=device),
        input_pos=torch.arange(prompt_len, device=device)[None],
        slots=torch.tensor([slot], device=device),
        kv_len=prompt_len,
        slot_start=slot,
        last_only=True,
    )
    return sample(runner.forward(step)[:, -1], [SamplingParams()], [None])[0]


def _decode_step_s(runner: ModelRunner, batch: int, prompt_len: int, steps: int) -> float:
    """Mean seconds per batched decode step after ``batch`` prefills (greedy, host-synced)."""
    device = runner.device
    tokens = [_prefill(runner, slot, prompt_len) for slot in range(batch)]
    slots = torch.arange(batch, device=device)
    warm = 4
    start = 0.0
    for i in range(warm + steps):
        if i == warm:
            _sync(device)
            start = time.perf_counter()
        pos = prompt_len + i
        step = Step(
            tokens=torch.tensor(tokens, device=device)[:, None],
            input_pos=torch.full((batch, 1), pos, device=device),
            slots=slots,
            kv_len=pos + 1,
            slot_start=0,
        )
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


def run_case(
    preset: str, world: int, device_type: str, prompt_len: int, steps: int, batches: list[int]
) -> dict[str, Any]:
    """One (preset, tp) case in this process as rank 0; returns its measurements."""
    spec = RunnerSpec(
        source=ModelSource(preset=preset),
        world=world,
        device_type=device_type,
        dtype="bfloat16" if device_type == "cuda" else "float32",
        max_batch_size=max(batches),
        max_model_len=prompt_len + steps + 8,
        timeout_s=120,
    )
    store = tp.open_store("127.0.0.1", 0, spec.rank(0), spec.timeout_s) if world > 1 else None
    spec = replace(spec, store_port=store.port if store else 0)
    workers = tp.Workers.launch(world, worker_main, (spec,))
    t0 = time.perf_counter()
    runner = ModelRunner.start(spec, store)
    load_s = time.perf_counter() - t0
    try:
        for _ in range(2):
            _prefill(runner, 0, prompt_len)
        ttft = []
        for _ in range(5):
            _sync(runner.device)
            t = time.perf_counter()
            _prefill(runner, 0, prompt_len)
            ttft.append(time.perf_counter() - t)
        result: dict[str, Any] = {
            "preset": preset,
            "tp": world,
            "load_s": load_s,
            "ttft_ms": statistics.median(ttft) * 1000,
            "weights_gib_per_gpu": runner.weight_bytes() / GIB,
            "streamed_bytes": _streamed_bytes(runner),
            "step_ms": {},
        }
        for batch in batches:
            result["step_ms"][str(batch)] = _decode_step_s(runner, batch, prompt_len, steps) * 1000
        result["gpu_mem_used_gib"] = _gpu_memory_used_gib(world, runner.device)
        return result
    finally:
        workers.expect_exit()
        runner.close()
        workers.stop(30)


def _table(bandwidth: float, results: list[dict[str, Any]], batches: list[int]) -> str:
    head = (
        "| preset | TP | weights/GPU (GiB) | GPU mem used (GiB, per GPU) | TTFT (ms) | batch "
        "| step (ms) | floor (ms) | step / floor | decode tok/s |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in results:
        floor_ms = r["streamed_bytes"] / bandwidth * 1000
        mem = " / ".join(f"{m:.1f}" for m in r["gpu_mem_used_gib"])
        for batch in batches:
            step_ms = r["step_ms"][str(batch)]
            rows.append(
                f"| {r['preset']} | {r['tp']} | {r['weights_gib_per_gpu']:.2f} | {mem} "
                f"| {r['ttft_ms']:.1f} | {batch} | {step_ms:.2f} | {floor_ms:.2f} "
                f"| {step_ms / floor_ms:.2f} | {batch / step_ms * 1000:.0f} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.bench", description=__doc__)
    p.add_argument("--presets", default="1b,8b")
    p.add_argument("--tp", default="1,2", help="TP degrees to compare")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=64, help="timed decode steps per batch size")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke test")
    p.add_argument("--copy-gib", type=float, default=4.0, help="size of the bandwidth copy")
    p.add_argument("--one", action="store_true", help="internal: run a single case, print JSON")
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    if a.one:
        result = run_case(a.presets, int(a.tp), a.device, a.prompt_len, a.steps, batches)
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
    results = []
    for preset in a.presets.split(","):
        for world in (int(t) for t in a.tp.split(",")):
            if a.device == "cuda" and world > gpus:
                print(f"skip {preset} tp={world}: only {gpus} GPUs")
                continue
            cmd = [
                sys.executable,
                "-m",
                "backend.bench",
                "--one",
                "--presets",
                preset,
                "--tp",
                str(world),
                "--device",
                a.device,
                "--batches",
                a.batches,
                "--prompt-len",
                str(a.prompt_len),
                "--steps",
                str(a.steps),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(f"case {preset} tp={world} failed:\n{out.stderr[-3000:]}", flush=True)
                continue
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(f"done {preset} tp={world}: load {results[-1]['load_s']:.1f}s", flush=True)
    print()
    print(_table(bandwidth, results, batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
