"""A Llama-architecture decoder in plain torch, readable top to bottom.

RMSNorm, rotary position embeddings, grouped-query attention and a SwiGLU MLP. The module
names match Hugging Face's ``LlamaForCausalLM`` (minus its ``model.`` prefix) so a checkpoint
loads by name. This file knows nothing of ranks: ``backend.tp`` shrinks the linears and the
head counts after construction, and everything here reads the local sizes it finds.

Every forward pass reads and writes a preallocated KV cache of ``slots x max_seq_len``
positions; a :class:`Step` says which slot and position each input token belongs to, so one
code path serves a prefill (one slot, many tokens) and a batched decode (many slots, one token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


@dataclass(frozen=True)
class Step:
    """One forward pass: which tokens, at which positions, in which KV-cache slots.

    ``tokens`` and ``input_pos`` are ``[batch, seq]`` int64; ``slots`` is ``[batch]``. A row's
    tokens sit at consecutive positions, so ``seq == kv_len`` means a prefill from position 0.
    ``kv_len`` bounds the attended cache (max position + 1), known on the host so the model
    never syncs to find it. ``slot_start`` is set when ``slots`` is a contiguous run, letting
    attention read the cache as a view instead of gathering a copy: row i then attends to slot
    ``slot_start + i`` while it writes to ``slots[i]`` (the two differ only for the padding
    rows of a CUDA graph, which write to a spare slot and whose output is dropped).
    ``slot_limit`` (one past the highest slot) is a host-side hint for picking a graph's batch.
    """

    tokens: Tensor
    input_pos: Tensor
    slots: Tensor
    kv_len: int
    slot_start: int | None = None
    last_only: bool = False
    slot_limit: int | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 as the reference does; bf16 variance loses too much.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


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


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache(nn.Module):
    """Keys and values of every slot: ``[slots, kv_heads, max_seq_len, head_dim]``."""

    def __init__(self, slots: int, kv_heads: int, max_seq_len: int, head_dim: int, **kw) -> None:
        super().__init__()
        shape = (slots, kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, **kw), persistent=False)
        self.register_buffer("v", torch.zeros(shape, **kw), persistent=False)

    def update(self, step: Step, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k``/``v`` (``[batch, kv_heads, seq, head_dim]``) and return the attended span."""
        rows = step.slots[:, None]
        self.k[rows, :, step.input_pos] = k.transpose(1, 2)
        self.v[rows, :, step.input_pos] = v.transpose(1, 2)
        if step.slot_start is not None:
            span = slice(step.slot_start, step.slot_start + step.slots.shape[0])
            return self.k[span, :, : step.kv_len], self.v[span, :, : step.kv_len]
        return self.k[step.slots, :, : step.kv_len], self.v[step.slots, :, : step.kv_len]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hd = config.head_dim
        # Head counts are per rank once backend.tp has sharded the projections.
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = hd
        self.q_proj = nn.Linear(config.dim, config.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(config.dim, config.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(config.dim, config.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(config.n_heads * hd, config.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, step: Step
    ) -> Tensor:
        assert self.cache is not None, "call Transformer.setup_cache first"
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        keys, values = self.cache.update(step, k, v)
        # No mask means a fresh prefill (positions 0..t-1): plain causal, the fastest kernels.
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=mask is None, enable_gqa=True
        )
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.dim, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, step: Step
    ) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, step)
        return h + self.mlp(self.post_attention_layernorm(h))


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
        self.inv_freq: Tensor | None = None

    def setup_cache(self, slots: int, max_seq_len: int) -> None:
        """Allocate the KV cache and rotary table on the weights' device and dtype."""
        weight = self.embed_tokens.weight
        kw = {"device": weight.device, "dtype": weight.dtype}
        for layer in self.layers:
            attn = layer.self_attn
            attn.cache = KVCache(slots, attn.n_kv_heads, max_seq_len, attn.head_dim, **kw)
        self.inv_freq = rope_inv_freq(self.config).to(weight.device)

    def forward(self, step: Step) -> Tensor:
        """Logits ``[batch, seq, vocab]`` (``seq`` is 1 when ``step.last_only``)."""
        assert self.inv_freq is not None, "call setup_cache first"
        x = self.embed_tokens(step.tokens)
        angles = step.input_pos[..., None].float() * self.inv_freq  # [b, t, head_dim / 2]
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # [b, 1, t, head_dim]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        mask = None
        if step.tokens.shape[1] != step.kv_len:  # some rows attend to earlier cached tokens
            cached = torch.arange(step.kv_len, device=x.device)
            mask = cached[None, None, None, :] <= step.input_pos[:, None, :, None]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, step)
        if step.last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))
