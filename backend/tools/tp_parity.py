"""Float32 parity of the sharded model against TP = 1 on the same device: logits and greedy picks.

    python -m backend.tools.tp_parity --device cuda --preset 1b --tp 2 --dist-backend gloo
    python -m backend.tools.tp_parity --device cuda --preset 1b --tp 2     # two GPUs: nccl

The same seeded random weights are loaded at TP = 1, then at TP = N, and both run the same
passes; every check compares TP = N's logits with TP = 1's (max absolute difference) and counts
the greedy picks that differ. The checks: whole prefills; a prompt prefilled in chunks; a prompt
whose first blocks are another's cached prefix, against its uncached prefill; last-token
prefills through the prefill graphs (padded to their bucket); greedy decoding
eagerly (on a GPU through :mod:`backend.paged_attention`'s kernel, each rank with 1/N of the
heads) and through the decode graphs; and the engine end to end (chunked prefill under a small
token budget, a second prompt served from the first one's cached prefix, with the engine's
decode look-ahead; and without it, at both TP degrees): identical tokens.

With ``--dist-backend gloo`` the ranks may share one GPU (NCCL refuses that), which checks the
sharded math on the GPU's kernels with one GPU; gloo's collectives run on the host, so at
TP > 1 the decode graphs are not captured and their static-shape steps run eagerly: graph
capture at TP > 1 is only checked over NCCL, on N GPUs. Controls compare TP = 1 with itself
(chunks, cached prefix, graphs against eager): the rounding that reordering alone brings.
Nothing here is a measure of speed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.config import DIST_BACKENDS, default_dist_backend
from backend.engine import Engine, Request
from backend.runner import ModelRunner, RunnerSpec
from backend.tools.launch import sharded_runner
from backend.tools.parity import greedy, own_blocks, paged_step, random_prompt
from backend.tools.scenarios import Borrowed
from backend.weights import ModelSource

TOLERANCE = 1e-4  # max |logit difference|, float32
PROMPT_LENS = (40, 23, 44)  # prompt 2 shares prompt 0's first SHARED_BLOCKS blocks
SHARED_BLOCKS = 2
CHUNKS = (5, 16, 19)  # prompt 0 prefilled in these pieces (the second crosses a block)
DECODE_TOKENS = 16
ENGINE_BUDGET = 24  # max_num_batched_tokens of the engine check: prompts go in chunks
ENGINE_TIMEOUT_S = 120.0
PREFILL_GRAPH_TOKENS = 64  # the prompts' and the engine's chunks fit: their prefills replay graphs


@dataclass(frozen=True)
class Check:
    """One comparison of TP = N against TP = 1."""

    name: str
    max_abs_diff: float
    differing_picks: int = 0

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= TOLERANCE and self.differing_picks == 0


def _prompts(vocab: int, block_size: int) -> list[list[int]]:
    prompts = [random_prompt(vocab, n, seed=300 + i) for i, n in enumerate(PROMPT_LENS)]
    shared = SHARED_BLOCKS * block_size
    prompts[2] = prompts[0][:shared] + prompts[2][shared:]
    return prompts


def _pass(runner: ModelRunner, ids: list[int], start: int, blocks: list[int]) -> Tensor:
    step = paged_step([(ids, start, blocks)], runner.block_size, runner.device)
    return runner.forward(step)[0].float().cpu()


def _prefill_outputs(runner: ModelRunner, prompts: list[list[int]]) -> dict[str, Tensor]:
    """Logits of whole prefills, of prompt 0 in chunks, and of prompt 2 after a cached prefix."""
    out: dict[str, Tensor] = {}
    width = runner.max_width
    for i, ids in enumerate(prompts):
        out[f"whole{i}"] = _pass(runner, ids, 0, own_blocks(i, width))
    pieces, start = [], 0
    for size in CHUNKS:
        pieces.append(_pass(runner, prompts[0][start : start + size], start, own_blocks(0, width)))
        start += size
    out["chunked"] = torch.cat(pieces)
    # Prompt 0's first blocks hold the shared prefix (written above); prompt 2 reads them and
    # computes only its own tail into blocks of its own.
    shared = SHARED_BLOCKS * runner.block_size
    blocks = own_blocks(0, width)[:SHARED_BLOCKS] + own_blocks(3, width)[SHARED_BLOCKS:]
    out["cached"] = _pass(runner, prompts[2][shared:], shared, blocks)
    if runner.shard.prefill_graphs is not None:  # last-token prefills, through their graphs
        runner.use_graphs = runner.use_prefill_graphs = True
        for i, ids in enumerate(prompts):
            step = paged_step(
                [(ids, 0, own_blocks(i, width))], runner.block_size, runner.device, True
            )
            out[f"graph_last{i}"] = runner.forward(step)[0].float().cpu()
    return out


def _engine_tokens(
    runner: ModelRunner, prompts: list[list[int]], look_ahead: bool = True
) -> tuple[list[list[int]], int]:
    """Greedy tokens of prompts 0 then 2 through the engine, one after the other (so the
    second finds the first's blocks cached), prefilled in chunks; and the prefix-hit tokens."""
    engine = Engine(
        lambda: Borrowed(runner),
        max_batch_size=4,
        max_model_len=runner.max_width * runner.block_size,
        max_queue=4,
        rng=random.Random(0),
        max_num_batched_tokens=ENGINE_BUDGET,
        look_ahead=look_ahead,
    )
    engine.start()
    outputs = []
    try:
        for ids in (prompts[0], prompts[2]):
            done = threading.Event()
            request = Request(
                prompt_ids=ids,
                max_tokens=DECODE_TOKENS,
                ignore_eos=True,
                on_event=lambda event, done=done: event.finish_reason and done.set(),
            )
            engine.submit(request)
            if not done.wait(ENGINE_TIMEOUT_S):
                raise RuntimeError("the engine did not finish a parity request")
            outputs.append(request.output_ids)
        stats = engine.cache_stats()
    finally:
        engine.stop(30)
    return outputs, stats.hit_tokens if stats else 0


@dataclass
class Outputs:
    """What one TP degree produced for the checks."""

    passes: dict[str, Tensor]
    picks: dict[str, dict[int, list[int]]]
    decode_logits: dict[str, list[Tensor]]
    engine_tokens: list[list[int]]
    serial_engine_tokens: list[list[int]]  # the engine without look-ahead
    hit_tokens: int
    graphs_captured: bool


def collect(runner: ModelRunner, reference: Outputs | None) -> Outputs:
    """Run every check's passes; with ``reference`` (TP = 1's), decode is fed its picks."""
    prompts = _prompts(runner.config.vocab_size, runner.block_size)
    passes = _prefill_outputs(runner, prompts)
    decode_prompts = dict(enumerate(prompts))
    picks, logits = {}, {}
    graphs = runner.shard.graphs
    paths = ["eager"] + (["graphs"] if graphs is not None else [])
    for path in paths:
        runner.use_graphs = path == "graphs"
        forced = reference.picks["eager"] if reference is not None else None
        picks[path], logits[path] = greedy(runner, decode_prompts, DECODE_TOKENS, forced)
    runner.use_graphs = graphs is not None
    engine_tokens, hits = _engine_tokens(runner, prompts)
    serial, _ = _engine_tokens(runner, prompts, look_ahead=False)
    captured = graphs is not None and graphs.captured
    return Outputs(passes, picks, logits, engine_tokens, serial, hits, captured)


def _max_diff(a: list[Tensor] | Tensor, b: list[Tensor] | Tensor) -> float:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return float((a - b).abs().max())
    return max((float((x - y).abs().max()) for x, y in zip(a, b, strict=True)), default=0.0)


def _differing(a: dict[int, list[int]], b: dict[int, list[int]]) -> int:
    return sum(x != y for s in a for x, y in zip(a[s], b[s], strict=True))


def compare(tp1: Outputs, tpn: Outputs, block_size: int) -> list[Check]:
    """Every check of TP = N against TP = 1 (and TP = 1's own graphs, as a control)."""
    shared = SHARED_BLOCKS * block_size
    whole = [k for k in tp1.passes if k.startswith("whole")]
    checks = [
        Check("whole prefills", max(_max_diff(tp1.passes[k], tpn.passes[k]) for k in whole)),
        Check(
            "prefill in chunks vs TP=1 whole",
            _max_diff(tp1.passes["whole0"], tpn.passes["chunked"]),
        ),
        Check(
            "after a cached prefix vs TP=1 uncached",
            _max_diff(tp1.passes["whole2"][shared:], tpn.passes["cached"]),
        ),
    ]
    graphed = [k for k in tpn.passes if k.startswith("graph_last")]
    if graphed:
        checks.append(
            Check(
                "prefill graphs (last token) vs TP=1 eager",
                max(_max_diff(tp1.passes[f"whole{k[-1]}"][-1:], tpn.passes[k]) for k in graphed),
            )
        )
    checks += [
        Check(
            "control: TP=1 chunks vs TP=1 whole",
            _max_diff(tp1.passes["whole0"], tp1.passes["chunked"]),
        ),
        Check(
            "control: TP=1 cached prefix vs TP=1 uncached",
            _max_diff(tp1.passes["whole2"][shared:], tp1.passes["cached"]),
        ),
    ]
    reference_logits, reference_picks = tp1.decode_logits["eager"], tp1.picks["eager"]
    for path in tpn.picks:
        checks.append(
            Check(
                f"decode, {path}",
                _max_diff(reference_logits, tpn.decode_logits[path]),
                _differing(reference_picks, tpn.picks[path]),
            )
        )
    if "graphs" in tp1.picks:
        checks.append(
            Check(
                "control: TP=1 graphs vs TP=1 eager",
                _max_diff(reference_logits, tp1.decode_logits["graphs"]),
                _differing(reference_picks, tp1.picks["graphs"]),
            )
        )
    for name, out in (("TP=1", tp1), ("TP=N", tpn)):
        checks.append(
            Check(
                f"control: {name} engine look-ahead vs one step at a time",
                0.0,
                _differing(
                    dict(enumerate(out.engine_tokens)), dict(enumerate(out.serial_engine_tokens))
                ),
            )
        )
    engine_differs = sum(
        x != y
        for a, b in zip(tp1.engine_tokens, tpn.engine_tokens, strict=True)
        for x, y in zip(a, b, strict=True)
    )
    no_hits = int(tpn.hit_tokens < shared)  # the second prompt must reuse the shared blocks
    checks.append(
        Check(
            f"engine tokens, chunks of {ENGINE_BUDGET}, cached prefix",
            0.0,
            engine_differs + no_hits,
        )
    )
    return checks


def spec_for(a: argparse.Namespace, world: int) -> RunnerSpec:
    return RunnerSpec(
        source=ModelSource(preset=a.preset),
        world=world,
        device_type=a.device,
        dtype="float32",
        max_batch_size=4,
        max_model_len=a.max_model_len,
        block_size=16,
        timeout_s=120,
        dist_backend=a.dist_backend,
        cuda_graphs=True,  # on a CPU (and over gloo at TP > 1) uncaptured: static steps, eager
        prefill_graph_tokens=PREFILL_GRAPH_TOKENS,
    )


def run(a: argparse.Namespace) -> dict[str, Any]:
    with sharded_runner(spec_for(a, 1)) as runner:
        tp1 = collect(runner, None)
        paged = runner.model.paged_decode
    with sharded_runner(spec_for(a, a.tp)) as runner:
        tpn = collect(runner, tp1)
        block_size = runner.block_size
    checks = compare(tp1, tpn, block_size)
    return {
        "preset": a.preset,
        "tp": a.tp,
        "device": a.device,
        "dist_backend": a.dist_backend or default_dist_backend(a.device),
        "torch": torch.__version__,
        "paged_decode_kernel": paged,
        "graphs_captured": {"tp1": tp1.graphs_captured, f"tp{a.tp}": tpn.graphs_captured},
        "prefix_hit_tokens": tpn.hit_tokens,
        "logit_std": float(tp1.passes["whole0"].std()),
        "checks": [asdict(c) | {"passed": c.passed} for c in checks],
        "passed": all(c.passed for c in checks),
    }


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"TP={result['tp']} vs TP=1, {result['preset']} float32 on {result['device']} "
        f"({result['dist_backend']}), paged decode kernel: {result['paged_decode_kernel']}, "
        f"graphs captured: {result['graphs_captured']}, logit std {result['logit_std']:.3g}",
        "| check | max abs logit diff | differing picks | passed |",
        "|---|--:|--:|---|",
    ]
    for c in result["checks"]:
        lines.append(
            f"| {c['name']} | {c['max_abs_diff']:.2e} | {c['differing_picks']} | {c['passed']} |"
        )
    lines.append("PASSED" if result["passed"] else "FAILED")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backend.tools.tp_parity", description=__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dist-backend", choices=list(DIST_BACKENDS), default=None)
    p.add_argument("--max-model-len", type=int, default=256)
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)
    result = run(a)
    print("\n".join(report_lines(result)), flush=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
