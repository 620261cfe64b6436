"""The request queue and the continuous-batching loop.

Requests wait in a bounded FIFO. A single engine thread (never the event loop) owns the model:
between two decode steps it admits waiting requests into free KV-cache slots (one prefill each),
then advances every running request by one token in one batched decode step. Tokens go back
through each request's ``on_event`` callback, which the server points at its event loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from backend.model import ModelConfig, Step
from backend.sampling import SamplingParams, sample

log = logging.getLogger("tailgate.backend.engine")

_ids = itertools.count()


class QueueFull(Exception):
    """The waiting queue is at ``max_queue``; the caller should retry later."""


class Runner(Protocol):
    config: ModelConfig
    device: torch.device

    def forward(self, step: Step) -> Tensor: ...

    def heartbeat(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; ``finish_reason`` is set on the request's last event."""

    token_id: int | None
    finish_reason: str | None = None


@dataclass(eq=False)
class Request:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    on_event: Callable[[TokenEvent], None] = lambda _event: None
    ignore_eos: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    slot: int | None = None
    cancelled: bool = False
    finished: bool = False
    generator: torch.Generator | None = None

    @property
    def last_pos(self) -> int:
        """Cache position of the newest token."""
        return len(self.prompt_ids) + len(self.output_ids) - 1


@dataclass(frozen=True)
class StepRecord:
    """What one model pass did: ``kind`` is "prefill" or "decode"; ids of the requests in it."""

    kind: str
    request_ids: tuple[int, ...]


