"""Work-based load of one backend: tokens it still has to prefill and to generate, and how fast
it prefills. Pure: nothing here reads a clock.

On an LLM backend two requests are not alike: time to first token is set by how many prompt
tokens must be prefilled ahead of (and including) this one, and a prompt the backend has in its
prefix cache costs almost nothing. So the gateway counts, per backend:

  * ``prefill_tokens``: the uncached prompt tokens of requests sent there that have no first
    token yet (they leave at the first body byte, or at the end of a try that never got one);
  * ``decode_tokens``: the output tokens (``max_tokens``, or a typical answer) of requests in
    flight there (they leave when the try ends);
  * ``s_per_token``: seconds of time to first token per prefill token queued, learnt from each
    streamed answer as ``ttft_s / tokens_ahead`` (an EWMA, ``SMOOTHING`` per sample). It folds
    in the backend's speed (an older GPU measures slower) and what its batch costs.

The prediction a policy makes from it is ``s_per_token * (prefill_tokens + uncached_tokens)``.
"""

from __future__ import annotations

import math

# Weight of a new s_per_token sample: about the last 5 answers count.
SMOOTHING = 0.2


class WorkLedger:
    """The outstanding work at one backend; see the module docstring."""

    __slots__ = ("decode_tokens", "prefill_tokens", "s_per_token")

    def __init__(self) -> None:
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.s_per_token: float | None = None  # None until a streamed answer measured it

    def started(self, prefill_tokens: int, decode_tokens: int) -> int:
        """A try carrying this work was sent; returns the prefill tokens now ahead of its
        first token, its own included."""
        self.prefill_tokens += prefill_tokens
        self.decode_tokens += decode_tokens
        return self.prefill_tokens

    def first_token(self, prefill_tokens: int, ttft_s: float, tokens_ahead: int) -> None:
        """The try's first token arrived after ``ttft_s``: its prefill is done."""
        self.prefill_tokens = max(0, self.prefill_tokens - prefill_tokens)
        if tokens_ahead > 0 and math.isfinite(ttft_s) and ttft_s >= 0:
            sample = ttft_s / tokens_ahead
            previous = self.s_per_token
            self.s_per_token = (
                sample if previous is None else previous + SMOOTHING * (sample - previous)
            )

    def finished(self, prefill_left: int, decode_tokens: int) -> None:
        """The try ended; ``prefill_left`` is its prefill if no first token ever came, else 0."""
        self.prefill_tokens = max(0, self.prefill_tokens - prefill_left)
        self.decode_tokens = max(0, self.decode_tokens - decode_tokens)

    def forget_speed(self) -> None:
        """After an ejection: the backend's speed is to be measured again."""
        self.s_per_token = None
