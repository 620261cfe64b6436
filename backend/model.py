"""A Llama-architecture decoder in plain torch, readable top to bottom.

RMSNorm, rotary position embeddings, grouped-query attention and a SwiGLU MLP. Module names
match Hugging Face's ``LlamaForCausalLM`` (minus its ``model.`` prefix) except two fused
projections, ``qkv_proj`` and ``gate_up_proj`` (:data:`FUSED_PARTS` names their checkpoint
parts): one GEMM instead of three or two per layer. This file knows nothing of ranks:
``backend.sharding`` shrinks the linears and the head counts after construction, and everything
here reads the local sizes it finds.

Keys and values live in a paged cache: fixed-size blocks of ``block_size`` positions shared by
all sequences. A :class:`Step` says where each input token's K/V goes (``write_slots``) and
which blocks each row attends over (``block_table``), so one code path serves a prefill chunk
(one row, many tokens, possibly after a cached prefix) and a batched decode (many rows, one
token each), and attention reads only the blocks a row holds, not the whole cache. On a GPU a
decode step takes a shortcut through :mod:`backend.paged_attention`: one kernel per layer for
RoPE, the KV write and attention over the blocks in place; the general path is its reference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend import paged_attention


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-style decoder (the fields of a Hugging Face ``config.json``)."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    head_dim_override: int | None = None
    # Llama 3.x frequency scaling: {"factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; empty means plain RoPE.
    rope_scaling: dict[str, float] = field(default_factory=dict)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.dim // self.n_heads

    def with_tokens(self, bos: int | None, eos: tuple[int, ...]) -> ModelConfig:
        return replace(self, bos_token_id=bos, eos_token_ids=eos)


# Named shapes, after gpt-fast's ``transformer_configs``. ``tiny`` is for CPU tests; ``1b`` and
# ``8b`` have the shapes of Llama 3.2 1B and Llama 3.1 8B for GPU benchmarks with random weights.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=260,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        intermediate_size=128,
        rope_theta=10_000.0,
        max_position_embeddings=1024,
        bos_token_id=256,
        eos_token_ids=(257,),
    ),
    "1b": ModelConfig(
        vocab_size=128_256,
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=8192,
        tie_word_embeddings=True,
        max_position_embeddings=131_072,
        bos_token_id=128_000,
        eos_token_ids=(128_001,),
    ),
    "8b": ModelConfig(
        vocab_size=128_256,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=14_336,
        max_position_embeddings=131_072,
        bos_token_id=128_000,
        eos_token_ids=(128_001,),
    ),
}


# Fused parameter -> its checkpoint parts, concatenated along the output rows in this order.
FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


@dataclass(frozen=True)
class Step:
    """One forward pass: which tokens, at which positions, writing and reading which KV blocks.

    ``tokens`` and ``input_pos`` are ``[batch, seq]`` int64; a row's tokens sit at consecutive
    positions. ``write_slots`` (``[batch * seq]``) is each token's flat cache index
    (``block * block_size + offset``). ``block_table`` (``[batch, width]``) lists the blocks a
    row attends over in position order, padded with block 0 (the null block, never handed out);
    the attended span is ``width * block_size`` positions, masked to each query's position.
    """

    tokens: Tensor
    input_pos: Tensor
    write_slots: Tensor
    block_table: Tensor
    last_only: bool = False


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Normalise in fp32 as the reference does; bf16 variance loses too much.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The residual stream after adding ``x``, normalised; and the stream itself."""
    total = residual + x
    return rms_norm(total, weight, eps), total


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (``[..., head_dim]``) by the angles of its positions."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def silu_mul(gate_up: Tensor) -> Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass(frozen=True)
class Pointwise:
    """The elementwise work between the GEMMs: plain torch, or fused by ``torch.compile``.

    Eager, each is a handful of small kernels per layer (a norm alone is four); compiled, each
    becomes one, which matters once CUDA graphs have taken the launch cost away and the
    kernels' own fixed cost is what is left.
    """

    rms_norm: Callable[[Tensor, Tensor, float], Tensor] = rms_norm
    add_rms_norm: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]] = add_rms_norm
    rope: Callable[[Tensor, Tensor, Tensor], Tensor] = apply_rope
    silu_mul: Callable[[Tensor], Tensor] = silu_mul

    @classmethod
    def compiled(cls) -> Pointwise:
        """Each piece through ``torch.compile`` (dynamic shapes: one kernel for all batches)."""
        fuse = functools.partial(torch.compile, dynamic=True, fullgraph=True)
        return cls(fuse(rms_norm), fuse(add_rms_norm), fuse(apply_rope), fuse(silu_mul))


