"""The Triton norms and SiLU·up against the plain torch functions they replace on GPUs.

Needs a CUDA GPU with Triton (skipped elsewhere; CI has none). Fresh random data per case,
strided rows as ``Transformer.forward`` passes them (``x[:, -1:]``), float32 and bf16.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from backend import fused_pointwise, model

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and fused_pointwise.AVAILABLE), reason="needs CUDA + Triton"
)

DTYPES = [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)]


def _error(got: Tensor, expected: Tensor) -> float:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert torch.isfinite(got).all()
    return float((got.float() - expected.float()).norm() / expected.float().norm())


def _random(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to("cuda", dtype)


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES)
@pytest.mark.parametrize("dim", [2048, 4096, 1000])
def test_norms_equal_torch(dim: int, dtype: torch.dtype, tolerance: float) -> None:
    x = _random((3, 5, dim), dtype, seed=dim)[:, -2:]  # strided rows
    residual = _random((3, 2, dim), dtype, seed=dim + 1)
    weight = _random((dim,), dtype, seed=dim + 2)
    assert _error(fused_pointwise.rms_norm(x, weight, 1e-5), model.rms_norm(x, weight, 1e-5)) < (
        tolerance
    )
    got, got_total = fused_pointwise.add_rms_norm(x, residual, weight, 1e-5)
    expected, expected_total = model.add_rms_norm(x, residual, weight, 1e-5)
    assert _error(got, expected) < tolerance
    assert _error(got_total, expected_total) < tolerance / 10


@pytest.mark.parametrize(("dtype", "tolerance"), DTYPES)
@pytest.mark.parametrize("width", [8192, 14336, 1500])
def test_silu_mul_equals_torch(width: int, dtype: torch.dtype, tolerance: float) -> None:
    gate_up = _random((4, 1, 2 * width), dtype, seed=width)
    assert _error(fused_pointwise.silu_mul(gate_up), model.silu_mul(gate_up)) < tolerance
