"""Drive a :class:`~backend.runner.ModelRunner` by hand, and check graphs against eager decoding.

The benchmark builds steps the way the engine does (one prefill per sequence, then batched
decode steps) without the engine's queue, threads and block manager: sequence i simply holds
its own run of blocks (:func:`own_blocks`). :func:`graph_parity` runs a short greedy
generation eagerly, then feeds the same tokens through the CUDA graphs, so every step of the two
runs sees identical inputs and their logits can be compared step by step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backend.model import Pointwise, Step
from backend.runner import ModelRunner
from backend.sampling import SamplingParams, sample

PARITY_PROMPT_LENS = (9, 16, 23, 30)  # one prompt per sequence of a parity check


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=gen).tolist()


def own_blocks(seq: int, width: int) -> list[int]:
    """A hand-driven sequence's blocks: sequence ``seq`` holds its own run of ``width`` blocks.

    Block 0 is the null block, so runs start at 1; a runner's default cache holds one run per
    batch slot (twice over).
    """
    return list(range(1 + seq * width, 1 + (seq + 1) * width))


def paged_step(
    rows: list[tuple[list[int], int, list[int]]],
    block_size: int,
    device: torch.device,
    last_only: bool = False,
) -> Step:
    """A step of ``(tokens, start position, blocks held)`` rows, all with as many tokens.

    Sent to the device as one host-to-device copy, as the engine sends its steps.
    """
    length = len(rows[0][0])
    width = max(-(-(start + length) // block_size) for _, start, _ in rows)
    tokens = [t for ids, _, _ in rows for t in ids]
    positions = [p for _, start, _ in rows for p in range(start, start + length)]
    slots = [
        blocks[p // block_size] * block_size + p % block_size
        for _, start, blocks in rows
        for p in range(start, start + length)
    ]
    table = [
        b for _, _, blocks in rows for b in blocks[:width] + [0] * (width - len(blocks[:width]))
    ]
    flat = torch.tensor(tokens + positions + slots + table, dtype=torch.int64)
    flat = flat.to(device, non_blocking=True)
    n, b = len(tokens), len(rows)
    tok, pos, write, blocks = flat.split((n, n, n, b * width))
    return Step(
        tokens=tok.view(b, length),
        input_pos=pos.view(b, length),
        write_slots=write,
        block_table=blocks.view(b, width),
        last_only=last_only,
    )


def prefill(runner: ModelRunner, seq: int, prompt: list[int]) -> int:
    """Prefill ``prompt`` as sequence ``seq`` (its :func:`own_blocks`); the greedy first token."""
    blocks = own_blocks(seq, runner.max_width)
    step = paged_step([(prompt, 0, blocks)], runner.block_size, runner.device, last_only=True)
    return sample(runner.forward(step)[:, -1], [SamplingParams()], [None])[0]


def decode_step(runner: ModelRunner, last: dict[int, tuple[int, int]]) -> Step:
    """One token per sequence; ``last`` maps sequence -> (token, position)."""
    width = runner.max_width
    rows = [([token], pos, own_blocks(seq, width)) for seq, (token, pos) in sorted(last.items())]
    return paged_step(rows, runner.block_size, runner.device)


def greedy(
    runner: ModelRunner,
    prompts: dict[int, list[int]],
    new_tokens: int,
    forced: dict[int, list[int]] | None = None,
) -> tuple[dict[int, list[int]], list[Tensor]]:
    """Greedy picks per sequence and each decode step's logits (float32, on the host).

    With ``forced`` (another run's picks) each step is fed those tokens instead of this run's
    own, so the two runs stay comparable step by step even after their picks differ.
    """
    picks = {seq: [prefill(runner, seq, prompt)] for seq, prompt in prompts.items()}
    fed = forced if forced is not None else picks
    logits_seen = []
    for i in range(new_tokens - 1):
        last = {s: (fed[s][i], len(prompts[s]) + i) for s in prompts}
        logits = runner.forward(decode_step(runner, last))[:, -1]
        logits_seen.append(logits.float().cpu())
        for seq, token in zip(sorted(prompts), logits.argmax(-1).tolist(), strict=True):
            picks[seq].append(token)
    return picks, logits_seen


def graph_parity(runner: ModelRunner, seqs: list[int], new_tokens: int) -> dict[str, Any]:
    """Greedy tokens eagerly through SDPA, then the same steps through graphs: do picks agree?

    ``differing`` counts the graph run's picks that differ from eager's (0: free-running greedy
    generation gives identical tokens). ``max_abs_diff`` is the largest logit difference over
    all steps and ``logit_std`` the logits' spread: a wrong block, position or stale input moves
    logits by about the spread, rounding by far less.
    """
    graphs = runner.shard.graphs
    assert graphs is not None, "parity needs a runner built with cuda_graphs"
    vocab = runner.config.vocab_size
    prompts = {
        s: random_prompt(vocab, length, seed=100 + s)
        for s, length in zip(seqs, PARITY_PROMPT_LENS, strict=False)
    }
    # The reference is the general path: eager, plain torch pointwise ops, K/V gathered for
    # SDPA; not the kernels the graphs captured (rank 0's choice: at TP > 1 workers keep theirs).
    model = runner.model
    runner.use_graphs, in_place, ops, decode_ops = (
        False,
        model.paged_decode,
        model.ops,
        model.decode_ops,
    )
    model.paged_decode, model.ops, model.decode_ops = False, Pointwise(), None
    try:
        eager, eager_logits = greedy(runner, prompts, new_tokens)
    finally:
        model.paged_decode, model.ops, model.decode_ops = in_place, ops, decode_ops
    runner.use_graphs = True
    graph, graph_logits = greedy(runner, prompts, new_tokens, forced=eager)
    differing = sum(a != b for s in seqs for a, b in zip(eager[s], graph[s], strict=True))
    diffs = [(g - e).abs().max().item() for g, e in zip(graph_logits, eager_logits, strict=True)]
    return {
        "seqs": seqs,
        "bucket": min(b for b in graphs.batches if b >= len(seqs)),
        "dtype": str(runner.model.embed_tokens.weight.dtype).removeprefix("torch."),
        "tokens": new_tokens,
        "differing": differing,
        "equal": differing == 0,
        "paged_kernel": in_place,
        "max_abs_diff": max(diffs, default=0.0),
        "logit_std": float(torch.stack(eager_logits).std()),
    }
