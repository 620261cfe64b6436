"""``tailgate-backend``: command-line arguments only; the work is in ``backend.lifecycle``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from backend.config import BackendConfig, ConfigError, parse_duration_s


def _default_tp(device: str) -> int:
    """All visible GPUs on CUDA, one rank on CPU."""
    if device != "cuda":
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str] | None = None) -> BackendConfig:
    p = argparse.ArgumentParser(prog="tailgate-backend", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="random weights of a named shape: tiny, 1b, 8b")
    src.add_argument("--model", type=Path, help="Hugging Face checkpoint folder")
    p.add_argument("--served-model-name", help="model id reported by the API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--tp", type=int, help="tensor-parallel ranks (default: all GPUs; 1 on CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument(
        "--dist-backend",
        choices=["nccl", "gloo"],
        help=(
            "process group of the TP ranks (default: nccl on cuda, gloo on cpu); gloo on cuda "
            "lets ranks share one GPU: a correctness check, not a speed one"
        ),
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="default: bfloat16 on cuda, float32 on cpu",
    )
    p.add_argument("--seed", type=int, default=0, help="random weights and default sampling seeds")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together")
    p.add_argument("--max-model-len", type=int, default=512, help="prompt + output tokens")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503")
    p.add_argument("--max-tokens", type=int, default=256, help="largest max_tokens accepted")
    p.add_argument("--block-size", type=int, default=16, help="KV-cache positions per block")
    p.add_argument(
        "--num-kv-blocks",
        type=int,
        default=0,
        help="KV-cache blocks (default: every running sequence at --max-model-len, twice)",
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=512,
        help="decode rows + prompt-chunk tokens per scheduling round (chunked prefill)",
    )
    p.add_argument(
        "--look-ahead",
        action=argparse.BooleanOptionalAction,
        default=BackendConfig.look_ahead,
        help=(
            "launch each decode step before the previous one's tokens are read back, so the "
            "host's work overlaps the GPU's (default: on; the same tokens either way)"
        ),
    )
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "decode through CUDA graphs per (batch, context) bucket (default: on with "
            "--device cuda; float32 greedy tokens equal eager's)"
        ),
    )
    p.add_argument(
        "--prefill-graph-tokens",
        type=int,
        default=256,
        help="with CUDA graphs, prefill chunks of up to this many tokens replay graphs (0: eager)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="fuse the elementwise work between GEMMs with torch.compile (slower start-up)",
    )
    p.add_argument(
        "--fault-latency",
        type=parse_duration_s,
        default=0.0,
        help="latency added to each API request, e.g. 200ms",
    )
    p.add_argument(
        "--fault-error-rate",
        type=float,
        default=0.0,
        help="share of API requests answered 500, e.g. 0.1",
    )
    p.add_argument(
        "--collective-timeout",
        type=parse_duration_s,
        default=30.0,
        help="give up on a silent rank after this long",
    )
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    device = a.device or _default_device()
    return BackendConfig(
        host=a.host,
        port=a.port,
        preset=None if a.model else (a.preset or "tiny"),
        model_dir=a.model,
        served_model_name=a.served_model_name,
        tp=a.tp if a.tp is not None else _default_tp(device),
        device=device,
        dist_backend=a.dist_backend,
        dtype=a.dtype or ("bfloat16" if device == "cuda" else "float32"),
        seed=a.seed,
        max_batch_size=a.max_batch_size,
        max_model_len=a.max_model_len,
        max_queue=a.max_queue,
        max_tokens=a.max_tokens,
        block_size=a.block_size,
        num_kv_blocks=a.num_kv_blocks,
        max_num_batched_tokens=a.max_num_batched_tokens,
        look_ahead=a.look_ahead,
        cuda_graphs=a.cuda_graphs,
        prefill_graph_tokens=a.prefill_graph_tokens,
        compile=a.compile,
        fault_latency_s=a.fault_latency,
        fault_error_rate=a.fault_error_rate,
        collective_timeout_s=a.collective_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv).validate()
        from backend.lifecycle import serve

        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        code = asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"tailgate-backend: {exc}", file=sys.stderr)
        return 2
    if code != 0:
        # A failed rank may leave threads blocked in a collective; do not wait for them.
        logging.shutdown()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
