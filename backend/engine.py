"""The request queue and the continuous-batching loop.

Requests wait in a bounded FIFO. A single engine thread (never the event loop) owns the model.
Each iteration it admits waiting requests whose KV blocks fit (:mod:`backend.kv_blocks`: a
cached prefix is reused, the rest reserved), advances every request past its prompt by one
token in one batched decode step, then spends the rest of the step's token budget
(``max_num_batched_tokens``) on prompt chunks. So a long prompt is prefilled a chunk per
iteration while the running streams keep their pace, instead of pausing them all for one
whole prefill. Tokens go back through each request's ``on_event`` callback, which the server
points at its event loop.

With ``look_ahead`` (the default), while the batch only decodes (nothing waits, every row
greedy and far from its length limit), each decode step is launched before the previous one's
tokens are read: its input tokens are the previous step's picks, still on the device, and its
positions and blocks are known ahead. The host's work between two steps (reading one step's
tokens, sending their events, building the next step) then runs while the GPU computes, instead
of leaving it idle: on an H200 the time between a stream's tokens fell by 11-25% (``1b``,
batch 1, to 1.12 ms: 51% of the bandwidth floor) and by 4-10% on ``8b``, with the same greedy
tokens (BENCHMARKS-backend.md). A row that ends on an EOS in step N has also run step N+1; that
token is dropped, and its K/V went to a position of the row's own, uncommitted blocks, which
are released with it.
"""

from __future__ import annotations

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

from backend.kv_blocks import NULL_BLOCK, BlockChain, BlockManager, blocks_for
from backend.metrics import CacheStats
from backend.model import ModelConfig, Step
from backend.sampling import SamplingParams, sample

log = logging.getLogger("tailgate.backend.engine")

_ids = itertools.count()


class QueueFull(Exception):
    """The waiting queue is at ``max_queue``; the caller should retry later."""


class Runner(Protocol):
    config: ModelConfig
    device: torch.device
    num_blocks: int
    block_size: int

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
    chain: BlockChain | None = None  # KV blocks, while admitted
    computed: int = 0  # positions whose K/V is in the cache
    cancelled: bool = False
    finished: bool = False
    generator: torch.Generator | None = None

    @property
    def last_pos(self) -> int:
        """Cache position of the newest token."""
        return len(self.prompt_ids) + len(self.output_ids) - 1

    @property
    def prefilled(self) -> bool:
        return self.computed >= len(self.prompt_ids)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids


@dataclass(frozen=True)
class StepRecord:
    """What one model pass did: ``kind`` is "prefill" or "decode"; ids of the requests in it.

    ``tokens`` is the number of input tokens of the pass (a prefill chunk's length).
    """

    kind: str
    request_ids: tuple[int, ...]
    tokens: int = 0


