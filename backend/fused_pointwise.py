"""The elementwise work between the GEMMs as one Triton kernel each, for GPUs.

Eager torch runs a residual add and RMSNorm as five kernels and SiLU·up as two; once CUDA
graphs have taken the launch cost away, each kernel's fixed cost is what is left (about
2-3 µs, some 300 kernels per ``8b`` step). ``torch.compile`` fuses them as well
(:meth:`backend.model.Pointwise.compiled`) but costs seconds at start-up; these need none, so
they are the default for GPUs' decode steps (``Transformer.decode_ops``). Not for prefill:
launched from Python each Triton kernel costs tens of µs of host time, paid once at capture
under a graph but on every eager pass (measured: an eager ``8b`` prefill of 128 tokens took
30 ms with them, 16 ms without). Rounding follows :mod:`backend.model`'s functions: float32
inside, each intermediate rounded to the activations' dtype where torch rounds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from backend.model import Pointwise, apply_rope

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch: no Triton, the plain torch functions stay
    triton = None

AVAILABLE = triton is not None

SILU_BLOCK = 1024  # output elements per program of silu_mul

_norm_kernel: Any = None
_silu_kernel: Any = None
if triton is not None:

    @triton.jit
    def _add_rms_norm(
        x_ptr,
        residual_ptr,
        weight_ptr,
        out_ptr,
        total_ptr,
        x_row_stride,
        residual_row_stride,
        eps,
        DIM: tl.constexpr,
        BLOCK: tl.constexpr,
        ADD: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        live = cols < DIM
        dtype = out_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * x_row_stride + cols, mask=live, other=0.0).to(tl.float32)
        if ADD:
            residual = tl.load(
                residual_ptr + row * residual_row_stride + cols, mask=live, other=0.0
            )
            x = (x + residual.to(tl.float32)).to(dtype).to(tl.float32)
            tl.store(total_ptr + row * DIM + cols, x.to(dtype), mask=live)
        scale = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / DIM + eps)
        normed = (x * scale).to(dtype).to(tl.float32)
        weight = tl.load(weight_ptr + cols, mask=live, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * DIM + cols, (weight * normed).to(dtype), mask=live)

    @triton.jit
    def _silu_mul(gate_up_ptr, out_ptr, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live = cols < WIDTH
        dtype = out_ptr.dtype.element_ty
        base = gate_up_ptr + row * 2 * WIDTH
        gate = tl.load(base + cols, mask=live, other=0.0).to(tl.float32)
        up = tl.load(base + WIDTH + cols, mask=live, other=0.0).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        tl.store(out_ptr + row * WIDTH + cols, (silu * up).to(dtype), mask=live)

    _norm_kernel, _silu_kernel = _add_rms_norm, _silu_mul


def _rows(x: Tensor) -> Tensor:
    """``x`` as ``[rows, dim]`` with unit column stride (a view where possible)."""
    flat = x.reshape(-1, x.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def _norm(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    assert _norm_kernel is not None, "fused_pointwise needs Triton (see AVAILABLE)"
    dim = x.shape[-1]
    rows = _rows(x)
    added = _rows(residual) if residual is not None else rows
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    total = torch.empty(x.shape, device=x.device, dtype=x.dtype) if residual is not None else x
    block = triton.next_power_of_2(dim)
    _norm_kernel[(rows.shape[0],)](
        rows,
        added,
        weight,
        out,
        total,
        rows.stride(0),
        added.stride(0),
        eps,
        DIM=dim,
        BLOCK=block,
        ADD=residual is not None,
        num_warps=min(16, max(1, block // 512)),
    )
    return out, total


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return _norm(x, None, weight, eps)[0]


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The residual stream after adding ``x``, normalised; and the stream itself."""
    return _norm(x, residual, weight, eps)


def silu_mul(gate_up: Tensor) -> Tensor:
    assert _silu_kernel is not None, "fused_pointwise needs Triton (see AVAILABLE)"
    width = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * width)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = torch.empty(*gate_up.shape[:-1], width, device=gate_up.device, dtype=gate_up.dtype)
    grid = (rows.shape[0], triton.cdiv(width, SILU_BLOCK))
    _silu_kernel[grid](rows, out, WIDTH=width, BLOCK=SILU_BLOCK, num_warps=4)
    return out


def fused_pointwise() -> Pointwise:
    """Norms and SiLU·up as Triton kernels; RoPE (prefill only on GPUs) stays plain torch."""
    return Pointwise(rms_norm, add_rms_norm, apply_rope, silu_mul)
