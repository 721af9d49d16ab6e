"""Models behind the `VLMAdapter` protocol; `load_adapter` picks the family from the checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from ..config import ModelConfig
from ..device import DTYPES, resolve_device, resolve_dtype
from ..errors import ConfigError
from .adapter import Prompt, VideoInputs, VisualEmbeds, VLMAdapter
from .folder import adapter_base, check_model_folder, resolve_model_path

log = logging.getLogger(__name__)


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
    path = resolve_model_path(config.path)
    if check_model_folder(path) == "adapter":
        return _load_lora_checkpoint(path, config)
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


def _load_lora_checkpoint(path: Path, config: ModelConfig) -> VLMAdapter:
    """An adapter-only folder: its base (named by longvid.json, else by adapter_config.json when
    that is a local folder) with the adapter merged in."""
    from peft import PeftModel

    base = adapter_base(path, "model.path")
    base_config = dataclasses.replace(config, path=base.get("path"), seed=int(base.get("seed", config.seed)))
    log.info("%s is a LoRA adapter: loading its base %s and merging it", path, base_config.path or "(tiny default)")
    adapter = load_adapter(base_config)
    adapter.model = PeftModel.from_pretrained(adapter.model, str(path)).merge_and_unload()
    return adapter


__all__ = ["DTYPES", "Prompt", "VideoInputs", "VisualEmbeds", "VLMAdapter", "family_adapter", "load_adapter"]
