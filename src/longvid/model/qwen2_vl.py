"""Qwen2-VL through Hugging Face transformers (`Qwen2VLForConditionalGeneration`).

Everything is the Qwen base: CLIP-normalised 14-pixel patches, one `<|video_pad|>` span per video,
temporal rotary ids that count temporal patches (no frame-rate spacing, unlike Qwen2.5-VL).
"""

from __future__ import annotations

from .qwen_base import QwenVLAdapter


class Qwen2VLAdapter(QwenVLAdapter):
    """Adapter for `Qwen2VLForConditionalGeneration` (or a peft model wrapping it)."""

    hf_class = "Qwen2VLForConditionalGeneration"
