"""Which slice of each weight a tensor-parallel rank holds, and the collectives that rejoin them.

Weights are split after the model is built on the meta device, so each rank allocates and loads
only its shard:

- q/k/v (fused as ``qkv_proj``) and gate/up (fused as ``gate_up_proj``) are column-parallel: each
  rank holds its rows of every part, concatenated in the fused order;
- o and down are row-parallel (columns split), followed by an all-reduce of their outputs;
- the LM head is split by vocabulary and its logits all-gathered (when the vocabulary divides).

The model (:mod:`backend.model`) knows nothing of ranks; how ranks are started and kept in step
is :mod:`backend.ranks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from backend.model import ModelConfig, Transformer
from backend.ranks import Rank

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


def check_divisible(config: ModelConfig, world: int) -> None:
    """Refuse at start a TP degree that cannot split the heads or the MLP evenly."""
    for name, count in (
        ("attention heads (num_attention_heads)", config.n_heads),
        ("key/value heads (num_key_value_heads)", config.n_kv_heads),
        ("MLP width (intermediate_size)", config.intermediate_size),
    ):
        if count % world:
            raise ValueError(f"--tp {world} does not divide the model's {count} {name}")


def head_is_sharded(config: ModelConfig, world: int) -> bool:
    return world > 1 and config.vocab_size % world == 0


def _shard_dim(name: str, config: ModelConfig, world: int) -> int | None:
    leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else name
    if leaf in COLUMN_PARALLEL:
        return 0
    if leaf in ROW_PARALLEL:
        return 1
    if leaf == "lm_head" and head_is_sharded(config, world):
        return 0
    return None


def shard_slices(
    name: str, shape: Sequence[int], config: ModelConfig, rank: Rank
) -> tuple[slice, ...]:
    """The slice of the full checkpoint tensor ``name`` that ``rank`` holds (all if replicated).

    ``name`` is a checkpoint (unfused) name such as ``layers.0.self_attn.k_proj.weight``.
    """
    index = [slice(None)] * len(shape)
    dim = _shard_dim(name, config, rank.world)
    if dim is not None and rank.world > 1:
        size = shape[dim] // rank.world
        index[dim] = slice(rank.rank * size, (rank.rank + 1) * size)
    return tuple(index)


def _all_reduce_hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    dist.all_reduce(output)
    return output


def _all_gather_hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    parts = [torch.empty_like(output) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, output.contiguous())
    return torch.cat(parts, dim=-1)


def _shrink(linear: nn.Linear, dim: int, world: int) -> nn.Linear:
    out_f, in_f = linear.weight.shape
    if dim == 0:
        out_f //= world
    else:
        in_f //= world
    return nn.Linear(in_f, out_f, bias=False, device=linear.weight.device)


def shard_model(model: Transformer, rank: Rank) -> None:
    """Rewrite a meta-device model in place into this rank's shard and add the collectives."""
    config, world = model.config, rank.world
    if world == 1:
        return
    check_divisible(config, world)
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = _shrink(attn.qkv_proj, 0, world)
        mlp.gate_up_proj = _shrink(mlp.gate_up_proj, 0, world)
        attn.o_proj = _shrink(attn.o_proj, 1, world)
        mlp.down_proj = _shrink(mlp.down_proj, 1, world)
        attn.o_proj.register_forward_hook(_all_reduce_hook)
        mlp.down_proj.register_forward_hook(_all_reduce_hook)
        attn.n_heads //= world
        attn.n_kv_heads //= world
    if head_is_sharded(config, world):
        model.lm_head = _shrink(model.lm_head, 0, world)  # also unties a tied head
        model.lm_head.register_forward_hook(_all_gather_hook)
