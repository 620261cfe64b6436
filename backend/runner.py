"""Run the sharded model: rank 0 drives, ranks 1..N-1 replay what rank 0 broadcasts.

Rank 0's :class:`ModelRunner` is what the engine calls; each :meth:`ModelRunner.forward`
broadcasts its :class:`~backend.model.Step` before running it, so the workers (``worker_main``,
in their own processes) execute the identical pass and meet rank 0 in every all-reduce.

With ``cuda_graphs`` each rank also captures its decode step, and prefill chunks of up to
``prefill_graph_tokens`` tokens, as CUDA graphs at start-up (:mod:`backend.graphs`); rank 0
picks eager or a graph per step and the header carries the choice. Longer prefills run
eagerly. Every rank destroys its graphs before it leaves the process group, which NCCL would
otherwise wait on forever (:meth:`StepGraphs.release`).
Over gloo (ranks sharing a GPU) nothing is captured at TP > 1: gloo's collectives run on the
host, which a CUDA graph cannot hold, so the graphs' static-shape steps run eagerly as on a CPU.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from backend import fused_pointwise, ranks
from backend.config import default_dist_backend
from backend.graphs import DecodeGraphs, PrefillGraphs, StepGraphs
from backend.kv_blocks import blocks_for
from backend.model import ModelConfig, Pointwise, Step, Transformer
from backend.ranks import EAGER, GraphKey
from backend.weights import ModelSource, load_model

log = logging.getLogger("tailgate.backend.runner")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RunnerSpec:
    """Everything a rank needs to build its shard; picklable so it crosses to the workers."""

    source: ModelSource
    world: int
    device_type: str
    dtype: str
    max_batch_size: int
    max_model_len: int
    num_blocks: int = 0  # KV-cache blocks (0: every running sequence at max_model_len, twice)
    block_size: int = 16
    store_host: str = "127.0.0.1"
    store_port: int = 0
    timeout_s: float = 30.0
    # Process-group backend of the ranks (config.DIST_BACKENDS); None: nccl on GPUs, gloo on CPU.
    dist_backend: str | None = None
    # Decode through CUDA graphs; on a CPU the graphs' static-shape steps run eagerly (tests).
    cuda_graphs: bool = False
    # With cuda_graphs: prefill chunks of up to this many tokens replay graphs too (0: none).
    prefill_graph_tokens: int = 0
    # Fuse the elementwise work between GEMMs with torch.compile (model.Pointwise) instead of
    # the Triton kernels of backend.fused_pointwise that GPUs' decode steps get by default.
    compile: bool = False

    def rank(self, rank: int) -> ranks.Rank:
        return ranks.Rank(rank, self.world, ranks.device_for(rank, self.device_type))

    @property
    def group_backend(self) -> str:
        return self.dist_backend or default_dist_backend(self.device_type)

    @property
    def can_capture(self) -> bool:
        """Whether decode graphs can be captured: on a GPU, with collectives NCCL's (or none)."""
        return self.device_type == "cuda" and (self.world == 1 or self.group_backend == "nccl")

    @property
    def max_width(self) -> int:
        """Blocks of the longest sequence."""
        return blocks_for(self.max_model_len, self.block_size)

    @property
    def cache_blocks(self) -> int:
        """Blocks to allocate, the null block included.

        The default holds every running sequence at full length twice over: once for the
        reservations of the running batch, once for cached prefixes of finished requests.
        """
        return self.num_blocks or 2 * self.max_batch_size * self.max_width + 1


def _limit_cpu_threads(spec: RunnerSpec) -> None:
    """Ranks sharing one CPU split its cores instead of oversubscribing them."""
    if spec.device_type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world))


def _pick_attention_kernels(spec: RunnerSpec) -> None:
    """Keep attention off cuDNN, which builds a new plan for every new KV length.

    Each decode step attends one position further, so cuDNN would rebuild its plan on every
    step; flash, memory-efficient and math kernels need no per-shape set-up.
    """
    if spec.device_type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


@dataclass
class Shard:
    """One rank's model and, when enabled, its decode and prefill graphs."""

    model: Transformer
    graphs: DecodeGraphs | None
    prefill_graphs: PrefillGraphs | None = None

    @property
    def all_graphs(self) -> list[StepGraphs]:
        return [g for g in (self.graphs, self.prefill_graphs) if g is not None]

    def run(self, step: Step, graph: GraphKey) -> Tensor:
        """Logits of ``step``: replayed from graph ``graph``, or eagerly when it is ``EAGER``."""
        if graph == EAGER:
            return self.model(step)
        graphs = self.graphs if graph[1] == 1 else self.prefill_graphs  # (rows, tokens, width)
        assert graphs is not None, "rank 0 asked for a graph this rank never captured"
        return graphs.run(step, graph)

    def release_graphs(self) -> None:
        """Free the graphs before leaving the group (:meth:`StepGraphs.release` says why)."""
        for graphs in self.all_graphs:
            graphs.release()


