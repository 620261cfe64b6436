"""The in-place paged decode kernel against the general path (gather + masked SDPA).

Needs a CUDA GPU with Triton (skipped elsewhere; CI has none): run on the device with
``pytest tests/backend/test_paged_attention.py``. Random data, fresh per case, scattered blocks,
rows of different lengths, a poisoned output, float32 and bf16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend import paged_attention
from backend.model import PagedKVCache, Step, attention_mask

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and paged_attention.AVAILABLE), reason="needs CUDA + Triton"
)

BLOCK_SIZE, KV_HEADS, GROUP, HEAD_DIM = 16, 8, 4, 128


def _case(
    lengths: list[int], width: int, dtype: torch.dtype, seed: int
) -> tuple[Step, PagedKVCache, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch, blocks = len(lengths), 1 + len(lengths) * width
    cache = PagedKVCache(blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device="cuda", dtype=dtype)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    # Each row holds a random set of blocks (never the null block), padded with block 0.
    order = (torch.randperm(blocks - 1, generator=gen) + 1).view(batch, width)
    table = torch.zeros(batch, width, dtype=torch.int64)
    for row, length in enumerate(lengths):
        held = -(-length // BLOCK_SIZE)
        table[row, :held] = order[row, :held]
    step = Step(
        tokens=torch.zeros(batch, 1, dtype=torch.int64, device="cuda"),
        input_pos=torch.tensor([[n - 1] for n in lengths], device="cuda"),
        write_slots=torch.zeros(batch, dtype=torch.int64, device="cuda"),
        block_table=table.cuda(),
    )
    q = torch.randn(batch, 1, KV_HEADS * GROUP, HEAD_DIM, generator=gen).to("cuda", dtype)
    return step, cache, q


def _sdpa(step: Step, cache: PagedKVCache, q: torch.Tensor) -> torch.Tensor:
    b = q.shape[0]
    keys, values = cache.read(step)
    folded = (
        q.view(b, 1, KV_HEADS, GROUP, HEAD_DIM)
        .permute(0, 2, 1, 3, 4)
        .reshape(b, KV_HEADS, GROUP, HEAD_DIM)
    )
    mask = attention_mask(step, GROUP, BLOCK_SIZE)
    y = F.scaled_dot_product_attention(folded.float(), keys.float(), values.float(), attn_mask=mask)
    return y.view(b, KV_HEADS, 1, GROUP, HEAD_DIM).permute(0, 2, 1, 3, 4).reshape(b, 1, -1)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(
    "lengths", [[1], [17], [1, 16, 64, 65, 200, 1000, 3, 513]], ids=["one", "two-blocks", "mixed"]
)
def test_kernel_equals_gather_and_sdpa(
    lengths: list[int], dtype: torch.dtype, tolerance: float
) -> None:
    width = -(-max(lengths) // BLOCK_SIZE) + 2  # wider than any row: padding must not count
    step, cache, q = _case(lengths, width, dtype, seed=len(lengths) * 7 + max(lengths))
    reference = _sdpa(step, cache, q)
    got = paged_attention.paged_decode_attention(
        q, cache.k, cache.v, step.block_table, step.input_pos, BLOCK_SIZE
    )
    assert got.shape == reference.shape and got.dtype == dtype
    assert torch.isfinite(got).all()
    error = (got.float() - reference).norm() / reference.norm()
    assert error < tolerance, f"relative error {error:.2e}"


def test_kernel_reads_strided_rows_of_a_static_buffer() -> None:
    """Graphs pass positions and tables as strided views of one static buffer."""
    step, cache, q = _case([40, 7], 4, torch.float32, seed=3)
    static = torch.zeros(2, 2 + 9, dtype=torch.int64, device="cuda")
    static[:, 0] = step.input_pos[:, 0]
    static[:, 2 : 2 + 4] = step.block_table
    strided = Step(step.tokens, static[:, 0, None], step.write_slots, static[:, 2 : 2 + 4])
    wide_q = torch.randn(2, 1, KV_HEADS * GROUP + KV_HEADS, HEAD_DIM, device="cuda")
    q = wide_q[:, :, : KV_HEADS * GROUP]  # rows strided as the fused q/k split leaves them
    reference = _sdpa(step, cache, q)
    got = paged_attention.paged_decode_attention(
        q, cache.k, cache.v, strided.block_table, strided.input_pos, BLOCK_SIZE
    )
    assert ((got - reference).norm() / reference.norm()) < 1e-5
