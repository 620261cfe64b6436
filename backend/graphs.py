"""Decode steps and short prefill chunks as CUDA graphs: captured once per bucket, replayed.

Eager decoding launches about a thousand small kernels per step from Python, so on a GPU the
host sets the step time, not HBM. A captured graph replays them all with one launch. A graph
fixes every shape and address, hence buckets, keyed ``(rows, tokens, width)``:

- **Decode** (:class:`DecodeGraphs`, one token per row): one graph per batch bucket (1, 2, 4,
  ... up to ``max_batch_size``); a step runs in the smallest bucket that holds its rows. Rows
  past the step's are padding: token 0 at position 0, writing into the null block and
  attending to it alone; their logits are dropped.
- **Prefill chunks** (:class:`PrefillGraphs`, one row of 2..``max_tokens`` tokens, last
  token's logits): a short chunk, such as the tail after a long cached prefix, is as
  launch-bound as a decode step. Token buckets are powers of two from 16. The real tokens sit
  at the end of the bucket and the padding in front (token 0 at position 0, written into the
  null block), so the last position is still the last real token and no real query can see
  a padding key: padding writes only the null block, which a row's table names only past its
  real blocks, at positions masked for every real query.
- **Width**: the block-table width (blocks attended per row) is bucketed the same way, up to
  the blocks of ``max_model_len``. Attention reads ``width * block_size`` positions per row, so
  a step's cost follows the longest live context in its batch (within a factor of two), not
  the longest context the server allows.
- **Inputs**: tokens, positions, write slots and block tables live in one static buffer,
  written before each replay; the logits land in the graph's own output buffer.

At TP > 1 the all-reduces and the logits all-gather are captured too. Every rank captures the same
buckets in the same order at start-up (the warm-up passes meet in their collectives), and replays
the graph that rank 0 names in each step's header, so the NCCL kernels meet in lock step. The
captured collectives share the communicator with the eager control broadcasts: each rank issues
both in one order from one thread, and the streams serialize them. NCCL will not destroy a
communicator while a graph holding its collectives lives, so every rank calls
:meth:`StepGraphs.release` before it leaves the process group.

Where nothing is captured (a CPU; gloo's host-side collectives at TP > 1),
:meth:`StepGraphs.run` runs the same static-shape, padded step eagerly, which lets the tests
check the padding where no GPU is available.
"""

from __future__ import annotations

import itertools
import logging
import time
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from backend.kv_blocks import NULL_BLOCK
from backend.model import Step, Transformer
from backend.ranks import EAGER, GraphKey

log = logging.getLogger("tailgate.backend.graphs")

TOKEN, POSITION, WRITE_SLOT, TABLE = 0, 1, 2, 3  # columns of the static input buffer


def buckets(limit: int) -> tuple[int, ...]:
    """Powers of two below ``limit``, then ``limit`` itself."""
    sizes = []
    size = 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


PREFILL_MIN_TOKENS = 16  # smallest prefill bucket: shorter chunks pad up to it


