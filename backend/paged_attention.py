"""Decode attention that reads the paged KV cache in place: one Triton kernel per layer.

The general path (:meth:`backend.model.PagedKVCache.read` then SDPA) gathers every row's blocks
into a contiguous copy, builds a boolean mask over the whole block-table width, and copies the
query and output between the head layouts: about six small kernels per layer around an 11 µs
attention, which at batch 1 costs more than the attention's bytes. Here each program computes
one (row, query head) pair: it walks the row's block table up to the row's own position, loads
each position's key and value straight from the cache, and keeps an online softmax in
float32 registers, so a step reads each live position once and the mask, the gather and the
layout copies disappear. Decode only (one query token per row); prefill keeps SDPA.

Triton ships with CUDA builds of torch; where it is missing (CPU-only installs),
:data:`AVAILABLE` is false and the model keeps the general path.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch: no Triton, the model keeps the gather + SDPA path
    triton = None

AVAILABLE = triton is not None

# Positions per loop iteration: 64 keys of 128 dims in float32 are 64 registers per thread
# at 4 warps, and two such loads (K and V) in flight hide most of the memory latency.
POSITIONS_PER_ITERATION = 64
WARPS = 4

_kernel: Any = None
if triton is not None:

    @triton.jit
    def _paged_decode(
        q_ptr,
        k_ptr,
        v_ptr,
        table_ptr,
        pos_ptr,
        out_ptr,
        q_row_stride,
        table_row_stride,
        pos_row_stride,
        scale,
        GROUP: tl.constexpr,
        HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + row * q_row_stride + head * HEAD_DIM + dims).to(tl.float32)
        length = tl.load(pos_ptr + row * pos_row_stride) + 1  # keys up to the query's position
        best = tl.full((), float("-inf"), tl.float32)
        total = tl.full((), 0.0, tl.float32)
        acc = tl.zeros((HEAD_DIM,), tl.float32)
        for start in range(0, length, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            live = n < length
            block = tl.load(
                table_ptr + row * table_row_stride + n // BLOCK_SIZE, mask=live, other=0
            )
            slot = block * BLOCK_SIZE + n % BLOCK_SIZE
            offsets = (slot[:, None] * KV_HEADS + kv_head) * HEAD_DIM + dims[None, :]
            k = tl.load(k_ptr + offsets, mask=live[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offsets, mask=live[:, None], other=0.0).to(tl.float32)
            scores = tl.where(live, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            weights = tl.exp(scores - new_best)
            rescale = tl.exp(best - new_best)
            acc = acc * rescale + tl.sum(weights[:, None] * v, axis=0)
            total = total * rescale + tl.sum(weights, axis=0)
            best = new_best
        out = acc / total
        tl.store(out_ptr + (row * HEADS + head) * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))

    _kernel = _paged_decode


def paged_decode_attention(
    q: Tensor, keys: Tensor, values: Tensor, block_table: Tensor, input_pos: Tensor, block_size: int
) -> Tensor:
    """Attention of one query token per row over its cached positions ``0..input_pos``.

    ``q`` is ``[batch, 1, heads, head_dim]`` (rows may be strided, heads contiguous);
    ``keys``/``values`` the flat cache ``[blocks * block_size, kv_heads, head_dim]``;
    ``block_table`` ``[batch, width]`` and ``input_pos`` ``[batch, 1]`` as in a
    :class:`~backend.model.Step`. Returns ``[batch, 1, heads * head_dim]`` in ``q``'s dtype.
    """
    assert _kernel is not None, "paged_decode_attention needs Triton (see AVAILABLE)"
    batch, seq, heads, head_dim = q.shape
    kv_heads = keys.shape[1]
    assert seq == 1 and q.stride(3) == 1 and q.stride(2) == head_dim, "one contiguous token/row"
    assert keys.is_contiguous() and values.is_contiguous() and block_table.stride(1) == 1
    out = torch.empty(batch, 1, heads * head_dim, device=q.device, dtype=q.dtype)
    _kernel[(batch, heads)](
        q,
        keys,
        values,
        block_table,
        input_pos,
        out,
        q.stride(0),
        block_table.stride(0),
        input_pos.stride(0),
        1.0 / math.sqrt(head_dim),
        GROUP=heads // kv_heads,
        HEADS=heads,
        KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_N=POSITIONS_PER_ITERATION,
        num_warps=WARPS,
    )
    return out
