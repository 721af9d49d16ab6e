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
    """Model-ready pixels of one video (for Qwen: flattened patches and their grid)."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor  # [1, 3] temporal, height, width in patches
    seconds_per_grid: float  # seconds spanned by one temporal patch
    # Time (s) of each temporal patch, for families that write timestamps into the prompt (Qwen3-VL).
    patch_times: tuple[float, ...] | None = None

    def embedded(self, embeds: torch.Tensor, deepstack: list[torch.Tensor] | None = None) -> "VisualEmbeds":
        """This video's encoder output, carrying what is needed to place it."""
        return VisualEmbeds(embeds, self.grid_thw.clone(), self.seconds_per_grid, deepstack, self.patch_times)


@dataclass
class VisualEmbeds:
    """A video's embeddings in the LLM's input space plus what is needed to place them."""

    embeds: torch.Tensor  # [N_vis, D]
    grid_thw: torch.Tensor  # [1, 3]
    seconds_per_grid: float
    # Per-LLM-layer features of the same N_vis tokens, added to the hidden states after those
    # layers (Qwen3-VL's DeepStack); None for families without them.
    deepstack: list[torch.Tensor] | None = None
    patch_times: tuple[float, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> "VisualEmbeds":
        deepstack = None if self.deepstack is None else [fn(d) for d in self.deepstack]
        return VisualEmbeds(fn(self.embeds), self.grid_thw, self.seconds_per_grid, deepstack, self.patch_times)

    def detach(self) -> "VisualEmbeds":
        return self._map(torch.Tensor.detach)

    def to(self, *args: Any, **kwargs: Any) -> "VisualEmbeds":
        return self._map(lambda t: t.to(*args, **kwargs))

    @property
    def nbytes(self) -> int:
        tensors = [self.embeds] + list(self.deepstack or [])
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Prompt:
    """Token ids and where the visual embeddings go: any number of spans (several videos, or one
    video split into timestamped frame groups); the `True` entries of `visual_mask` take the visual
    tokens in order."""

    input_ids: torch.Tensor  # [S] long
    visual_mask: torch.Tensor  # [S] bool

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class VLMAdapter(Protocol):
    """What longvid needs from a vision-language model. Everything the rest of the tree calls on an
    adapter is declared here (tests/test_families.py checks every family implements all of it)."""

    model: torch.nn.Module  # what is trained and checkpointed (the HF model, or peft around it)
    tokenizer: Any

    @classmethod
    def from_pretrained(cls, path: Any, **kwargs: Any) -> "VLMAdapter":
        """Load a local checkpoint folder (`save_pretrained` layout, safetensors)."""

    def save_pretrained(self, path: Any) -> None:
        """Write the model and tokenizer so `from_pretrained` gives an identical adapter."""

    @property
    def eos_token_ids(self) -> list[int]: ...

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters by role: "vision", "projector", "llm" (for stage-wise freezing)."""

    hidden_size: int
    attention_heads: tuple[int, int]  # (query heads, key/value heads) of the language model
    deepstack_layers: int  # how many per-layer feature tensors `encode` returns (0: none)

    def visual_token_count(self, temporal: int, height: int, width: int) -> int:
        """LLM tokens of a video with this patch grid."""

    def language_attention(self, name: str) -> Any:
        """Context manager: the language model uses attention implementation `name` inside it."""

    def preprocess(self, pixels: torch.Tensor | Any, timestamps: Any) -> VideoInputs:
        """uint8 frames `[T, H, W, 3]` and their timestamps (seconds, or None) → model-ready pixels."""

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

    def build_prompt(self, question: str, visual: VisualEmbeds | list[VisualEmbeds]) -> Prompt:
        """Chat-template the question with the video(s) before it and a generation prompt."""

    def response_ids(self, text: str) -> torch.Tensor:
        """Token ids of an assistant response, ending with the end-of-turn token."""

    def prefix_inputs(
        self, prompt: Prompt, visual: VisualEmbeds | list[VisualEmbeds]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`inputs_embeds [S, D]` with the visual embeddings spliced in, and the positions `[..., S]`.

        Positions are opaque to family-neutral code except for one rule: their LAST dimension is the
        sequence (Qwen's 3-D rotary ids are `[3, S]`; Qwen3-VL adds a row that says which visual
        token each position holds). Callers concatenate them along dim -1, index them as
        `positions[..., idx]`, shard them along dim -1, and add the batch dimension as
        `positions.unsqueeze(-2)`."""

    def concat_sequences(
        self, positions: list[torch.Tensor], deepstacks: list[list[torch.Tensor] | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Positions and DeepStack features of several sequences laid end to end (packing: each
        keeps its own positions, a document mask keeps them apart)."""

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
        *,
        deepstack: list[torch.Tensor] | None = None,
        **attention_kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """Final hidden states `[B, S, D]` (and the updated KV cache, a transformers `Cache`) for
        positions `[..., B, S]`. `deepstack` is `VisualEmbeds.deepstack` of the visual tokens the
        positions refer to (required by families that have it whenever the input holds visual
        tokens; any shard of the sequence may be passed with the whole list). `attention_kwargs`
        reach every attention call (e.g. `sharded_mask` for sequence parallelism)."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head."""
