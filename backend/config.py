"""Every setting of the backend server, validated once before anything starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration_s(text: str) -> float:
    """``250ms``, ``10s``, ``5m`` or plain seconds, as seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 200ms, 2s, 1m)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


# Process-group backends of the TP ranks. NCCL is the one for speed on GPUs; gloo runs the same
# collectives on the host (CUDA tensors included, copied through host memory), so ranks can
# also share one GPU, which NCCL refuses: a correctness check of the sharded model on a GPU's
# kernels where only one GPU is at hand, never a measure of TP speed.
DIST_BACKENDS = ("nccl", "gloo")


def default_dist_backend(device: str) -> str:
    """NCCL on GPUs, gloo on CPU."""
    return "nccl" if device == "cuda" else "gloo"


class ConfigError(ValueError):
    """A setting is invalid; the message names it."""


@dataclass(frozen=True)
class BackendConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    preset: str | None = "tiny"
    model_dir: Path | None = None
    served_model_name: str | None = None
    tp: int = 1
    device: str = "cpu"
    # Process-group backend of the TP ranks: "nccl" or "gloo"; None: nccl on cuda, gloo on cpu.
    # Gloo on cuda lets ranks share one GPU (a correctness check; its collectives go through
    # the host, so it says nothing about TP speed, and decode graphs are not captured).
    dist_backend: str | None = None
    dtype: str = "float32"
    seed: int = 0
    max_batch_size: int = 8
    max_model_len: int = 512
    max_queue: int = 64
    max_tokens: int = 256
    # Paged KV cache (backend.kv_blocks): positions per block, and blocks in all (0: room for
    # every running sequence at max_model_len twice, half of it for cached prefixes).
    block_size: int = 16
    num_kv_blocks: int = 0
    # Chunked prefill: decode rows plus prompt tokens per scheduling round.
    max_num_batched_tokens: int = 512
    # Launch each decode step before the previous one's tokens are read back, so the host's
    # per-step work overlaps the GPU's (backend.engine; same greedy tokens, BENCHMARKS-backend.md).
    look_ahead: bool = True
    # Decode through CUDA graphs (backend.graphs), at any TP degree over NCCL; None: on for
    # --device cuda unless TP > 1 runs over gloo (float32 greedy tokens equal eager's on an
    # H200, BENCHMARKS-backend.md).
    cuda_graphs: bool | None = None
    # With graphs, prefill chunks of up to this many tokens replay graphs too (0: eager): a
    # short chunk, like the tail after a long cached prefix, is as launch-bound as a decode.
    prefill_graph_tokens: int = 256
    # Fuse the elementwise work between GEMMs with torch.compile (minutes of start-up).
    compile: bool = False
    fault_latency_s: float = 0.0
    fault_error_rate: float = 0.0
    collective_timeout_s: float = 30.0
    heartbeat_s: float = 1.0
    shutdown_timeout_s: float = 5.0

    @property
    def group_backend(self) -> str:
        return self.dist_backend or default_dist_backend(self.device)

    @property
    def graphs_capturable(self) -> bool:
        """CUDA graphs can hold NCCL's collectives, not gloo's (those run on the host)."""
        return self.device == "cuda" and (self.tp == 1 or self.group_backend == "nccl")

    @property
    def use_cuda_graphs(self) -> bool:
        return self.graphs_capturable if self.cuda_graphs is None else self.cuda_graphs

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return self.model_dir.name if self.model_dir else f"tailgate-{self.preset}"

    def validate(self) -> BackendConfig:
        """Return self, or raise :class:`ConfigError` naming the first bad setting."""
        checks = [
            (
                (self.preset is None) != (self.model_dir is None),
                "give exactly one of --preset, --model",
            ),
            (0 <= self.port <= 65535, "port must be in 0..65535"),
            (self.tp >= 1, "tp must be at least 1"),
            (self.device in ("cpu", "cuda"), "device must be cpu or cuda"),
            (
                self.dist_backend is None or self.dist_backend in DIST_BACKENDS,
                "dist_backend must be nccl or gloo",
            ),
            (self.device == "cuda" or self.group_backend != "nccl", "nccl needs --device cuda"),
            (
                self.dtype in ("float32", "bfloat16", "float16"),
                "dtype must be float32, bfloat16 or float16",
            ),
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_model_len >= 2, "max_model_len must be at least 2"),
            (self.max_queue >= 0, "max_queue must be non-negative"),
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.block_size >= 1, "block_size must be at least 1"),
            (
                self.num_kv_blocks == 0
                or self.num_kv_blocks > -(-self.max_model_len // self.block_size),
                "num_kv_blocks must hold one sequence of max_model_len plus the null block",
            ),
            (self.max_num_batched_tokens >= 1, "max_num_batched_tokens must be at least 1"),
            (
                self.prefill_graph_tokens == 0 or self.prefill_graph_tokens >= 2,
                "prefill_graph_tokens must be 0 (off) or at least 2",
            ),
            (self.fault_latency_s >= 0, "fault_latency must be non-negative"),
            (0.0 <= self.fault_error_rate <= 1.0, "fault_error_rate must be in [0, 1]"),
            (
                self.collective_timeout_s > 2 * self.heartbeat_s,
                "collective_timeout must exceed 2 heartbeats",
            ),
            (self.device == "cuda" or self.dtype != "float16", "float16 needs --device cuda"),
            (self.device == "cuda" or not self.use_cuda_graphs, "cuda_graphs needs --device cuda"),
            (
                self.device != "cuda" or self.graphs_capturable or not self.use_cuda_graphs,
                "cuda_graphs at tp > 1 needs --dist-backend nccl (gloo's collectives run on "
                "the host and cannot be captured)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.model_dir is not None and not (self.model_dir / "config.json").exists():
            raise ConfigError(f"model: {self.model_dir} has no config.json")
        return self
