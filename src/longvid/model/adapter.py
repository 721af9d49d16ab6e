"""The VLM adapter protocol and the data it passes around.

A model family is one file in `model/` implementing `VLMAdapter`; nothing else in longvid names a
model family. Every consumer of a video (SFT, rollout, policy and reference passes, evaluation)
goes through the same three steps, so their inputs are identical by construction:

    visual = adapter.encode(adapter.preprocess(frames))   # once per video
    prompt = adapter.build_prompt(question, visual)        # the model's own chat template
    embeds, positions = adapter.prefix_inputs(prompt, visual)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class VideoInputs:
    """Model-ready pixels of one video (for Qwen2.5-VL: flattened patches and their grid)."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor  # [1, 3] temporal, height, width in patches
    seconds_per_grid: float  # seconds spanned by one temporal patch


@dataclass
class VisualEmbeds:
    """A video's embeddings in the LLM's input space plus what is needed to place them."""

    embeds: torch.Tensor  # [N_vis, D]
    grid_thw: torch.Tensor  # [1, 3]
    seconds_per_grid: float

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    def detach(self) -> "VisualEmbeds":
        return VisualEmbeds(self.embeds.detach(), self.grid_thw, self.seconds_per_grid)

    def to(self, *args: Any, **kwargs: Any) -> "VisualEmbeds":
        return VisualEmbeds(self.embeds.to(*args, **kwargs), self.grid_thw, self.seconds_per_grid)


@dataclass
class Prompt:
    """Token ids with the span where the visual embeddings go."""

    input_ids: torch.Tensor  # [S] long
    visual_mask: torch.Tensor  # [S] bool

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class VLMAdapter(Protocol):
    """What longvid needs from a vision-language model."""

    model: torch.nn.Module
    tokenizer: Any

    @property
    def eos_token_ids(self) -> list[int]: ...

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters by role: "vision", "projector", "llm" (for stage-wise freezing)."""

    hidden_size: int
    attention_heads: tuple[int, int]  # (query heads, key/value heads) of the language model

    def visual_token_count(self, temporal: int, height: int, width: int) -> int:
        """LLM tokens of a video with this patch grid."""

    def language_attention(self, name: str) -> Any:
        """Context manager: the language model uses attention implementation `name` inside it."""

    def preprocess(self, pixels: torch.Tensor | Any, timestamps: Any) -> VideoInputs:
        """uint8 frames `[T, H, W, 3]` and their timestamps → model-ready pixels."""

    def encode(self, video: VideoInputs, *, chunk_patches: int | None = None) -> VisualEmbeds:
        """Run the vision tower (with gradients if its parameters require them); with
        `chunk_patches`, that many temporal units per call (exact, bounds memory)."""

    def temporal_length(self, video: VideoInputs) -> int:
        """How many temporal units the video has: the pieces its encoder treats independently, so
        frame-sharded encoding may split between any two of them."""

    def slice_temporal(self, video: VideoInputs, start: int, stop: int) -> VideoInputs:
        """Temporal units `[start, stop)` of a video (for frame-sharded encoding)."""

    def num_visual_tokens(self, video: VideoInputs) -> int:
        """LLM tokens the encoder makes of `video` (without running it)."""

    def layers(self) -> dict[str, list[torch.nn.Module]]:
        """The repeated blocks by role, for FSDP wrapping and activation checkpointing:
        "vision" (encoder blocks) and "llm" (decoder layers)."""

    def entry_modules(self) -> list[torch.nn.Module]:
        """The modules the adapter calls directly (each call is one forward entry): with `layers()`
        they cover every parameter, so FSDP can shard each as a unit that gathers on its own call."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Text of generated token ids (special tokens dropped)."""

    def build_prompt(self, question: str, visual: VisualEmbeds) -> Prompt:
        """Chat-template the question with the video and a generation prompt."""

    def response_ids(self, text: str) -> torch.Tensor:
        """Token ids of an assistant response, ending with the end-of-turn token."""

    def prefix_inputs(self, prompt: Prompt, visual: VisualEmbeds) -> tuple[torch.Tensor, torch.Tensor]:
        """`inputs_embeds [S, D]` with the visual embeddings spliced in, and the positions `[..., S]`.

        Positions are opaque to family-neutral code except for one rule: their LAST dimension is the
        sequence (Qwen's 3-D rotary ids are `[3, S]`). Callers concatenate them along dim -1, index
        them as `positions[..., idx]`, and add the batch dimension as `positions.unsqueeze(-2)`."""

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Text token embeddings `[..., D]`."""

    def continuation_positions(self, prefix_positions: torch.Tensor, length: int) -> torch.Tensor:
        """Positions `[..., length]` of text that follows a prefix (a response), as generation places it."""

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        **attention_kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """Final hidden states `[B, S, D]` (and the updated KV cache, a transformers `Cache`) for
        positions `[..., B, S]`; `attention_kwargs` reach every
        attention call (e.g. `sharded_mask` for sequence parallelism)."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head."""