class Engine:
    def __init__(
        self,
        runner_factory: Callable[[], Runner],
        max_batch_size: int,
        max_model_len: int,
        max_queue: int,
        rng: random.Random,
        heartbeat_s: float = 1.0,
        observer: Callable[[StepRecord], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self._runner_factory = runner_factory
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len
        self.max_queue = max_queue
        self.heartbeat_s = heartbeat_s
        self._rng = rng
        self._observer = observer
        self._on_fatal = on_fatal
        self._on_ready = on_ready
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}
        self._free_slots = list(range(max_batch_size))
        self._stopping = False
        self._draining = False
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tailgate-engine", daemon=True)
        self.runner: Runner | None = None

    # ---- called from the event loop -------------------------------------------------------
    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queue_depth(self) -> int:
        """Waiting plus running: what ``X-Queue-Depth`` reports."""
        return self.waiting_count + self.running_count

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._cv:
            if self._stopping or self._draining:
                raise QueueFull("server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already waiting")
            self._waiting.append(request)
            self._cv.notify()

    def cancel(self, request: Request) -> None:
        """Forget a request whose client left; a running one frees its slot before the next step."""
        with self._cv:
            request.cancelled = True
            if request in self._waiting:
                self._waiting.remove(request)
            self._cv.notify()

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests, then wait up to timeout_s for the accepted ones to finish."""
        with self._cv:
            self._draining = True
            return self._cv.wait_for(lambda: not self._waiting and not self._running, timeout_s)

    def stop(self, timeout_s: float) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # ---- the engine thread ----------------------------------------------------------------
    def _main(self) -> None:
        try:
            runner = self.runner = self._runner_factory()
            self._warm_up(runner)
            self.ready.set()
            if self._on_ready is not None:
                self._on_ready()
            self._serve(runner)
        except Exception as exc:
            log.exception("engine failed")
            self._fail_all()
            if self._on_fatal is not None:
                self._on_fatal(f"engine failed: {exc!r}")
            return
        self._fail_all()
        runner.close()

    def _warm_up(self, runner: Runner) -> None:
        """Run one prefill and one decode so the first request pays no one-off start-up costs."""
        probe = Request(prompt_ids=[0, 0], max_tokens=2, ignore_eos=True)
        with self._cv:
            self._waiting.appendleft(probe)  # ahead of any request that came in early
        self._admit(runner)
        self._decode(runner)
        self._release(probe)

    def _serve(self, runner: Runner) -> None:
        while not self._stopping:
            self._reap_cancelled()
            admitted = self._admit(runner)
            if self._running:
                self._decode(runner)
            elif not admitted:
                with self._cv:
                    woke = self._cv.wait_for(
                        lambda: self._waiting or self._stopping, timeout=self.heartbeat_s
                    )
                if not woke:
                    runner.heartbeat()

    def _admit(self, runner: Runner) -> bool:
        admitted = False
        while True:
            with self._cv:
                if not self._waiting or not self._free_slots:
                    return admitted
                request = self._waiting.popleft()
                request.slot = heapq.heappop(self._free_slots)
                self._running[request.slot] = request
            self._prefill(runner, request)
            admitted = True

    def _prefill(self, runner: Runner, request: Request) -> None:
        n, slot, device = len(request.prompt_ids), request.slot, runner.device
        assert slot is not None
        step = Step(
            tokens=torch.tensor([request.prompt_ids], device=device),
            input_pos=torch.arange(n, device=device)[None],
            slots=torch.tensor([slot], device=device),
            kv_len=n,
            slot_start=slot,
            last_only=True,
        )
        logits = runner.forward(step)[:, -1]
        self._record("prefill", [request])
        self._accept([request], logits, runner.device)

    def _decode(self, runner: Runner) -> None:
        batch = sorted(self._running.values(), key=lambda r: r.slot or 0)
        slots = [r.slot for r in batch]
        first = slots[0]
        contiguous = first is not None and slots == list(range(first, first + len(slots)))
        positions = [r.last_pos for r in batch]
        device = runner.device
        step = Step(
            tokens=torch.tensor([[r.output_ids[-1]] for r in batch], device=device),
            input_pos=torch.tensor([[p] for p in positions], device=device),
            slots=torch.tensor(slots, device=device),
            kv_len=max(positions) + 1,
            slot_start=first if contiguous else None,
            slot_limit=(slots[-1] or 0) + 1,  # sorted by slot
        )
        logits = runner.forward(step)[:, -1]
        self._record("decode", batch)
        self._accept(batch, logits, device)

    def _accept(self, batch: list[Request], logits: Tensor, device: torch.device) -> None:
        generators = [self._generator(r, device) for r in batch]
        tokens = sample(logits, [r.sampling for r in batch], generators)
        for request, token in zip(batch, tokens, strict=True):
            request.output_ids.append(token)
            reason = self._finish_reason(request, token)
            request.on_event(TokenEvent(token, reason))
            if reason is not None:
                self._release(request)

    def _finish_reason(self, request: Request, token: int) -> str | None:
        if token in self._eos and not request.ignore_eos:
            return "stop"
        if (
            len(request.output_ids) >= request.max_tokens
            or request.last_pos + 1 >= self.max_model_len
        ):
            return "length"
        return None

    @property
    def _eos(self) -> tuple[int, ...]:
        return self.runner.config.eos_token_ids if self.runner else ()

    def _generator(self, request: Request, device: torch.device) -> torch.Generator | None:
        if request.sampling.greedy:
            return None
        if request.generator is None:
            seed = request.sampling.seed
            seed = self._rng.getrandbits(63) if seed is None else seed
            request.generator = torch.Generator(device).manual_seed(seed)
        return request.generator

    def _record(self, kind: str, batch: list[Request]) -> None:
        if self._observer is not None:
            self._observer(StepRecord(kind, tuple(r.id for r in batch)))

    def _release(self, request: Request) -> None:
        with self._cv:
            request.finished = True
            if request.slot is not None and self._running.get(request.slot) is request:
                del self._running[request.slot]
                heapq.heappush(self._free_slots, request.slot)
                self._cv.notify_all()  # a drain may be waiting for the last one

    def _reap_cancelled(self) -> None:
        for request in [r for r in self._running.values() if r.cancelled]:
            self._release(request)

    def _fail_all(self) -> None:
        """Finish every request still held, so no client waits on a dead engine."""
        with self._cv:
            pending = [*self._waiting, *self._running.values()]
            self._waiting.clear()
        for request in pending:
            self._release(request)
            request.on_event(TokenEvent(None, "error"))
