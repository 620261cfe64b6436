"""Decode attention in one kernel per layer: RoPE, the KV write and paged attention in place.

The general path runs RoPE, two ``index_copy_`` writes into the cache, a gather of every row's
blocks (:meth:`backend.model.PagedKVCache.read`), a boolean mask over the whole block-table
width and two copies between head layouts around SDPA: about nine small kernels per layer
around an 11 µs attention, which at batch 1 costs more than the attention's bytes. Here each
program computes one (row, query head) pair from the fused q/k/v projection's output: it
rotates its query and the row's new key, stores the new key and value in the cache (one
program per KV head), then walks the row's block table up to its position, loading each
cached key and value straight from the cache with an online softmax in float32, so a step
reads each live position once and the mask, the gather and the copies disappear. Decode only
(one query token per row); prefill keeps the general path.

Triton ships with CUDA builds of torch; where it is missing (CPU-only installs),
:data:`AVAILABLE` is false and the model keeps the general path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch: no Triton, the model keeps the general path
    triton = None

if TYPE_CHECKING:
    from backend.model import Step

AVAILABLE = triton is not None

# Cached positions per loop iteration: 64 keys of 128 dims in float32 are 64 registers per
# thread at 4 warps, and the K and V loads of one iteration are in flight together.
POSITIONS_PER_ITERATION = 64
WARPS = 4

_kernel: Any = None
if triton is not None:

    @triton.jit
    def _rotate(base, cos, sin, dims, rolled):
        """``x * cos + roll(x, head_dim / 2) * sin`` (``sin``'s first half negated)."""
        return (
            tl.load(base + dims).to(tl.float32) * cos + tl.load(base + rolled).to(tl.float32) * sin
        )

    @triton.jit
    def _decode_attention(
        qkv_ptr,
        cos_ptr,
        sin_ptr,
        k_ptr,
        v_ptr,
        table_ptr,
        pos_ptr,
        slot_ptr,
        out_ptr,
        qkv_row_stride,
        table_row_stride,
        pos_row_stride,
        slot_stride,
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
        rolled = (dims + HEAD_DIM // 2) % HEAD_DIM
        store_dtype = k_ptr.dtype.element_ty
        pos = tl.load(pos_ptr + row * pos_row_stride).to(tl.int32)
        cos = tl.load(cos_ptr + pos * HEAD_DIM + dims).to(tl.float32)
        sin = tl.load(sin_ptr + pos * HEAD_DIM + dims).to(tl.float32)
        base = qkv_ptr + row * qkv_row_stride
        # Rounded to the cache's dtype as the general path's tensors are.
        q = _rotate(base + head * HEAD_DIM, cos, sin, dims, rolled).to(store_dtype)
        k_new = _rotate(base + (HEADS + kv_head) * HEAD_DIM, cos, sin, dims, rolled)
        k_new = k_new.to(store_dtype)
        v_new = tl.load(base + (HEADS + KV_HEADS + kv_head) * HEAD_DIM + dims)
        if head % GROUP == 0:  # one writer per KV head; the others use k_new/v_new directly
            slot = tl.load(slot_ptr + row * slot_stride)
            cell = (slot * KV_HEADS + kv_head) * HEAD_DIM + dims
            tl.store(k_ptr + cell, k_new)
            tl.store(v_ptr + cell, v_new.to(store_dtype))
        q = q.to(tl.float32)
        # The new position first, so the cache is read only below it (no race with the store).
        best = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
        total = tl.full((), 1.0, tl.float32)
        acc = v_new.to(store_dtype).to(tl.float32)
        for start in range(0, pos, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            live = n < pos
            block = tl.load(
                table_ptr + row * table_row_stride + n // BLOCK_SIZE, mask=live, other=0
            )
            cells = ((block * BLOCK_SIZE + n % BLOCK_SIZE) * KV_HEADS + kv_head) * HEAD_DIM
            offsets = cells[:, None] + dims[None, :]
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

    _kernel = _decode_attention


def decode_attention(
    qkv: Tensor,
    rope_cos: Tensor,
    rope_sin: Tensor,
    keys: Tensor,
    values: Tensor,
    step: Step,
    block_size: int,
) -> Tensor:
    """One decode token per row: rotate, store its K/V at ``step.write_slots``, attend.

    ``qkv`` is the fused projection's output ``[batch, 1, heads + 2 * kv_heads, head_dim]``
    (rows may be strided, heads contiguous); ``rope_cos``/``rope_sin`` the model's tables
    ``[max_seq_len, head_dim]``; ``keys``/``values`` the flat cache
    ``[blocks * block_size, kv_heads, head_dim]``, written in place; ``step`` a
    :class:`~backend.model.Step`. Returns ``[batch, 1, heads * head_dim]`` in ``qkv``'s dtype.
    """
    assert _kernel is not None, "decode_attention needs Triton (see AVAILABLE)"
    batch, seq, all_heads, head_dim = qkv.shape
    kv_heads = keys.shape[1]
    heads = all_heads - 2 * kv_heads
    table, positions, slots = step.block_table, step.input_pos, step.write_slots
    assert seq == 1 and qkv.stride(3) == 1 and qkv.stride(2) == head_dim, "one dense token/row"
    assert keys.is_contiguous() and values.is_contiguous() and rope_cos.is_contiguous()
    assert rope_sin.is_contiguous() and table.stride(1) == 1
    out = torch.empty(batch, 1, heads * head_dim, device=qkv.device, dtype=qkv.dtype)
    _kernel[(batch, heads)](
        qkv,
        rope_cos,
        rope_sin,
        keys,
        values,
        table,
        positions,
        slots,
        out,
        qkv.stride(0),
        table.stride(0),
        positions.stride(0),
        slots.stride(0),
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