class RMSNorm(nn.Module):
    """Holds the norm's weight (checkpoint name ``...layernorm.weight``); ``Pointwise`` runs it."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


def rope_inv_freq(config: ModelConfig) -> Tensor:
    """Inverse frequencies of the rotary embedding, with Llama 3 scaling when configured."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq.float()
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_len / low, old_len / high
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(mid, blended, scaled).float()


def rope_tables(
    config: ModelConfig, max_seq_len: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``cos`` and signed ``sin`` of every position, ``[max_seq_len, head_dim]`` (float32).

    The sine's first half is negated so that rotating is ``x * cos + roll(x) * sin``: the
    "rotate half" of Hugging Face's Llama without building a concatenation per layer.
    """
    inv_freq = rope_inv_freq(config).to(device)
    angles = torch.arange(max_seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq
    return torch.cat((angles.cos(), angles.cos()), -1), torch.cat((-angles.sin(), angles.sin()), -1)


@dataclass(frozen=True)
class PassInputs:
    """What every layer of one forward pass reads besides its input."""

    step: Step
    cos: Tensor  # [batch, seq, 1, head_dim]: the same for every head
    sin: Tensor
    # None on decode steps through paged_attention, which reads the cache in place.
    mask: Tensor | None
    ops: Pointwise
    rope_tables: tuple[Tensor, Tensor]  # cos, sin of every position: what that kernel reads


class PagedKVCache(nn.Module):
    """Keys and values of every block, flat by position: ``[blocks * block_size, kv_heads, hd]``."""

    def __init__(
        self, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, **kw: Any
    ) -> None:
        super().__init__()
        self.block_size = block_size
        shape = (num_blocks * block_size, kv_heads, head_dim)
        self.register_buffer("k", torch.zeros(shape, **kw), persistent=False)
        self.register_buffer("v", torch.zeros(shape, **kw), persistent=False)

    def write(self, step: Step, k: Tensor, v: Tensor) -> None:
        """Store ``k``/``v`` (``[batch, seq, kv_heads, head_dim]``) in place at their slots."""
        heads, hd = self.k.shape[1:]
        self.k.index_copy_(0, step.write_slots, k.reshape(-1, heads, hd))
        self.v.index_copy_(0, step.write_slots, v.reshape(-1, heads, hd))

    def read(self, step: Step) -> tuple[Tensor, Tensor]:
        """Each row's blocks, gathered: ``[batch, kv_heads, width * block_size, head_dim]``."""
        batch = step.block_table.shape[0]
        heads, hd = self.k.shape[1:]
        blocks = (-1, self.block_size, heads, hd)
        keys = self.k.view(blocks)[step.block_table].view(batch, -1, heads, hd)
        values = self.v.view(blocks)[step.block_table].view(batch, -1, heads, hd)
        return keys.transpose(1, 2), values.transpose(1, 2)


def attention_mask(step: Step, group: int, block_size: int) -> Tensor:
    """``[batch, 1, seq * group, span]``: a query row sees the keys up to its own position.

    Attention folds each group of query heads sharing a KV head into the query length, so the
    positions repeat ``group`` times per token.
    """
    span = step.block_table.shape[1] * block_size
    keys = torch.arange(span, device=step.input_pos.device)
    queries = step.input_pos.repeat_interleave(group, dim=1)
    return keys[None, None, None, :] <= queries[:, None, :, None]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hd = config.head_dim
        # Head counts are per rank once backend.sharding has sharded the projections.
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = hd
        self.qkv_proj = nn.Linear(config.dim, (config.n_heads + 2 * config.n_kv_heads) * hd, False)
        self.o_proj = nn.Linear(config.n_heads * hd, config.dim, bias=False)
        self.cache: PagedKVCache | None = None

    def forward(self, x: Tensor, inputs: PassInputs) -> Tensor:
        assert self.cache is not None, "call Transformer.setup_cache first"
        b, t, _ = x.shape
        heads, kv_heads, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj(x).view(b, t, heads + 2 * kv_heads, hd)
        cache, step = self.cache, inputs.step
        if inputs.mask is None:  # decode: RoPE, the KV write and attention in one kernel
            cos, sin = inputs.rope_tables
            y = paged_attention.decode_attention(
                qkv, cos, sin, cache.k, cache.v, step, cache.block_size
            )
            return self.o_proj(y)
        qk = inputs.ops.rope(qkv[:, :, : heads + kv_heads], inputs.cos, inputs.sin)
        q, k = qk.split((heads, kv_heads), dim=2)
        cache.write(step, k, qkv[:, :, heads + kv_heads :])
        keys, values = cache.read(step)
        # Grouped-query attention without expanding K/V: the query heads of one KV head become
        # extra query rows, so any SDPA kernel (flash, memory-efficient) runs it as plain MHA.
        group = heads // kv_heads
        q = q.reshape(b, t, kv_heads, group, hd).permute(0, 2, 1, 3, 4).reshape(b, kv_heads, -1, hd)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=inputs.mask)
        y = y.view(b, kv_heads, t, group, hd).permute(0, 2, 1, 3, 4).reshape(b, t, heads * hd)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, gate and up as one fused projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.dim, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.dim, bias=False)

    def forward(self, x: Tensor, ops: Pointwise) -> Tensor:
        return self.down_proj(ops.silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, residual: Tensor | None, inputs: PassInputs
    ) -> tuple[Tensor, Tensor]:
        """This layer's output delta and the residual stream before it (vLLM's layout).

        Adding a delta to the stream is fused with the next norm, so the stream is updated
        one layer late: ``residual + x`` is the previous layer's output.
        """
        ops, norm, post = inputs.ops, self.input_layernorm, self.post_attention_layernorm
        if residual is None:
            h, residual = ops.rms_norm(x, norm.weight, norm.eps), x
        else:
            h, residual = ops.add_rms_norm(x, residual, norm.weight, norm.eps)
        h, residual = ops.add_rms_norm(self.self_attn(h, inputs), residual, post.weight, post.eps)
        return self.mlp(h, ops), residual


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.block_size = 0
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None
        self.ops = Pointwise()
        # For one-token-per-row steps instead of ``ops`` (backend.fused_pointwise says why).
        self.decode_ops: Pointwise | None = None
        # Decode steps attend through paged_attention's kernel (setup_cache: where it runs).
        self.paged_decode = False

    def setup_cache(self, num_blocks: int, block_size: int, max_seq_len: int) -> None:
        """Allocate the paged KV cache and the rotary tables on the weights' device and dtype."""
        weight = self.embed_tokens.weight
        kw = {"device": weight.device, "dtype": weight.dtype}
        for layer in self.layers:
            attn = layer.self_attn
            attn.cache = PagedKVCache(num_blocks, block_size, attn.n_kv_heads, attn.head_dim, **kw)
        self.block_size = block_size
        hd = self.config.head_dim
        self.paged_decode = (
            weight.is_cuda and paged_attention.AVAILABLE and hd & (hd - 1) == 0  # Triton: 2^n
        )
        cos, sin = rope_tables(self.config, max_seq_len, weight.device)
        self.cos, self.sin = cos.to(weight.dtype), sin.to(weight.dtype)

    def forward(self, step: Step) -> Tensor:
        """Logits ``[batch, seq, vocab]`` (``seq`` is 1 when ``step.last_only``)."""
        assert self.cos is not None and self.sin is not None, "call setup_cache first"
        attn = self.layers[0].self_attn
        decode = step.tokens.shape[1] == 1
        in_place = self.paged_decode and decode
        ops = self.decode_ops if decode and self.decode_ops is not None else self.ops
        group = attn.n_heads // attn.n_kv_heads
        inputs = PassInputs(
            step=step,
            cos=self.cos[step.input_pos][:, :, None],
            sin=self.sin[step.input_pos][:, :, None],
            mask=None if in_place else attention_mask(step, group, self.block_size),
            ops=ops,
            rope_tables=(self.cos, self.sin),
        )
        x, residual = self.embed_tokens(step.tokens), None
        for layer in self.layers:
            x, residual = layer(x, residual, inputs)
        assert residual is not None
        if step.last_only:
            x, residual = x[:, -1:], residual[:, -1:]
        normed, _ = ops.add_rms_norm(x, residual, self.norm.weight, self.norm.eps)
        return self.lm_head(normed)
