"""Backends as FIFO servers with slots, after ``loadtests.fakepod`` (the real loadtests' pod).

A request waits in a FIFO queue for one of ``slots``, then (when the pod is in a pause window)
waits out the pause, then is served for ``size x service_s x slow_factor`` seconds, where `size`
is the request's own demand with mean 1, drawn once per request so that every policy and the
oracle serve the same work. As in fakepod, a hung pod holds the slot until the client gives up,
and an error answer comes after the service time.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from loadtests.fakepod import lognormal_mu
from loadtests.simulate.scenarios import PodSpec

BIMODAL_SHORT = 0.3  # fakepod's bimodal: 90% short prompts, 10% long ones, as multiples
BIMODAL_LONG = 8.0
BIMODAL_LONG_SHARE = 0.1


def size_sampler(dist: str, sigma: float, rng: random.Random) -> Callable[[], float]:
    """A function drawing a request's service demand (mean 1 for lognormal) from `rng`."""
    if dist == "fixed" or (dist == "lognormal" and sigma <= 0):
        return lambda: 1.0
    if dist == "bimodal":
        r = rng.random
        return lambda: BIMODAL_LONG if r() < BIMODAL_LONG_SHARE else BIMODAL_SHORT
    mu = lognormal_mu(1.0, sigma)  # mean demand 1, as fakepod's mean is its service time
    draw = rng.lognormvariate
    return lambda: draw(mu, sigma)


def pause_left_s(spec: PodSpec, now: float) -> float:
    """Seconds until the pod's current pause ends (0 outside one); pauses start at t = 0."""
    period = spec.pause_every_s + spec.pause_for_s
    if spec.pause_every_s <= 0 or spec.pause_for_s <= 0:
        return 0.0
    phase = now % period
    return 0.0 if phase < spec.pause_every_s else period - phase


class Pod:
    """One backend's live state; the engine schedules its completions."""

    __slots__ = ("busy", "faulty", "index", "name", "queue", "queued", "served", "spec")

    def __init__(self, index: int, spec: PodSpec) -> None:
        self.index = index
        self.name = f"pod-{index}"
        self.spec = spec
        self.busy = 0
        self.queue: deque[Any] = deque()  # tries waiting for a slot; timed-out ones are skipped
        self.queued = 0  # live entries of `queue`
        self.served = 0
        self.faulty = spec.fault_from_s <= 0 and has_fault(spec)

    def depth(self) -> int:
        """What the pod reports as X-Queue-Depth and on /metrics: waiting + running."""
        return self.busy + self.queued

    def ready(self) -> bool:
        """fakepod's /ready: failing while hung (or down)."""
        return not (self.faulty and (self.spec.hang or self.spec.down))

    def service_s(self, size: float, now: float) -> float:
        """Seconds from taking a slot at `now` to answering (pause included); inf when hung."""
        spec = self.spec
        if not self.faulty:
            return size * spec.service_s
        if spec.hang:
            return math.inf
        return pause_left_s(spec, now) + size * spec.service_s * spec.slow_factor


def has_fault(spec: PodSpec) -> bool:
    """Does this pod misbehave at all once its faults are on?"""
    return (
        spec.slow_factor != 1.0
        or spec.error_rate > 0
        or spec.hang
        or spec.down
        or (spec.pause_every_s > 0 and spec.pause_for_s > 0)
    )