class StepGraphs(ABC):
    """Static inputs and one graph per bucket of one kind of step of a paged-cache model.

    Subclasses say which buckets exist (:meth:`key_for`), how a bucket's step reads the static
    buffer (:meth:`_static_step`) and how a live step is written into it (:meth:`_fill`).
    """

    kind = "step"

    def __init__(self, model: Transformer, keys: list[GraphKey], inputs: Tensor) -> None:
        assert NULL_BLOCK == 0, "padding relies on zeros naming the null block"
        self.model = model
        self.keys = keys
        self._inputs = inputs
        self._graphs: dict[GraphKey, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[GraphKey, Tensor] = {}
        self.capture_s = 0.0

    @abstractmethod
    def key_for(self, step: Step) -> GraphKey:
        """The bucket that runs ``step``, or ``EAGER`` if none of this kind does."""

    @abstractmethod
    def _static_step(self, key: GraphKey) -> Step:
        """Bucket ``key``'s step: views of the static buffer."""

    @abstractmethod
    def _fill(self, step: Step) -> None:
        """Write a live ``step`` into the static buffer, padding included."""

    def _rows(self, step: Step) -> slice:
        """The rows of a bucket's output that belong to ``step``."""
        return slice(0, step.tokens.shape[0])

    @property
    def captured(self) -> bool:
        """Whether replays run captured graphs (else the static-shape steps run eagerly)."""
        return bool(self._graphs)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, so the smaller ones reuse its memory pool.

        Each bucket runs once eagerly first (on the capture stream) so one-off set-up such as
        library handles and workspaces happens outside the capture; with all inputs padding,
        that pass writes only the null block.
        """
        start_s = time.perf_counter()
        self._inputs.zero_()
        device = self._inputs.device
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        for key in sorted(self.keys, reverse=True):
            step = self._static_step(key)
            with torch.cuda.stream(stream):
                self.model(step)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls (metrics, NCCL's watchdog) may not
            # invalidate this capture.
            with torch.cuda.graph(
                graph, pool=pool, stream=stream, capture_error_mode="thread_local"
            ):
                self._outputs[key] = self.model(step)
            self._graphs[key] = graph
        torch.cuda.synchronize(device)
        self.capture_s = time.perf_counter() - start_s
        log.info(
            "captured %d %s graphs (rows x tokens x width buckets) in %.2fs",
            len(self._graphs),
            self.kind,
            self.capture_s,
        )

    def release(self) -> None:
        """Destroy the graphs; call before leaving the process group. Later steps run eagerly.

        NCCL counts the graphs holding collectives captured on a communicator, and destroying
        the communicator waits until that count is zero: with the graphs alive,
        ``destroy_process_group`` never returns (seen at TP=2, NCCL 2.28).
        """
        if self._graphs and self._inputs.is_cuda:
            torch.cuda.synchronize(self._inputs.device)  # no replay may still be running
        for graph in self._graphs.values():
            graph.reset()
        self._graphs.clear()
        self._outputs.clear()

    def replay_s(self, key: GraphKey, repeats: int = 50) -> float:
        """GPU seconds of one replay of graph ``key`` on unchanged inputs (no host work)."""
        graph = self._graphs[key]
        device = self._inputs.device
        graph.replay()
        torch.cuda.synchronize(device)
        start_s = time.perf_counter()
        for _ in range(repeats):
            graph.replay()
        torch.cuda.synchronize(device)
        return (time.perf_counter() - start_s) / repeats

    def run(self, step: Step, key: GraphKey) -> Tensor:
        """Logits of ``step`` run in bucket ``key`` (the rows and positions ``step`` asked for).

        On a GPU the result is a view of the graph's output buffer: read it before the next
        step.
        """
        self._fill(step)
        graph = self._graphs.get(key)
        if graph is None:  # not captured (CPU, gloo) or released: the static step, eagerly
            return self.model(self._static_step(key))[self._rows(step)]
        graph.replay()
        return self._outputs[key][self._rows(step)]


class DecodeGraphs(StepGraphs):
    """One token per row: a graph per (batch bucket, 1, width bucket)."""

    kind = "decode"

    def __init__(self, model: Transformer, max_batch_size: int, max_width: int) -> None:
        cache = model.layers[0].self_attn.cache
        assert cache is not None, "call Transformer.setup_cache first"
        self.batches = buckets(max_batch_size)
        self.widths = buckets(max_width)
        keys = [(b, 1, w) for b, w in itertools.product(self.batches, self.widths)]
        # Padding rows: token 0 at position 0, writing slot 0 of the null block, attending to it.
        inputs = torch.zeros(
            max_batch_size, TABLE + max_width, dtype=torch.int64, device=cache.k.device
        )
        super().__init__(model, keys, inputs)

    def key_for(self, step: Step) -> GraphKey:
        """The smallest (batch, 1, width) bucket holding ``step``, or ``EAGER`` if none does."""
        batch, width = step.block_table.shape
        b = next((size for size in self.batches if size >= batch), 0)
        w = next((size for size in self.widths if size >= width), 0)
        return (b, 1, w) if b and w and step.tokens.shape[1] == 1 else EAGER

    def _static_step(self, key: GraphKey) -> Step:
        batch, _, width = key
        rows = self._inputs[:batch]
        return Step(
            tokens=rows[:, TOKEN, None],
            input_pos=rows[:, POSITION, None],
            write_slots=rows[:, WRITE_SLOT],
            block_table=rows[:, TABLE : TABLE + width],
        )

    def _fill(self, step: Step) -> None:
        rows, width = step.block_table.shape
        self._inputs.zero_()
        self._inputs[:rows, TOKEN] = step.tokens[:, 0]
        self._inputs[:rows, POSITION] = step.input_pos[:, 0]
        self._inputs[:rows, WRITE_SLOT] = step.write_slots
        self._inputs[:rows, TABLE : TABLE + width] = step.block_table


class PrefillGraphs(StepGraphs):
    """One row of 2..``max_tokens`` tokens, last token's logits: a graph per (1, tokens, width).

    The static buffer is ``[3, max_tokens + max_width]``: tokens, positions and write slots
    right-aligned in the first ``max_tokens`` columns (a bucket of ``T`` reads the last ``T``),
    and the block table in row 0 after them.
    """

    kind = "prefill"

    def __init__(self, model: Transformer, max_tokens: int, max_width: int) -> None:
        cache = model.layers[0].self_attn.cache
        assert cache is not None, "call Transformer.setup_cache first"
        self.max_tokens = max_tokens
        self.tokens = tuple(t for t in buckets(max_tokens) if t >= PREFILL_MIN_TOKENS) or (
            max_tokens,
        )
        self.widths = buckets(max_width)
        keys = [(1, t, w) for t, w in itertools.product(self.tokens, self.widths)]
        inputs = torch.zeros(3, max_tokens + max_width, dtype=torch.int64, device=cache.k.device)
        super().__init__(model, keys, inputs)

    def key_for(self, step: Step) -> GraphKey:
        """The smallest (1, tokens, width) bucket holding a one-row last-token ``step``."""
        rows, length = step.tokens.shape
        width = step.block_table.shape[1]
        if rows != 1 or length < 2 or not step.last_only:
            return EAGER
        t = next((size for size in self.tokens if size >= length), 0)
        w = next((size for size in self.widths if size >= width), 0)
        return (1, t, w) if t and w else EAGER

    def _static_step(self, key: GraphKey) -> Step:
        _, tokens, width = key
        end = self.max_tokens
        return Step(
            tokens=self._inputs[TOKEN, end - tokens : end][None],
            input_pos=self._inputs[POSITION, end - tokens : end][None],
            write_slots=self._inputs[WRITE_SLOT, end - tokens : end],
            block_table=self._inputs[0, end : end + width][None],
            last_only=True,
        )

    def _fill(self, step: Step) -> None:
        length, width, end = step.tokens.shape[1], step.block_table.shape[1], self.max_tokens
        self._inputs.zero_()
        self._inputs[TOKEN, end - length : end] = step.tokens[0]
        self._inputs[POSITION, end - length : end] = step.input_pos[0]
        self._inputs[WRITE_SLOT, end - length : end] = step.write_slots
        self._inputs[0, end : end + width] = step.block_table[0]
