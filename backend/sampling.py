"""Choosing the next token from logits: greedy at temperature 0, else temperature and top-p.

Pure functions of their inputs: randomness comes only from the per-request generator passed
in, so a request with a seed gets the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample_row(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Draw one token from ``logits`` (``[vocab]``) within the smallest top-p nucleus."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep a token while the mass before it is under top_p; the most likely always stays.
        outside = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """Next token for each row of ``logits`` (``[batch, vocab]``); one host sync for greedy rows."""
    chosen = logits.argmax(dim=-1).tolist()
    for i, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if not p.greedy:
            assert gen is not None, "sampled rows need a generator"
            chosen[i] = sample_row(logits[i], p, gen)
    return chosen
