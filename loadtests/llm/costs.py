"""What one engine step costs, calibrated to a published vLLM figure.

The step model is the one continuous batching gives: a fixed cost per step (reading the
weights once, launching kernels), a decode cost per running sequence (its KV reads) and a
prefill cost per uncached prompt token (compute bound), with at most ``chunk_tokens`` tokens
per step (chunked prefill mixed with decode, as vLLM's V1 scheduler does).

Calibration, Llama-3.1-8B-Instruct in BF16 on one H100-80GB with vLLM 0.21 (InferenceBench's
published concurrency sweep, "chatbot-short" corpus): TPOT p50 6.48 ms at concurrency 1 and
10.94 ms at 16, so ``step_s`` = 6.4 ms and ``decode_per_seq_s`` = (10.94 - 6.48) / 15
= 0.3 ms. The prefill rate is a roofline estimate, not a measured figure: 16 GFLOP per token
at about 40% of the H100's 990 TFLOPS dense BF16 is 25,000 tokens/s, ``prefill_per_token_s``
= 0.04 ms, which puts the published 14 ms TTFT at concurrency 1 at a ~190-token prompt.
``kv_blocks`` is what the 80 GB hold at vLLM's 0.9 memory utilisation: (72 - 16) GB for the
cache at 128 KiB per token (32 layers x 8 KV heads x 128 x 2 x 2 bytes), ~27,000 blocks of
16 tokens. Scenarios shrink it to make KV pressure reachable at this machine's request rates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineCosts:
    """An engine's step costs (seconds) and capacities (sequences, tokens, blocks)."""

    step_s: float = 0.0064
    decode_per_seq_s: float = 0.0003
    prefill_per_token_s: float = 0.00004
    chunk_tokens: int = 2048  # vLLM's max_num_batched_tokens
    max_running: int = 256  # vLLM's max_num_seqs
    block_tokens: int = 16  # vLLM's block_size
    kv_blocks: int = 27_000

    def step_duration_s(self, decoding: int, prefill_tokens: int) -> float:
        """One step's duration for ``decoding`` sequences and ``prefill_tokens`` new tokens."""
        return (
            self.step_s
            + self.decode_per_seq_s * decoding
            + self.prefill_per_token_s * prefill_tokens
        )

    def __post_init__(self) -> None:
        if min(self.chunk_tokens, self.max_running, self.block_tokens, self.kv_blocks) < 1:
            raise ValueError("chunk_tokens, max_running, block_tokens and kv_blocks must be >= 1")
        if min(self.step_s, self.decode_per_seq_s, self.prefill_per_token_s) < 0:
            raise ValueError("step costs must be >= 0")
