"""Work-based load of one backend: tokens it still has to prefill and to generate, and how its
time to first token grows with the prefill queued. Pure: nothing here reads a clock.

On an LLM backend two requests are not alike: time to first token is set by how many prompt
tokens must be prefilled ahead of (and including) this one, and a prompt the backend has in its
prefix cache costs almost nothing. So the gateway counts, per backend:

  * ``prefill_tokens``: the uncached prompt tokens of requests sent there that have no first
    token yet (they leave at the first body byte, or at the end of a try that never got one);
  * ``decode_tokens``: the output tokens (``max_tokens``, or a typical answer) of requests in
    flight there (they leave when the try ends);
  * the line ``ttft_s = base_s + s_per_token * tokens_ahead``, fitted to each streamed answer
    by exponentially weighted least squares (``SMOOTHING`` per sample). ``tokens_ahead`` is the
    prefill queued at the moment the request was sent, its own included. The slope is the
    backend's prefill speed (an older GPU measures slower), the intercept what any request
    costs there (a decode step, scheduling). A plain ratio ``ttft / tokens`` would not do:
    a warm request of 30 uncached tokens answered in 15 ms reads as 0.5 ms a token, and a
    cold 2,000-token one in 80 ms as 0.04 ms, so the ratio would follow the mix of traffic a
    backend happened to get rather than its speed.
"""

from __future__ import annotations

import math

# Weight of a new sample in the fit: about the last 10 answers count.
SMOOTHING = 0.1
# Below this spread of tokens_ahead (tokens squared) the slope is not identifiable: the line
# goes through the origin and the mean instead.
MIN_VARIANCE = 100.0


class WorkLedger:
    """The outstanding work at one backend; see the module docstring."""

    __slots__ = (
        "_line",
        "_mean_x",
        "_mean_xx",
        "_mean_xy",
        "_mean_y",
        "decode_tokens",
        "prefill_tokens",
    )

    def __init__(self) -> None:
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self._mean_x: float | None = None  # None until a streamed answer was measured
        self._mean_y = 0.0
        self._mean_xx = 0.0
        self._mean_xy = 0.0
        # The fitted line, refitted at each sample: a pick reads it for every option it
        # scores, several times per sample, so it is solved once per sample, not per read.
        self._line: tuple[float, float] | None = None

    def started(self, prefill_tokens: int, decode_tokens: int) -> int:
        """A try carrying this work was sent; returns the prefill tokens now ahead of its
        first token, its own included."""
        self.prefill_tokens += prefill_tokens
        self.decode_tokens += decode_tokens
        return self.prefill_tokens

    def first_token(self, prefill_tokens: int, ttft_s: float, tokens_ahead: int) -> None:
        """The try's first token arrived after ``ttft_s``: its prefill is done."""
        self.prefill_tokens = max(0, self.prefill_tokens - prefill_tokens)
        if tokens_ahead <= 0 or not (math.isfinite(ttft_s) and ttft_s >= 0):
            return
        x, y = float(tokens_ahead), ttft_s
        if self._mean_x is None:
            self._mean_x, self._mean_y, self._mean_xx, self._mean_xy = x, y, x * x, x * y
        else:
            k = SMOOTHING
            self._mean_x += k * (x - self._mean_x)
            self._mean_y += k * (y - self._mean_y)
            self._mean_xx += k * (x * x - self._mean_xx)
            self._mean_xy += k * (x * y - self._mean_xy)
        self._line = self._fit()

    def finished(self, prefill_left: int, decode_tokens: int) -> None:
        """The try ended; ``prefill_left`` is its prefill if no first token ever came, else 0."""
        self.prefill_tokens = max(0, self.prefill_tokens - prefill_left)
        self.decode_tokens = max(0, self.decode_tokens - decode_tokens)

    @property
    def measured(self) -> bool:
        return self._mean_x is not None

    def line(self) -> tuple[float, float] | None:
        """``(base_s, s_per_token)`` of the fitted line (both >= 0), None before any sample."""
        return self._line

    def _fit(self) -> tuple[float, float] | None:
        mean_x = self._mean_x
        if mean_x is None:
            return None
        variance = self._mean_xx - mean_x * mean_x
        if variance >= MIN_VARIANCE:
            slope = (self._mean_xy - mean_x * self._mean_y) / variance
            if slope >= 0:
                base = self._mean_y - slope * mean_x
                if base >= 0:
                    return base, slope
                return 0.0, self._mean_xy / self._mean_xx  # through the origin
        return 0.0, self._mean_y / mean_x if mean_x > 0 else 0.0

    def predict_s(self, tokens: float, prior: tuple[float, float]) -> float:
        """Time to first token of a request with ``tokens`` of prefill ahead of it (its own
        included), from the fitted line or ``prior`` (the fleet's) before it is measured."""
        base, slope = self.line() or prior
        return base + slope * tokens

    def forget_speed(self) -> None:
        """After an ejection: the backend's speed is to be measured again."""
        self._mean_x = None
        self._line = None
