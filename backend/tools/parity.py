"""Drive a :class:`~backend.runner.ModelRunner` by hand, and check graphs against eager decoding.

The benchmark builds steps the way the engine does (one prefill per slot, then batched decode
steps) without the engine's queue and threads. :func:`graph_parity` runs a short greedy
generation eagerly, then feeds the same tokens through the CUDA graphs, so every step of the two
runs sees identical inputs and their logits can be compared step by step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backend.model import Step
from backend.runner import ModelRunner
from backend.sampling import SamplingParams, sample

PARITY_PROMPT_LENS = (9, 16, 23, 30)  # one prompt per slot of a parity check


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=gen).tolist()


def prefill(runner: ModelRunner, slot: int, prompt: list[int]) -> int:
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


def decode_step(runner: ModelRunner, last: dict[int, tuple[int, int]]) -> Step:
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


def greedy(
    runner: ModelRunner,
    prompts: dict[int, list[int]],
    new_tokens: int,
    forced: dict[int, list[int]] | None = None,
) -> tuple[dict[int, list[int]], list[Tensor]]:
    """Greedy picks per slot and each decode step's logits (float32, on the host).

    With ``forced`` (another run's picks) each step is fed those tokens instead of this run's
    own, so the two runs stay comparable step by step even after their picks differ.
    """
    picks = {slot: [prefill(runner, slot, prompt)] for slot, prompt in prompts.items()}
    fed = forced if forced is not None else picks
    logits_seen = []
    for i in range(new_tokens - 1):
        last = {s: (fed[s][i], len(prompts[s]) + i) for s in prompts}
        logits = runner.forward(decode_step(runner, last))[:, -1]
        logits_seen.append(logits.float().cpu())
        for slot, token in zip(sorted(prompts), logits.argmax(-1).tolist(), strict=True):
            picks[slot].append(token)
    return picks, logits_seen


def graph_parity(runner: ModelRunner, slots: list[int], new_tokens: int) -> dict[str, Any]:
    """Greedy tokens eagerly, then the same steps through graphs: do the picks agree?

    ``differing`` counts the graph run's picks that differ from eager's (0: free-running greedy
    generation gives identical tokens). ``max_abs_diff`` is the largest logit difference over
    all steps and ``logit_std`` the logits' spread: a wrong slot, position or stale input moves
    logits by about the spread, rounding by far less.
    """
    graphs = runner.shard.graphs
    assert graphs is not None, "parity needs a runner built with cuda_graphs"
    vocab = runner.config.vocab_size
    prompts = {
        s: random_prompt(vocab, length, seed=100 + s)
        for s, length in zip(slots, PARITY_PROMPT_LENS, strict=False)
    }
    runner.use_graphs = False
    eager, eager_logits = greedy(runner, prompts, new_tokens)
    runner.use_graphs = True
    graph, graph_logits = greedy(runner, prompts, new_tokens, forced=eager)
    differing = sum(a != b for s in slots for a, b in zip(eager[s], graph[s], strict=True))
    diffs = [(g - e).abs().max().item() for g, e in zip(graph_logits, eager_logits, strict=True)]
    return {
        "slots": slots,
        "bucket": min(b for b in graphs.buckets if b > max(slots)),
        "dtype": str(runner.model.embed_tokens.weight.dtype).removeprefix("torch."),
        "tokens": new_tokens,
        "differing": differing,
        "equal": differing == 0,
        "max_abs_diff": max(diffs, default=0.0),
        "logit_std": float(torch.stack(eager_logits).std()),
    }
