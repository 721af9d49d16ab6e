"""Qwen2.5-VL through Hugging Face transformers (`Qwen2_5_VLForConditionalGeneration`).

What differs from the Qwen base: the temporal rotary ids are spaced by the video's real frame rate,
so `get_rope_index` also takes the seconds one temporal patch spans.
"""

from __future__ import annotations

import torch

from .adapter import VisualEmbeds
from .qwen_base import QwenVLAdapter


class Qwen25VLAdapter(QwenVLAdapter):
    """Adapter for `Qwen2_5_VLForConditionalGeneration` (or a peft model wrapping it)."""

    hf_class = "Qwen2_5_VLForConditionalGeneration"

    def rope_inputs(self, visuals: list[VisualEmbeds]) -> dict[str, torch.Tensor]:
        seconds = torch.tensor([v.seconds_per_grid for v in visuals], device=self.device)
        return {"second_per_grid_ts": seconds}
