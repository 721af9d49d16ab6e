"""Models behind the `VLMAdapter` protocol; `load_adapter` picks the family from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..device import DTYPES, resolve_device, resolve_dtype
from ..errors import ConfigError
from .adapter import Prompt, VideoInputs, VisualEmbeds, VLMAdapter


def _families() -> dict:
    from .qwen2_5_vl import Qwen25VLAdapter

    return {"qwen2_5_vl": Qwen25VLAdapter}


def load_adapter(config: ModelConfig, device: torch.device | str | None = None) -> VLMAdapter:
    """The tiny embedded default (no download) or a local checkpoint folder, on `device` (default:
    `config.device`) in `config.dtype`."""
    device = resolve_device(device if device is not None else config.device)
    adapter = _load(config, resolve_dtype(config.dtype, device))
    adapter.model.to(device)
    return adapter


def _load(config: ModelConfig, dtype: torch.dtype) -> VLMAdapter:
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
    family = _families().get(model_type)
    if family is None:
        raise ConfigError(f"{path}: model type {model_type!r} is not supported; supported: {', '.join(_families())}")
    return family.from_pretrained(
        path, dtype=dtype, attn_implementation=config.attn_implementation, trust_remote_code=config.trust_remote_code
    )


__all__ = ["DTYPES", "Prompt", "VideoInputs", "VisualEmbeds", "VLMAdapter", "load_adapter"]
