"""Checks that need the loaded model or the whole dataset, run before the first step or answer:
LoRA targets exist in the language model, and every row's prompt (+ the tokens it may generate)
fits the model's context. Each failure names the setting or the row."""

from __future__ import annotations

import logging
import math
import re
from typing import Callable

import numpy as np

from .config import VideoConfig
from .data.schema import Sample
from .errors import ConfigError, DataError
from .inputs import question_text
from .model.adapter import VLMAdapter

log = logging.getLogger(__name__)


def check_lora_targets(adapter: VLMAdapter, lora) -> None:
    """Every `lora.target_modules` entry names at least one module of the language model (the
    pattern `apply_trainable` gives peft), or ConfigError listing the names that do exist."""
    if lora.rank == 0:
        return
    names = [name for name, _ in adapter.model.named_modules() if "language_model" in name]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in names if "." in name})
    missing = [t for t in lora.target_modules if not any(re.fullmatch(rf".*language_model.*\.({t})", n) for n in names)]
    if missing:
        raise ConfigError(
            f"lora.target_modules: {', '.join(map(repr, missing))} match no module of the language model; "
            f"its module names include {', '.join(n for n in leaves if n.endswith('proj')) or ', '.join(leaves[:12])}"
        )


def context_length(adapter: VLMAdapter) -> int | None:
    """The language model's maximum positions, when its config says."""
    model = getattr(adapter, "hf", adapter.model)
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def visual_tokens(adapter: VLMAdapter, video: VideoConfig) -> int | None:
    """Visual tokens of the longest video the sampling can give (num_frames, or max_frames when
    sampling by fps); None when frames keep their decoded size (unknown before decoding)."""
    if video.size is None:
        return None
    frames = video.num_frames if video.num_frames is not None else video.max_frames
    # One temporal patch's tokens, measured on the adapter itself (no family knowledge here).
    one = adapter.preprocess(np.zeros((1, video.size, video.size, 3), np.uint8), np.zeros(1))
    probe = adapter.preprocess(np.zeros((2, video.size, video.size, 3), np.uint8), np.arange(2.0))
    frames_per_patch = 2 // adapter.temporal_length(probe)
    return math.ceil(frames / frames_per_patch) * adapter.num_visual_tokens(one)


def rows_over_context(
    adapter: VLMAdapter,
    samples: list[Sample],
    video: VideoConfig,
    new_tokens: int | Callable[[Sample], int],
    where: Callable[[Sample], str],
) -> list[str]:
    """Rows whose prompt plus `new_tokens` (generated, or target tokens for SFT) exceed the
    context: one message per row, naming it."""
    limit = context_length(adapter)
    if limit is None:
        return []
    num_visual = visual_tokens(adapter, video) or 0
    over = []
    for s in samples:
        extra = new_tokens(s) if callable(new_tokens) else new_tokens
        if num_visual + extra > limit:
            prompt = num_visual  # over whatever the text: skip tokenising it
        else:
            prompt = len(adapter.build_prompt(question_text(s), num_visual).input_ids)
        if prompt + extra > limit:
            over.append(
                f"{where(s)}: the prompt ({prompt} tokens, {num_visual} of them visual) plus {extra} new tokens "
                f"exceeds the model's context of {limit}; shorten the question or use fewer frames or a smaller size"
            )
    return over


def check_rows_fit(
    adapter: VLMAdapter,
    samples: list[Sample],
    video: VideoConfig,
    new_tokens: int | Callable[[Sample], int],
    where: Callable[[Sample], str],
) -> None:
    """DataError listing the first rows that do not fit (see `rows_over_context`)."""
    over = rows_over_context(adapter, samples, video, new_tokens, where)
    if over:
        listed = "\n".join(over[:5])
        raise DataError(f"{len(over)} of {len(samples)} rows do not fit the model's context:\n{listed}")
