"""Decode attention in one kernel per layer: RoPE, the KV write and paged attention in place.

The general path runs RoPE, two ``index_copy_`` writes into the cache, a gather of every row's
blocks (:meth:`backend.model.PagedKVCache.read`), a boolean mask over the whole block-table
width and two copies between head layouts around SDPA: about nine small kernels per layer
around an 11 µs attention, which at batch 1 costs more than the attention's bytes. Here each
program computes one (row, query head, chunk of 64 positions) from the fused q/k/v projection's
output: it rotates its query, loads the chunk's cached keys and values straight from the
cache through the row's block table, and leaves a partial softmax (max, sum, weighted values,
float32); the program whose chunk holds the row's new position adds the new key and value
from registers and stores them in the cache (one writer per KV head). A second kernel merges
each row's live chunks. Splitting by chunk (flash-decoding) keeps the GPU busy at batch 1,
where one program per head would walk the context serially, one memory round trip after
another (measured: 15.6 µs per layer for ~200 positions). The mask, the gather and the
copies disappear. Decode only (one query token per row); prefill keeps the general path.

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

# Positions per program: 64 keys of 128 dims in float32 are 64 registers per thread at
# 4 warps, and the K and V loads are in flight together.
CHUNK = 64
WARPS = 4
MERGED_PER_ITERATION = 16  # chunks the merge kernel reads at once

_chunk_kernel: Any = None
_merge_kernel: Any = None
if triton is not None:

    @triton.jit
    def _rotate(base, cos, sin, dims, rolled):
        """``x * cos + roll(x, head_dim / 2) * sin`` (``sin``'s first half negated)."""
        return (
            tl.load(base + dims).to(tl.float32) * cos + tl.load(base + rolled).to(tl.float32) * sin
        )

    @triton.jit
    def _attend_chunk(
        qkv_ptr,
        cos_ptr,
        sin_ptr,
        k_ptr,
        v_ptr,
        table_ptr,
        pos_ptr,
        slot_ptr,
        best_ptr,
        total_ptr,
        acc_ptr,
        qkv_row_stride,
        table_row_stride,
        pos_row_stride,
        slot_stride,
        scale,
        CHUNKS,
        GROUP: tl.constexpr,
        HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)
        chunk = tl.program_id(2)
        pos = tl.load(pos_ptr + row * pos_row_stride).to(tl.int32)
        first = chunk * BLOCK_N
        if first <= pos:  # chunks past the row's position hold nothing (the merge skips them)
            kv_head = head // GROUP
            dims = tl.arange(0, HEAD_DIM)
            rolled = (dims + HEAD_DIM // 2) % HEAD_DIM
            store_dtype = k_ptr.dtype.element_ty
            cos = tl.load(cos_ptr + pos * HEAD_DIM + dims).to(tl.float32)
            sin = tl.load(sin_ptr + pos * HEAD_DIM + dims).to(tl.float32)
            base = qkv_ptr + row * qkv_row_stride
            # Rounded to the cache's dtype as the general path's tensors are.
            q = _rotate(base + head * HEAD_DIM, cos, sin, dims, rolled).to(store_dtype)
            q = q.to(tl.float32)
            n = first + tl.arange(0, BLOCK_N)
            cached = n < pos  # the new position comes from registers: no race with its store
            block = tl.load(
                table_ptr + row * table_row_stride + n // BLOCK_SIZE, mask=cached, other=0
            )
            cells = ((block * BLOCK_SIZE + n % BLOCK_SIZE) * KV_HEADS + kv_head) * HEAD_DIM
            offsets = cells[:, None] + dims[None, :]
            k = tl.load(k_ptr + offsets, mask=cached[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offsets, mask=cached[:, None], other=0.0).to(tl.float32)
            scores = tl.where(cached, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
            best = tl.max(scores, axis=0)
            weights = tl.where(cached, tl.exp(scores - best), 0.0)  # no NaN if none is cached
            acc = tl.sum(weights[:, None] * v, axis=0)
            total = tl.sum(weights, axis=0)
            if pos < first + BLOCK_N:  # this chunk holds the new position
                k_new = _rotate(base + (HEADS + kv_head) * HEAD_DIM, cos, sin, dims, rolled)
                k_new = k_new.to(store_dtype)
                v_new = tl.load(base + (HEADS + KV_HEADS + kv_head) * HEAD_DIM + dims)
                v_new = v_new.to(store_dtype)
                if head % GROUP == 0:  # one writer per KV head
                    slot = tl.load(slot_ptr + row * slot_stride)
                    cell = (slot * KV_HEADS + kv_head) * HEAD_DIM + dims
                    tl.store(k_ptr + cell, k_new)
                    tl.store(v_ptr + cell, v_new)
                score = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
                new_best = tl.maximum(best, score)
                rescale = tl.exp(best - new_best)
                weight = tl.exp(score - new_best)
                acc = acc * rescale + weight * v_new.to(tl.float32)
                total = total * rescale + weight
                best = new_best
            part = (row * HEADS + head) * CHUNKS + chunk
            tl.store(best_ptr + part, best)
            tl.store(total_ptr + part, total)
            tl.store(acc_ptr + part * HEAD_DIM + dims, acc)

    @triton.jit
    def _merge_chunks(
        best_ptr,
        total_ptr,
        acc_ptr,
        pos_ptr,
        out_ptr,
        pos_row_stride,
        CHUNKS,
        HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
        MERGED: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)
        live_chunks = tl.load(pos_ptr + row * pos_row_stride).to(tl.int32) // BLOCK_N + 1
        dims = tl.arange(0, HEAD_DIM)
        base = (row * HEADS + head) * CHUNKS
        best = tl.full((), float("-inf"), tl.float32)
        total = tl.full((), 0.0, tl.float32)
        acc = tl.zeros((HEAD_DIM,), tl.float32)
        for start in range(0, live_chunks, MERGED):
            part = start + tl.arange(0, MERGED)
            live = part < live_chunks
            bests = tl.load(best_ptr + base + part, mask=live, other=float("-inf"))
            totals = tl.load(total_ptr + base + part, mask=live, other=0.0)
            accs = tl.load(
                acc_ptr + (base + part)[:, None] * HEAD_DIM + dims[None, :],
                mask=live[:, None],
                other=0.0,
            )
            new_best = tl.maximum(best, tl.max(bests, axis=0))
            weights = tl.where(live, tl.exp(bests - new_best), 0.0)
            rescale = tl.exp(best - new_best)
            acc = acc * rescale + tl.sum(weights[:, None] * accs, axis=0)
            total = total * rescale + tl.sum(weights * totals, axis=0)
            best = new_best
        out = acc / total
        tl.store(out_ptr + (row * HEADS + head) * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))

    _chunk_kernel, _merge_kernel = _attend_chunk, _merge_chunks


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
    The grid follows the block table's width (static under a CUDA graph); chunks past a row's
    position return at once.
    """
    assert _chunk_kernel is not None, "decode_attention needs Triton (see AVAILABLE)"
    batch, seq, all_heads, head_dim = qkv.shape
    kv_heads = keys.shape[1]
    heads = all_heads - 2 * kv_heads
    table, positions, slots = step.block_table, step.input_pos, step.write_slots
    assert seq == 1 and qkv.stride(3) == 1 and qkv.stride(2) == head_dim, "one dense token/row"
    assert keys.is_contiguous() and values.is_contiguous() and rope_cos.is_contiguous()
    assert rope_sin.is_contiguous() and table.stride(1) == 1
    chunks = triton.cdiv(table.shape[1] * block_size, CHUNK)
    f32 = {"device": qkv.device, "dtype": torch.float32}
    best, total = torch.empty(batch, heads, chunks, **f32), torch.empty(batch, heads, chunks, **f32)
    acc = torch.empty(batch, heads, chunks, head_dim, **f32)
    _chunk_kernel[(batch, heads, chunks)](
        qkv,
        rope_cos,
        rope_sin,
        keys,
        values,
        table,
        positions,
        slots,
        best,
        total,
        acc,
        qkv.stride(0),
        table.stride(0),
        positions.stride(0),
        slots.stride(0),
        1.0 / math.sqrt(head_dim),
        chunks,
        GROUP=heads // kv_heads,
        HEADS=heads,
        KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_N=CHUNK,
        num_warps=WARPS,
    )
    out = torch.empty(batch, 1, heads * head_dim, device=qkv.device, dtype=qkv.dtype)
    _merge_kernel[(batch, heads)](
        best,
        total,
        acc,
        positions,
        out,
        positions.stride(0),
        chunks,
        HEADS=heads,
        HEAD_DIM=head_dim,
        BLOCK_N=CHUNK,
        MERGED=MERGED_PER_ITERATION,
        num_warps=WARPS,
    )
    return out