@dataclass(frozen=True)
class Launched:
    """A decode step started on the device: its logits and, when every row is greedy, its
    picks (``[rows]``), with their copy to the host already queued behind them.

    The copy is queued when the step is launched, before any later step: a plain ``tolist()``
    after the next step's launch would wait for that step too, and nothing would overlap.
    """

    logits: Tensor
    picks: Tensor | None
    host_picks: Tensor | None = None
    copied: torch.cuda.Event | None = None

    @classmethod
    def start(cls, logits: Tensor, greedy: bool, copy_early: bool) -> Launched:
        """Picks for a greedy batch; ``copy_early`` queues their copy to the host now (only
        worth it when a later step will be launched before they are read)."""
        if not greedy:
            return cls(logits, None)
        picks = logits.argmax(dim=-1)
        if not (copy_early and picks.is_cuda):
            return cls(logits, picks)
        host = torch.empty(picks.shape, dtype=picks.dtype, pin_memory=True)
        host.copy_(picks, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return cls(logits, picks, host, copied)

    def read(self, keep: list[int] | None = None) -> list[int]:
        """The picks on the host (rows ``keep`` only, if given), once they have arrived."""
        assert self.picks is not None, "only greedy steps are read back as picks"
        if self.copied is not None and self.host_picks is not None:
            self.copied.synchronize()
            tokens = self.host_picks.tolist()
        else:
            tokens = self.picks.tolist()
        return tokens if keep is None else [tokens[i] for i in keep]


# Tokens per scheduling round (decode rows + prompt chunk): large enough that a chunk keeps the
# GPU compute-bound, small enough that running streams wait one short pass per token.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 512


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
        max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
        look_ahead: bool = True,
    ) -> None:
        self._runner_factory = runner_factory
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len
        self.max_queue = max_queue
        self.max_num_batched_tokens = max_num_batched_tokens
        self.heartbeat_s = heartbeat_s
        self.look_ahead = look_ahead  # launch decode step N+1 before reading step N's tokens
        self._rng = rng
        self._observer = observer
        self._on_fatal = on_fatal
        self._on_ready = on_ready
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}  # by id, in admission order
        self._stopping = False
        self._draining = False
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tailgate-engine", daemon=True)
        self.runner: Runner | None = None
        self.blocks: BlockManager | None = None  # built once the runner says how many

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

    def cache_stats(self) -> CacheStats | None:
        """The KV cache's shape, use and prefix hits; None until the model is loaded."""
        blocks = self.blocks
        if blocks is None:
            return None
        return CacheStats(
            blocks.block_size,
            blocks.num_blocks,
            blocks.usage,
            blocks.query_tokens,
            blocks.hit_tokens,
        )

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
        """Forget a request whose client left; a running one frees its blocks next round."""
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
            self.blocks = BlockManager(runner.num_blocks, runner.block_size)
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
        while not probe.finished:
            self._iterate(runner)

    def _serve(self, runner: Runner) -> None:
        while not self._stopping:
            if self._iterate(runner):
                continue
            with self._cv:
                woke = self._cv.wait_for(
                    lambda: self._waiting or self._stopping, timeout=self.heartbeat_s
                )
            if not woke:
                runner.heartbeat()

    def _iterate(self, runner: Runner) -> bool:
        """One scheduling round: admit, decode, prefill chunks. Whether the model ran."""
        self._reap_cancelled()
        self._admit()
        decoding = [r for r in self._running.values() if r.prefilled]
        if decoding:
            self._decode(runner, decoding)
        budget = self.max_num_batched_tokens - len(decoding)
        ran = bool(decoding)
        for request in [r for r in self._running.values() if not r.prefilled]:
            if budget <= 0 and ran:
                break
            # At least one block's worth per round, so prompts progress under a full batch.
            budget -= self._prefill_chunk(runner, request, max(budget, runner.block_size))
            ran = True
        return ran

    def _admit(self) -> None:
        """Move waiting requests into the batch while their KV blocks fit, first come first."""
        assert self.blocks is not None
        while True:
            with self._cv:
                if not self._waiting or len(self._running) >= self.max_batch_size:
                    return
                request = self._waiting[0]
                total = min(len(request.prompt_ids) + request.max_tokens, self.max_model_len)
                chain = self.blocks.allocate(request.prompt_ids, total)
                if chain is None:
                    return  # wait for running requests to free blocks
                self._waiting.popleft()
                request.chain = chain
                request.computed = chain.cached_tokens
                self._running[request.id] = request

    @staticmethod
    def _slot(request: Request, position: int, size: int) -> int:
        """Flat cache index of ``position`` in ``request``'s blocks of ``size`` positions."""
        assert request.chain is not None
        return request.chain.blocks[position // size] * size + position % size

    def _step(
        self,
        runner: Runner,
        rows: list[Request],
        starts: list[int],
        length: int,
        last_only: bool,
        fed: Tensor | None = None,
    ) -> Step:
        """``length`` tokens per row from ``starts[i]`` on, sent as one host-to-device copy.

        ``fed`` (``[rows]``, on the device) are the rows' input tokens of a one-token step
        whose tokens the host does not know yet: the previous step's picks.
        """
        size = runner.block_size
        width = max(blocks_for(start + length, size) for start in starts)
        tokens, positions, slots, table = [], [], [], []
        for request, start in zip(rows, starts, strict=True):
            assert request.chain is not None
            span = range(start, start + length)
            if fed is None:
                seq = request.tokens
                tokens += [seq[p] for p in span]
            positions += span
            slots += [self._slot(request, p, size) for p in span]
            held = request.chain.blocks[: blocks_for(start + length, size)]
            table += held + [NULL_BLOCK] * (width - len(held))
        n, b = len(positions), len(rows)
        flat = torch.tensor(tokens + positions + slots + table, dtype=torch.int64)
        if runner.device.type == "cuda":
            # From pageable memory the driver may wait for the stream's queued work before it
            # copies, which would undo the look-ahead; torch caches pinned buffers.
            flat = flat.pin_memory()
        flat = flat.to(runner.device, non_blocking=True)
        tok, pos, write, blocks = flat.split((len(tokens), n, n, b * width))
        return Step(
            tokens=(tok if fed is None else fed).view(b, length),
            input_pos=pos.view(b, length),
            write_slots=write,
            block_table=blocks.view(b, width),
            last_only=last_only,
        )

    def _prefill_chunk(self, runner: Runner, request: Request, budget: int) -> int:
        """Compute the next ``budget`` prompt tokens of ``request``; the tokens it took."""
        assert self.blocks is not None and request.chain is not None
        start = request.computed
        length = min(len(request.prompt_ids) - start, budget)
        step = self._step(runner, [request], [start], length, last_only=True)
        logits = runner.forward(step)[:, -1]
        request.computed = start + length
        self.blocks.commit(request.chain, request.prompt_ids, request.computed)
        self._record("prefill", [request], length)
        if request.prefilled:
            self._accept([request], logits, runner.device)
        return length

    def _decode(self, runner: Runner, batch: list[Request]) -> None:
        """Decode steps for ``batch``: one, or back to back while :meth:`_may_look_ahead`."""
        launched = self._launch_decode(runner, batch, None)
        while True:
            ahead = None
            if launched.picks is not None and self._may_look_ahead(batch):
                ahead = self._launch_decode(runner, batch, launched.picks)
            self._accept_decode(runner, batch, launched)
            if ahead is None:
                return
            launched = ahead
            live = [i for i, r in enumerate(batch) if not r.finished]
            if len(live) < len(batch) or self._needs_scheduling():
                # Rows that ended in the step before ran this one too: drop their tokens.
                self._accept_decode(runner, [batch[i] for i in live], launched, live)
                return

    def _launch_decode(self, runner: Runner, batch: list[Request], fed: Tensor | None) -> Launched:
        """Start one decode step; with ``fed`` (the previous step's picks, not yet read back)
        the rows' newest tokens are those picks, one position past what the host holds."""
        ahead = int(fed is not None)
        starts = [r.last_pos + ahead for r in batch]
        step = self._step(runner, batch, starts, 1, last_only=False, fed=fed)
        logits = runner.forward(step)[:, -1]
        # Picks on the device, before a later step can overwrite a graph's logits buffer.
        greedy = all(r.sampling.greedy for r in batch)
        return Launched.start(logits, greedy, copy_early=self.look_ahead)

    def _may_look_ahead(self, batch: list[Request]) -> bool:
        """Whether the next step can start before this one's tokens are known: nothing else
        needs the model, and no row can end by length with the token in flight (its next
        position may hold no block). A row may still end on an EOS; :meth:`_decode` drops it."""
        if not self.look_ahead or self._needs_scheduling():
            return False
        for request in batch:
            made = len(request.output_ids) + 1  # with the token in flight
            if made >= request.max_tokens or request.last_pos + 2 >= self.max_model_len:
                return False
        return len(batch) == len(self._running)

    def _needs_scheduling(self) -> bool:
        """Work only a new scheduling round can do: admissions, cancellations, a stop."""
        return (
            bool(self._waiting)
            or self._stopping
            or any(r.cancelled for r in self._running.values())
        )

    def _accept_decode(
        self,
        runner: Runner,
        batch: list[Request],
        launched: Launched,
        keep: list[int] | None = None,
    ) -> None:
        """Book one decode step's tokens for ``batch`` (rows ``keep`` of the step, if given)."""
        assert self.blocks is not None
        for request in batch:
            assert request.chain is not None
            request.computed = request.last_pos + 1
            if request.computed % runner.block_size == 0:
                self.blocks.commit(request.chain, request.tokens, request.computed)
        self._record("decode", batch, len(batch))
        if launched.picks is not None:
            self._deliver(batch, launched.read(keep))
        else:
            self._accept(batch, launched.logits, runner.device)

    def _accept(self, batch: list[Request], logits: Tensor, device: torch.device) -> None:
        generators = [self._generator(r, device) for r in batch]
        self._deliver(batch, sample(logits, [r.sampling for r in batch], generators))

    def _deliver(self, batch: list[Request], tokens: list[int]) -> None:
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

    def _record(self, kind: str, batch: list[Request], tokens: int) -> None:
        if self._observer is not None:
            self._observer(StepRecord(kind, tuple(r.id for r in batch), tokens))

    def _release(self, request: Request) -> None:
        with self._cv:
            request.finished = True
            if self._running.pop(request.id, None) is not None:
                assert self.blocks is not None and request.chain is not None
                self.blocks.release(request.chain)
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
