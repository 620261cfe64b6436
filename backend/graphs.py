"""Decode steps as CUDA graphs: captured once per batch bucket, replayed with fresh inputs.

Eager decoding launches a few hundred small kernels per step from Python, so on a GPU the host
sets the step time, not HBM. A captured graph replays them all with one launch. A graph fixes
every shape and address, hence:

- **Batch**: one graph per bucket (1, 2, 4, ... up to the slot count). Row i of a bucket always
  serves KV-cache slot i, and a step runs in the smallest bucket that holds its highest slot.
  Rows of slots the step leaves out are padding: token 0 at position 0, writing their keys and
  values into a spare slot past the real ones, their logits dropped. So no live slot is ever
  written by padding, and attention reads the cache as a view (``slot_start`` 0), never a copy.
- **KV length**: attention spans the whole preallocated cache under a mask (cached position <=
  the row's position), so one graph serves every length. The price is reading ``max_seq_len``
  positions of each row's cache per step instead of only the used ones.
- **Inputs**: tokens, positions and write slots live in one static buffer, written before each
  replay; the logits land in the graph's own output buffer.

At TP > 1 the all-reduces and the logits all-gather are captured too. Every rank captures the same
buckets in the same order at start-up (the warm-up passes meet in their collectives), and replays
the bucket that rank 0 names in each step's header, so the NCCL kernels meet in lock step. The
captured collectives share the communicator with the eager control broadcasts: each rank issues
both in one order from one thread, and the streams serialize them. NCCL will not destroy a
communicator while a graph holding its collectives lives, so every rank calls
:meth:`DecodeGraphs.release` before it leaves the process group.
Measured on H200s at TP=1 and TP=2 (float32 greedy parity with eager; BENCHMARKS-backend.md).

On a CPU nothing is captured: :meth:`DecodeGraphs.run` runs the same static-shape step eagerly,
which lets the tests check the padding and slot mapping where no GPU is available.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from backend.model import Step, Transformer

log = logging.getLogger("tailgate.backend.graphs")

TOKEN, POSITION, WRITE_SLOT = 0, 1, 2  # rows of the static input buffer


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def slot_limit(step: Step) -> int:
    """One past the highest slot of ``step``; a device sync only if the caller gave no hint."""
    if step.slot_limit is not None:
        return step.slot_limit
    if step.slot_start is not None:
        return step.slot_start + step.slots.shape[0]
    return int(step.slots.max()) + 1


class DecodeGraphs:
    """Static decode inputs and one graph per batch bucket, for a model with ``slots + 1`` slots.

    The model's cache must hold one slot more than ``slots``: the spare that padding rows write.
    """

    def __init__(self, model: Transformer, slots: int) -> None:
        cache = model.layers[0].self_attn.cache
        assert cache is not None, "call Transformer.setup_cache first"
        if cache.k.shape[0] != slots + 1:
            raise ValueError(f"DecodeGraphs needs a cache of {slots + 1} slots (one spare)")
        self.model = model
        self.buckets = batch_buckets(slots)
        self.max_seq_len = cache.k.shape[2]
        device = cache.k.device
        blank = torch.zeros(3, slots, dtype=torch.int64, device=device)
        blank[WRITE_SLOT] = slots  # the spare slot
        self._blank = blank
        self._inputs = blank.clone()
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, Tensor] = {}
        self.capture_s = 0.0

    def bucket_for(self, step: Step) -> int:
        """The smallest bucket holding every slot of ``step`` (0 if none does)."""
        limit = slot_limit(step)
        return next((b for b in self.buckets if b >= limit), 0)

    def _static_step(self, batch: int) -> Step:
        rows = self._inputs[:, :batch]
        return Step(
            tokens=rows[TOKEN, :, None],
            input_pos=rows[POSITION, :, None],
            slots=rows[WRITE_SLOT],
            kv_len=self.max_seq_len,
            slot_start=0,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, so the smaller ones reuse its memory pool.

        Each bucket runs once eagerly first (on the capture stream) so one-off set-up such as
        library handles and workspaces happens outside the capture; with all rows padding, that
        pass writes only the spare slot.
        """
        start_s = time.perf_counter()
        self._inputs.copy_(self._blank)
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self._inputs.device)
        stream.wait_stream(torch.cuda.current_stream(self._inputs.device))
        for batch in reversed(self.buckets):
            step = self._static_step(batch)
            with torch.cuda.stream(stream):
                self.model(step)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls (metrics, NCCL's watchdog) may not
            # invalidate this capture.
            with torch.cuda.graph(
                graph, pool=pool, stream=stream, capture_error_mode="thread_local"
            ):
                self._outputs[batch] = self.model(step)
            self._graphs[batch] = graph
        torch.cuda.synchronize(self._inputs.device)
        self.capture_s = time.perf_counter() - start_s
        log.info(
            "captured decode graphs for batch sizes %s in %.2fs",
            ",".join(map(str, self.buckets)),
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

    def run(self, step: Step, batch: int) -> Tensor:
        """Logits ``[rows, 1, vocab]`` of a one-token-per-row ``step`` run in bucket ``batch``.

        On a GPU the result may be a view of the graph's output buffer: read it before the next
        step. Slots in ``step`` must be distinct and below ``batch``.
        """
        rows = step.slots.shape[0]
        inputs = self._inputs[:, :batch]
        inputs.copy_(self._blank[:, :batch])
        inputs[:, step.slots] = torch.stack((step.tokens[:, 0], step.input_pos[:, 0], step.slots))
        graph = self._graphs.get(batch)
        if graph is None:  # not captured (CPU) or released: the same static-shape step, eagerly
            logits = self.model(self._static_step(batch))
        else:
            graph.replay()
            logits = self._outputs[batch]
        if step.slot_start is not None:
            return logits[step.slot_start : step.slot_start + rows]
        return logits[step.slots]
