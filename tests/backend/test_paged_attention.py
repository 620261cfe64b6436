"""The fused decode kernel against the general path (RoPE, KV write, gather, masked SDPA).

Needs a CUDA GPU with Triton (skipped elsewhere; CI has none): run on a GPU machine with
``pytest tests/backend/test_paged_attention.py``. Fresh random data per case, scattered blocks,
rows of different lengths, strided rows as the graphs' static buffer passes them; both the
attention output and the K/V the kernel stores are compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from backend import paged_attention
from backend.model import PRESETS, PagedKVCache, Step, apply_rope, attention_mask, rope_tables

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and paged_attention.AVAILABLE), reason="needs CUDA + Triton"
)

BLOCK_SIZE, KV_HEADS, GROUP, HEAD_DIM = 16, 8, 4, 128
HEADS = KV_HEADS * GROUP
STATIC_COLUMNS = 3  # token, position, slot, then the table (as backend.graphs lays them out)


def _step(lengths: list[int], width: int, gen: torch.Generator, static: bool) -> Step:
    """Rows whose new token sits at ``length - 1``, each in its own random blocks."""
    batch, blocks = len(lengths), 1 + len(lengths) * width
    order = (torch.randperm(blocks - 1, generator=gen) + 1).view(batch, width)
    table = torch.zeros(batch, width, dtype=torch.int64)
    for row, length in enumerate(lengths):
        held = -(-length // BLOCK_SIZE)
        table[row, :held] = order[row, :held]
    pos = torch.tensor(lengths) - 1
    slots = table[torch.arange(batch), pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE
    buffer = torch.zeros(batch, STATIC_COLUMNS + width + (5 if static else 0), dtype=torch.int64)
    buffer[:, 1], buffer[:, 2] = pos, slots
    buffer[:, STATIC_COLUMNS : STATIC_COLUMNS + width] = table
    buffer = buffer.cuda()
    if not static:
        return Step(buffer[:, :1], pos[:, None].cuda(), slots.cuda(), table.cuda())
    return Step(
        buffer[:, 0, None],
        buffer[:, 1, None],
        buffer[:, 2],
        buffer[:, STATIC_COLUMNS : STATIC_COLUMNS + width],
    )


def _general(qkv: Tensor, cos: Tensor, sin: Tensor, step: Step, cache: PagedKVCache) -> Tensor:
    """What ``backend.model.Attention`` does without the kernel."""
    b = qkv.shape[0]
    qk = apply_rope(
        qkv[:, :, : HEADS + KV_HEADS],
        cos[step.input_pos][:, :, None],
        sin[step.input_pos][:, :, None],
    )
    q, k = qk.split((HEADS, KV_HEADS), dim=2)
    cache.write(step, k, qkv[:, :, HEADS + KV_HEADS :])
    keys, values = cache.read(step)
    q = (
        q.reshape(b, 1, KV_HEADS, GROUP, HEAD_DIM)
        .permute(0, 2, 1, 3, 4)
        .reshape(b, KV_HEADS, -1, HEAD_DIM)
    )
    mask = attention_mask(step, GROUP, BLOCK_SIZE)
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return y.view(b, KV_HEADS, 1, GROUP, HEAD_DIM).permute(0, 2, 1, 3, 4).reshape(b, 1, -1)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize(
    "lengths",
    [[1], [17], [1, 16, 64, 65, 200, 1000, 3, 513, 2000, 129]],
    ids=["first-token", "two-blocks", "mixed"],
)
@pytest.mark.parametrize("static", [False, True], ids=["dense", "static-buffer"])
def test_kernel_equals_the_general_path(
    lengths: list[int], dtype: torch.dtype, tolerance: float, static: bool
) -> None:
    gen = torch.Generator().manual_seed(len(lengths) * 7 + max(lengths) + static)
    width = -(-max(lengths) // BLOCK_SIZE) + 2  # wider than any row: padding must not count
    step = _step(lengths, width, gen, static)
    blocks = 1 + len(lengths) * width
    general = PagedKVCache(blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device="cuda", dtype=dtype)
    general.k.copy_(torch.randn(general.k.shape, generator=gen))
    general.v.copy_(torch.randn(general.v.shape, generator=gen))
    fused = PagedKVCache(blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device="cuda", dtype=dtype)
    fused.k.copy_(general.k)
    fused.v.copy_(general.v)
    cos, sin = (t.to(dtype) for t in rope_tables(PRESETS["8b"], 4096, torch.device("cuda")))
    # Rows strided as a batch's qkv_proj output leaves them, with room on each side.
    wide = torch.randn(len(lengths), 1, HEADS + 2 * KV_HEADS + 2, HEAD_DIM, generator=gen)
    qkv = wide.to("cuda", dtype)[:, :, 1:-1]

    expected = _general(qkv, cos, sin, step, general)
    got = paged_attention.decode_attention(qkv, cos, sin, fused.k, fused.v, step, BLOCK_SIZE)

    assert got.shape == expected.shape and got.dtype == dtype
    assert torch.isfinite(got).all()
    error = (got.float() - expected.float()).norm() / expected.float().norm()
    assert error < tolerance, f"attention: relative error {error:.2e}"
    for name in ("k", "v"):
        written = getattr(fused, name).float() - getattr(general, name).float()
        scale = getattr(general, name).float().norm()
        assert written.norm() / scale < tolerance / 10, f"cache {name} differs"
