"""Build a rank's shard of the model from a Hugging Face folder or a seeded random preset.

The model is constructed on the meta device and sharded first, so no rank ever allocates the
full model: a checkpoint tensor is read through safetensors' lazy slices (only this rank's rows
or columns leave the file), and a random tensor is drawn whole from a generator seeded by its
name, then sliced, so every rank agrees on the same full model without holding it. A fused
parameter (``qkv_proj``, ``gate_up_proj``) is this rank's slice of each checkpoint part,
concatenated.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.model import FUSED_PARTS, PRESETS, ModelConfig, Transformer
from backend.ranks import Rank
from backend.sharding import head_is_sharded, shard_model, shard_slices

HF_PREFIX = "model."
INIT_STD = 0.02


@dataclass(frozen=True)
class ModelSource:
    """Either a preset name (random weights) or a checkpoint folder."""

    preset: str | None = None
    path: Path | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        return self.preset if self.preset else (self.path.name if self.path else "model")


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)


def config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    """Map a Llama ``config.json`` onto :class:`ModelConfig`."""
    scaling = raw.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type")) != "llama3":
        raise ValueError(f"unsupported rope_scaling {scaling!r} (only 'llama3' is implemented)")
    heads = raw["num_attention_heads"]
    return ModelConfig(
        vocab_size=raw["vocab_size"],
        dim=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=raw.get("num_key_value_heads") or heads,
        intermediate_size=raw["intermediate_size"],
        rope_theta=float(raw.get("rope_theta", 10_000.0)),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        head_dim_override=raw.get("head_dim"),
        rope_scaling={k: float(v) for k, v in scaling.items() if k != "rope_type" and k != "type"},
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_ids(raw.get("eos_token_id")),
    )


def load_config(source: ModelSource) -> ModelConfig:
    if source.preset is not None:
        if source.preset not in PRESETS:
            raise ValueError(f"unknown preset {source.preset!r}; choose from {sorted(PRESETS)}")
        return PRESETS[source.preset]
    assert source.path is not None
    return config_from_hf(json.loads((source.path / "config.json").read_text()))


def _checkpoint_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, through the sharded index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{folder} has neither model.safetensors nor its index")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def checkpoint_parts(param: str) -> list[str]:
    """The checkpoint tensors (our names) whose rows make up parameter ``param``."""
    owner, leaf, kind = param.rsplit(".", 2) if param.count(".") >= 2 else ("", param, "")
    if leaf not in FUSED_PARTS:
        return [param]
    return [f"{owner}.{part}.{kind}" for part in FUSED_PARTS[leaf]]


def checkpoint_shape(name: str, config: ModelConfig) -> tuple[int, ...]:
    """Full (unsharded) shape of checkpoint tensor ``name``."""
    hd, dim = config.head_dim, config.dim
    leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else name.split(".")[0]
    shapes = {
        "q_proj": (config.n_heads * hd, dim),
        "k_proj": (config.n_kv_heads * hd, dim),
        "v_proj": (config.n_kv_heads * hd, dim),
        "o_proj": (dim, config.n_heads * hd),
        "gate_proj": (config.intermediate_size, dim),
        "up_proj": (config.intermediate_size, dim),
        "down_proj": (dim, config.intermediate_size),
        "embed_tokens": (config.vocab_size, dim),
        "lm_head": (config.vocab_size, dim),
    }
    return shapes.get(leaf, (dim,))  # the norms


def _source_name(param: str, config: ModelConfig) -> str:
    """The checkpoint tensor behind one of our (unfused) parameter names."""
    if param == "lm_head.weight":
        return HF_PREFIX + "embed_tokens.weight" if config.tie_word_embeddings else param
    return HF_PREFIX + param


def _checkpoint_tensors(
    folder: Path, names: list[str], config: ModelConfig, rank: Rank
) -> Iterator[tuple[str, Tensor]]:
    from safetensors import safe_open

    files = _checkpoint_files(folder)
    with ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def read(part: str) -> Tensor:
            source = _source_name(part, config)
            if source not in files:
                raise KeyError(f"checkpoint in {folder} lacks tensor {source!r}")
            path = files[source]
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            lazy = handles[path].get_slice(source)
            return lazy[shard_slices(part, lazy.get_shape(), config, rank)]

        for name in names:
            yield name, torch.cat([read(part) for part in checkpoint_parts(name)])


def _random_tensors(
    names: list[str], config: ModelConfig, rank: Rank, seed: int, dtype: torch.dtype
) -> Iterator[tuple[str, Tensor]]:
    def draw(part: str) -> Tensor:
        source = _source_name(part, config).removeprefix(HF_PREFIX)
        shape = checkpoint_shape(source, config)
        if part.endswith("norm.weight"):
            return torch.ones(shape, device=rank.device, dtype=dtype)
        gen = torch.Generator(rank.device).manual_seed(seed ^ zlib.crc32(source.encode()))
        full = torch.randn(shape, generator=gen, device=rank.device, dtype=dtype) * INIT_STD
        return full[shard_slices(part, shape, config, rank)].clone()

    for name in names:
        yield name, torch.cat([draw(part) for part in checkpoint_parts(name)])


def load_model(source: ModelSource, rank: Rank, dtype: torch.dtype) -> Transformer:
    """This rank's shard of the model, weights loaded, on ``rank.device`` in ``dtype``."""
    config = load_config(source)
    with torch.device("meta"):
        model = Transformer(config)
    shard_model(model, rank)
    model = model.to_empty(device=rank.device).to(dtype)
    if config.tie_word_embeddings and not head_is_sharded(config, rank.world):
        # to_empty gives each module its own storage, which would hold the embedding twice.
        model.lm_head.weight = model.embed_tokens.weight
    params = dict(model.named_parameters())  # a tied head appears once, as embed_tokens
    names = list(params)
    if source.path is not None:
        tensors = _checkpoint_tensors(source.path, names, config, rank)
    else:
        tensors = _random_tensors(names, config, rank, source.seed, dtype)
    with torch.no_grad():
        for name, value in tensors:
            if value.shape != params[name].shape:
                raise ValueError(
                    f"{name}: checkpoint shard {tuple(value.shape)} "
                    f"does not fit parameter {tuple(params[name].shape)}"
                )
            params[name].copy_(value)
    if rank.device.type == "cuda":
        torch.cuda.empty_cache()  # return the full tensors drawn for random weights
    return model.eval()
