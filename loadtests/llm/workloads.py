"""The traffic of an LLM run, planned before it starts from one seed, the same for every peer.

Three shapes:

- ``chat``: multi-turn sessions that open with one of ``system_prompts`` long system prompts,
  picked with Zipf popularity (a few are hot, most are rare, as with the assistants and agents
  of one deployment); each turn quotes the whole history, the pod's previous answers
  included, after a think time. This is where prefix caches pay.
- ``sharegpt``: one-turn requests with ShareGPT-like prompt and output lengths (lognormal,
  the shape vLLM's benchmark samples), no system prompt.
- ``control``: the ``chat`` shape with a system prompt of its own per session, so no prefix
  is shared across sessions: what affinity is worth is the difference from ``chat``.

Session starts are an open-loop Poisson process (a linear ramp when ``end_sessions_per_s`` is
set); a session's later turns follow its own answers, as a user's would. Lengths are in the
emulator's tokens (one word, one token).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from loadtests.schedule import linear_ramp, poisson_arrivals, varying_arrivals

WorkloadKind = Literal["chat", "sharegpt", "control"]


@dataclass(frozen=True)
class Turn:
    user: str
    max_tokens: int
    think_s: float  # the pause after the previous answer; 0 for a session's first turn


@dataclass(frozen=True)
class Session:
    start_s: float
    system: str  # "" for none
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class WorkloadSpec:
    """What to plan; token counts are medians of lognormal draws unless said otherwise."""

    kind: WorkloadKind = "chat"
    sessions_per_s: float = 1.0
    end_sessions_per_s: float | None = None  # a linear ramp from sessions_per_s when set
    system_prompts: int = 16
    system_tokens: int = 1500  # exact, for every system prompt
    zipf_s: float = 1.1
    turns_min: int = 2
    turns_max: int = 4
    think_mean_s: float = 1.5
    user_tokens: int = 60
    prompt_tokens: int = 160  # sharegpt prompts
    prompt_sigma: float = 1.0
    output_tokens: int = 100
    output_sigma: float = 0.7
    max_output_tokens: int = 256  # keeps streams, and this machine's CPU, bounded
    max_prompt_tokens: int = 2000


def _lognormal_int(rng: random.Random, median: int, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def _words(rng: random.Random, count: int) -> str:
    """``count`` words no other prompt shares (fresh random ids)."""
    return " ".join(f"u{rng.getrandbits(40):x}" for _ in range(count))


def system_prompt(index: int, tokens: int) -> str:
    """System prompt ``index``: the same text in every run, none a prefix of another's."""
    return " ".join(f"s{index}.{i}" for i in range(tokens))


def zipf_weights(count: int, s: float) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(count)]


def _starts(spec: WorkloadSpec, duration_s: float, rng: random.Random) -> list[float]:
    if spec.end_sessions_per_s is None:
        return poisson_arrivals(spec.sessions_per_s, duration_s, rng)
    peak = max(spec.sessions_per_s, spec.end_sessions_per_s)
    ramp = linear_ramp(spec.sessions_per_s, spec.end_sessions_per_s, duration_s)
    return varying_arrivals(ramp, peak, duration_s, rng)


def plan(spec: WorkloadSpec, duration_s: float, rng: random.Random) -> list[Session]:
    """The sessions that start within ``duration_s``, each with all its turns drawn."""
    sessions = []
    weights = zipf_weights(spec.system_prompts, spec.zipf_s)
    out = spec.output_tokens, spec.output_sigma, spec.max_output_tokens
    for number, start in enumerate(_starts(spec, duration_s, rng)):
        if spec.kind == "sharegpt":
            prompt = _words(
                rng,
                _lognormal_int(rng, spec.prompt_tokens, spec.prompt_sigma, spec.max_prompt_tokens),
            )
            turn = Turn(prompt, _lognormal_int(rng, *out), 0.0)
            sessions.append(Session(start, "", (turn,)))
            continue
        if spec.kind == "chat":
            index = rng.choices(range(spec.system_prompts), weights)[0]
            system = system_prompt(index, spec.system_tokens)
        else:
            system = system_prompt(spec.system_prompts + number, spec.system_tokens)
        count = rng.randint(spec.turns_min, spec.turns_max)
        turns = tuple(
            Turn(
                _words(rng, _lognormal_int(rng, spec.user_tokens, 0.5, 4 * spec.user_tokens)),
                _lognormal_int(rng, *out),
                rng.expovariate(1 / spec.think_mean_s) if i else 0.0,
            )
            for i in range(count)
        )
        sessions.append(Session(start, system, turns))
    return sessions