def build_shard(spec: RunnerSpec, rank: ranks.Rank, store: torch.distributed.Store | None) -> Shard:
    """Join the group, load this rank's weights, allocate its KV cache, capture its graphs."""
    _limit_cpu_threads(spec)
    _pick_attention_kernels(spec)
    if store is not None:
        ranks.init_group(rank, store, spec.timeout_s, spec.group_backend)
    model = load_model(spec.source, rank, DTYPES[spec.dtype])
    if spec.compile:
        model.ops = Pointwise.compiled()
    elif rank.device.type == "cuda" and fused_pointwise.AVAILABLE:
        model.decode_ops = fused_pointwise.fused_pointwise()
    model.setup_cache(spec.cache_blocks, spec.block_size, spec.max_model_len)
    if not spec.cuda_graphs:
        return Shard(model, None)
    shard = Shard(model, DecodeGraphs(model, spec.max_batch_size, spec.max_width))
    if spec.prefill_graph_tokens:
        tokens = min(spec.prefill_graph_tokens, spec.max_model_len)
        shard.prefill_graphs = PrefillGraphs(model, tokens, spec.max_width)
    if spec.can_capture:
        for graphs in shard.all_graphs:
            graphs.capture()
    elif rank.device.type == "cuda" and rank.is_driver:
        log.warning(
            "decode graphs not captured: %s collectives run on the host; their static-shape "
            "steps run eagerly",
            spec.group_backend,
        )
    return shard


class ModelRunner:
    """Rank 0's handle on the (possibly sharded) model.

    ``use_graphs`` (all graphs) and ``use_prefill_graphs`` may be switched off at run time (the
    benchmark compares the paths); the workers follow whatever each step's header says.
    """

    def __init__(self, shard: Shard, rank: ranks.Rank, spec: RunnerSpec) -> None:
        self.shard = shard
        self.model = shard.model
        self.rank = rank
        self.num_blocks = spec.cache_blocks
        self.block_size = spec.block_size
        self.max_width = spec.max_width
        self.channel = ranks.StepChannel(rank)
        self.use_graphs = shard.graphs is not None
        self.use_prefill_graphs = shard.prefill_graphs is not None
        self._closed = False

    @classmethod
    def start(cls, spec: RunnerSpec, store: torch.distributed.Store | None) -> ModelRunner:
        rank = spec.rank(0)
        return cls(build_shard(spec, rank, store), rank, spec)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.rank.device

    def weight_bytes(self) -> int:
        """Bytes of weights this rank holds (a tied head counted once)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def graph_key(self, step: Step) -> GraphKey:
        """The graph that runs ``step``, or ``EAGER``.

        Decodes (one token per row) run in decode graphs; short one-row prefill chunks in
        prefill graphs; longer prefills, and any step when graphs are off, eagerly.
        """
        if not self.use_graphs:
            return EAGER
        if step.tokens.shape[1] == 1:
            return self.shard.graphs.key_for(step) if self.shard.graphs else EAGER
        prefill = self.shard.prefill_graphs
        return prefill.key_for(step) if prefill and self.use_prefill_graphs else EAGER

    @torch.inference_mode()
    def forward(self, step: Step) -> Tensor:
        """Logits of ``step``; from a graph they are valid only until the next forward."""
        graph = self.graph_key(step)
        self.channel.send(step, graph)
        return self.shard.run(step, graph)

    def heartbeat(self) -> None:
        """Keep idle workers' collective timeouts from firing."""
        self.channel.send_control(ranks.CMD_HEARTBEAT)

    def close(self) -> None:
        """Tell the workers to leave, then leave the group (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.shard.release_graphs()
            self.channel.send_control(ranks.CMD_STOP)
        finally:
            ranks.close_group()


def worker_main(rank_id: int, spec: RunnerSpec) -> None:
    """Body of ranks 1..N-1: build the shard, then replay rank 0's steps until told to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rank = spec.rank(rank_id)
    store = ranks.open_store(spec.store_host, spec.store_port, rank, spec.timeout_s)
    shard = build_shard(spec, rank, store)
    channel = ranks.StepChannel(rank)
    with torch.inference_mode():
        while (received := channel.receive()) is not None:
            shard.run(*received)
    shard.release_graphs()
    ranks.close_group()
    # Leave without the interpreter's teardown: a spawned rank's exit ran C++ static
    # destructors while the process group's (gloo) threads could still be joinable, which
    # aborted a clean shutdown now and then ("terminate called without an active exception",
    # exit code -6, seen once in a CI run). Nothing is left to flush but the log handlers.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
