"""Models behind the `VLMAdapter` protocol; `load_adapter` picks the family from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError
from .adapter import Prompt, VideoInputs, VisualEmbeds, VLMAdapter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def _families() -> dict:
    """`model_type` (config.json) → adapter class."""
    from .qwen2_5_vl import Qwen25VLAdapter
    from .qwen2_vl import Qwen2VLAdapter
    from .qwen3_vl import Qwen3VLAdapter

    return {"qwen2_vl": Qwen2VLAdapter, "qwen2_5_vl": Qwen25VLAdapter, "qwen3_vl": Qwen3VLAdapter}


def family_adapter(model_type: str) -> type:
    """The adapter class of a `model_type`; a ConfigError naming the supported ones otherwise."""
    family = _families().get(model_type)
    if family is None:
        raise ConfigError(f"model type {model_type!r} is not supported; supported: {', '.join(_families())}")
    return family


def load_adapter(config: ModelConfig) -> VLMAdapter:
    """The tiny embedded default (no download) or a local checkpoint folder."""
    dtype = DTYPES[config.dtype]
    if config.path is None:
        from .qwen2_5_vl import Qwen25VLAdapter
        from .tiny import build_tiny_model

        model, tokenizer = build_tiny_model(seed=config.seed, dtype=dtype)
        return Qwen25VLAdapter(model, tokenizer)
    path = Path(config.path)
    try:
        model_type = json.loads((path / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{path}/config.json: cannot read model_type ({e})") from None
    try:
        family = family_adapter(model_type)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return family.from_pretrained(
        path, dtype=dtype, attn_implementation=config.attn_implementation, trust_remote_code=config.trust_remote_code
    )


__all__ = ["Prompt", "VideoInputs", "VisualEmbeds", "VLMAdapter", "family_adapter", "load_adapter"]
