"""Qwen3-VL through Hugging Face transformers (`Qwen3VLForConditionalGeneration`).

What differs from the Qwen base, read from the installed transformers:
- 16-pixel patches normalised with mean = std = 0.5.
- A video is written as one span per temporal patch, each preceded by its time as text,
  `<{t:.1f} seconds><|vision_start|><|video_pad|>...<|vision_end|>`, where t is the mean time of the
  patch's first and last frame (`Qwen3VLProcessor.replace_video_token` / `_calculate_timestamps`);
  `get_rope_index` then places every frame group like an image (interleaved M-RoPE).
- DeepStack: the vision tower also returns features from a few of its layers; the language model
  adds them at the visual tokens after its first layers (`visual_pos_masks`,
  `deepstack_visual_embeds`). Our positions carry a fourth row, the index of the visual token a
  position holds (-1 for text), so the visual mask travels with the positions through packing,
  continuation and sequence sharding, and `hidden_states` picks the matching DeepStack rows.
"""

from __future__ import annotations

from typing import Any

import torch

from .adapter import Prompt, VisualEmbeds
from .qwen_base import ROPE_ROWS, VIDEO_PLACEHOLDER, QwenVLAdapter, as_list

IMAGENET_STANDARD = (0.5, 0.5, 0.5)


class Qwen3VLAdapter(QwenVLAdapter):
    """Adapter for `Qwen3VLForConditionalGeneration` (or a peft model wrapping it)."""

    hf_class = "Qwen3VLForConditionalGeneration"
    image_mean = IMAGENET_STANDARD
    image_std = IMAGENET_STANDARD
    mask_by_layer_type = False

    @property
    def deepstack_layers(self) -> int:
        return len(self.hf.config.vision_config.deepstack_visual_indexes)

    def video_spans(self, visual: VisualEmbeds) -> tuple[str, list[int]]:
        gt, gh, gw = (int(v) for v in visual.grid_thw[0])
        if visual.patch_times is None or len(visual.patch_times) != gt:
            raise ValueError(
                f"Qwen3-VL writes each temporal patch's time into the prompt; got {visual.patch_times} for {gt} patches"
            )
        text = "".join(f"<{t:.1f} seconds>{VIDEO_PLACEHOLDER}" for t in visual.patch_times)
        return text, [gh * gw // self.merge_size**2] * gt

    def positions(self, prompt: Prompt, visual: VisualEmbeds | list[VisualEmbeds]) -> torch.Tensor:
        """`[4, S]`: the 3-D rotary ids of `get_rope_index`, then each position's visual token index (-1: text)."""
        rope = super().positions(prompt, as_list(visual))
        mask = prompt.visual_mask.to(rope.device)
        index = torch.where(mask, mask.long().cumsum(0) - 1, -1)
        return torch.cat([rope, index[None]])

    def continuation_positions(self, prefix_positions: torch.Tensor, length: int) -> torch.Tensor:
        rope = super().continuation_positions(prefix_positions, length)
        return torch.cat([rope, torch.full_like(rope[:1], -1)])

    def concat_sequences(
        self, positions: list[torch.Tensor], deepstacks: list[list[torch.Tensor] | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The visual-index row of each later sequence moves past the visual tokens before it, so it
        picks its own rows of the concatenated DeepStack features."""
        rows, offset = [], 0
        for pos, deepstack in zip(positions, deepstacks, strict=True):
            index = pos[ROPE_ROWS]
            rows.append(torch.cat([pos[:ROPE_ROWS], torch.where(index >= 0, index + offset, index)[None]]))
            offset += 0 if deepstack is None else len(deepstack[0])
        present = [d for d in deepstacks if d is not None]
        deepstack = [torch.cat(layer) for layer in zip(*present)] if present else None
        return torch.cat(rows, dim=-1), deepstack

    def language_inputs(
        self, position_ids: torch.Tensor, deepstack: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        rope, index = position_ids[:ROPE_ROWS], position_ids[ROPE_ROWS]
        mask = index >= 0
        if deepstack is None:
            if bool(mask.any()):
                raise ValueError(
                    "the input holds visual tokens but no DeepStack features were passed; "
                    "give hidden_states(deepstack=visual.deepstack)"
                )
            return rope, {}
        if len(deepstack) != self.deepstack_layers:
            raise ValueError(f"expected {self.deepstack_layers} DeepStack layers, got {len(deepstack)}")
        # Even with no visual token in this (shard of the) sequence the features stay in the graph,
        # so every rank of a sequence-parallel group backpropagates through them.
        rows = index[mask]
        return rope, {"visual_pos_masks": mask, "deepstack_visual_embeds": [d[rows] for d in deepstack]}
