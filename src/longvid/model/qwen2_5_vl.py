"""Qwen2.5-VL through Hugging Face transformers, behind the `VLMAdapter` protocol.

We patchify frames ourselves (the Hugging Face video processor needs torchvision, which has no CPU
build) and delegate 3-D rotary positions to the model's own `get_rope_index`, so positions are
exactly what the installed model computes. Text that follows the prompt (a response) continues one
past the prompt's last token, as both Hugging Face `generate` and a forward over prompt + response
place it (in transformers 5.x text after a video no longer starts past the video's largest temporal
position, so "largest position + 1" would disagree); rollout and training both use this rule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .adapter import Prompt, VideoInputs, VisualEmbeds

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
MAX_PIXELS_PER_FRAME = 16384 * 28 * 28  # beyond this a frame is surely a mistake


class Qwen25VLAdapter:
    """Adapter for `Qwen2_5_VLForConditionalGeneration` (or a peft model wrapping it)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, system_prompt: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError("the tokenizer has no chat template; longvid builds prompts from the model's own template")
        config = self.hf.config
        vision = config.vision_config
        self.patch_size = vision.patch_size
        self.temporal_patch_size = vision.temporal_patch_size
        self.merge_size = vision.spatial_merge_size
        self.video_token_id = config.video_token_id
        if tokenizer.convert_tokens_to_ids("<|video_pad|>") != self.video_token_id:
            raise ConfigError("tokenizer and model disagree on the id of <|video_pad|>")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> "Qwen25VLAdapter":
        """Load a local checkpoint folder (`save_pretrained` layout, safetensors)."""
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a model folder (no config.json)")
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(path),
            dtype=dtype,
            attn_implementation=attn_implementation,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = _processor_chat_template(path)
        return cls(model, tokenizer, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))

    @property
    def hf(self) -> torch.nn.Module:
        """The underlying Hugging Face model (unwrapping peft)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if callable(get_base) else self.model

    @property
    def device(self) -> torch.device:
        return self.hf.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.lm_head.weight.dtype

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.hf.generation_config.eos_token_id if self.hf.generation_config is not None else None
        eos = eos if eos is not None else self.hf.config.text_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        return sorted({int(i) for i in ids} | ({im_end} if im_end is not None else set()))

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters by stage role: vision tower, projector (patch merger), language model."""
        visual = self.hf.model.visual
        projector = list(visual.merger.parameters())
        projector_ids = {id(p) for p in projector}
        return {
            "vision": [p for p in visual.parameters() if id(p) not in projector_ids],
            "projector": projector,
            "llm": list(self.hf.model.language_model.parameters()) + list(self.hf.lm_head.parameters()),
        }

    @property
    def hidden_size(self) -> int:
        return self.hf.config.text_config.hidden_size

    @property
    def attention_heads(self) -> tuple[int, int]:
        """(query heads, key/value heads) of the language model."""
        text = self.hf.config.text_config
        return text.num_attention_heads, text.num_key_value_heads

    def visual_token_count(self, temporal: int, height: int, width: int) -> int:
        """LLM tokens of a video with this patch grid."""
        return temporal * height * width // self.merge_size**2

    @contextlib.contextmanager
    def language_attention(self, name: str):
        """Run the language model with attention implementation `name` (the vision tower keeps its own)."""
        previous = self.hf.config.text_config._attn_implementation
        self.hf.set_attn_implementation({"text_config": name})
        try:
            yield
        finally:
            self.hf.set_attn_implementation({"text_config": previous})

    # -- video ----------------------------------------------------------------------------------

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """The size frames are resized to: multiples of patch*merge, aspect kept."""
        factor = self.patch_size * self.merge_size
        h = max(factor, round(height / factor) * factor)
        w = max(factor, round(width / factor) * factor)
        return h, w

    def preprocess(self, pixels: torch.Tensor | np.ndarray, timestamps: Any = None) -> VideoInputs:
        """uint8 `[T, H, W, 3]` → flattened patches `[grid_t*grid_h*grid_w, 3*tps*p*p]` in Qwen's order."""
        frames = torch.as_tensor(np.asarray(pixels) if not torch.is_tensor(pixels) else pixels)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected frames of shape [T, H, W, 3] with T > 0, got {tuple(frames.shape)}")
        t, height, width, _ = frames.shape
        if height * width > MAX_PIXELS_PER_FRAME:
            raise ValueError(f"frames of {height}x{width} are too large; resize them when decoding")
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        h, w = self.frame_size(height, width)
        if (h, w) != (height, width):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
        tps, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -t % tps:
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        gt, gh, gw = x.shape[0] // tps, h // p, w // p
        x = x.view(gt, tps, 3, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, 3 * tps * p * p)
        return VideoInputs(
            pixel_values=x.to(self.dtype),
            grid_thw=torch.tensor([[gt, gh, gw]]),
            seconds_per_grid=_seconds_per_grid(timestamps, t, tps),
        )

    def encode(self, video: VideoInputs, *, chunk_patches: int | None = None) -> VisualEmbeds:
        """Run the vision tower. With `chunk_patches`, encode that many temporal patches at a time:
        exact, because Qwen2.5-VL's vision attention never crosses a temporal patch."""
        visual = self.hf.model.visual
        gt, gh, gw = (int(v) for v in video.grid_thw[0])
        pixels = video.pixel_values.to(self.device, visual.dtype)
        step = gt if not chunk_patches else max(1, chunk_patches)
        rows = gh * gw
        parts = []
        for start in range(0, gt, step):
            n = min(step, gt - start)
            grid = torch.tensor([[n, gh, gw]], device=self.device)
            out = visual(pixels[start * rows : (start + n) * rows], grid_thw=grid)
            parts.append(out.pooler_output)
        embeds = parts[0] if len(parts) == 1 else torch.cat(parts)
        return VisualEmbeds(embeds, video.grid_thw.clone(), video.seconds_per_grid)

    def temporal_length(self, video: VideoInputs) -> int:
        return int(video.grid_thw[0, 0])

    def slice_temporal(self, video: VideoInputs, start: int, stop: int) -> VideoInputs:
        _, gh, gw = (int(v) for v in video.grid_thw[0])
        rows = gh * gw
        grid = torch.tensor([[stop - start, gh, gw]])
        return VideoInputs(video.pixel_values[start * rows : stop * rows], grid, video.seconds_per_grid)

    def num_visual_tokens(self, video: VideoInputs) -> int:
        return self.visual_token_count(*(int(v) for v in video.grid_thw[0]))

    def layers(self) -> dict[str, list[torch.nn.Module]]:
        return {"vision": list(self.hf.model.visual.blocks), "llm": list(self.hf.model.language_model.layers)}

    def entry_modules(self) -> list[torch.nn.Module]:
        model = self.hf.model
        return [model.visual, model.get_input_embeddings(), model.language_model, self.hf.lm_head]

    # -- text -----------------------------------------------------------------------------------

    def build_prompt(self, question: str, visual: VisualEmbeds | int) -> Prompt:
        num_visual = visual if isinstance(visual, int) else visual.num_tokens
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(VIDEO_PLACEHOLDER) != 1:
            raise ConfigError("the chat template must render exactly one video placeholder for one video")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        slot = ids.index(self.video_token_id)
        ids = ids[:slot] + [self.video_token_id] * num_visual + ids[slot + 1 :]
        input_ids = torch.tensor(ids, dtype=torch.long)
        return Prompt(input_ids=input_ids, visual_mask=input_ids == self.video_token_id)

    def response_ids(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf.model.get_input_embeddings()(ids.to(self.device))

    def prefix_inputs(self, prompt: Prompt, visual: VisualEmbeds) -> tuple[torch.Tensor, torch.Tensor]:
        if int(prompt.visual_mask.sum()) != visual.num_tokens:
            raise ValueError(
                f"prompt has {int(prompt.visual_mask.sum())} video slots but the video has {visual.num_tokens} tokens"
            )
        ids = prompt.input_ids.to(self.device)
        embeds = self.embed_tokens(ids)
        mask = prompt.visual_mask.to(self.device)
        embeds = embeds.masked_scatter(mask[:, None], visual.embeds.to(embeds.dtype))
        return embeds, self.positions(prompt, visual)

    def positions(self, prompt: Prompt, visual: VisualEmbeds) -> torch.Tensor:
        """3-D rotary positions `[3, S]` of the prompt, by the model's own `get_rope_index`."""
        ids = prompt.input_ids[None].to(self.device)
        token_types = (prompt.visual_mask[None] * 2).to(self.device, torch.int)
        pos, _ = self.hf.model.get_rope_index(
            ids,
            mm_token_type_ids=token_types,
            video_grid_thw=visual.grid_thw.to(self.device),
            second_per_grid_ts=torch.tensor([visual.seconds_per_grid], device=self.device),
        )
        return pos[:, 0]

    def continuation_positions(self, prefix_positions: torch.Tensor, length: int) -> torch.Tensor:
        start = int(prefix_positions[:, -1].max()) + 1
        return (torch.arange(length, device=prefix_positions.device) + start).expand(3, -1)

    # -- language model ------------------------------------------------------------------------

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: Any = None,
        cache: Any = None,
        use_cache: bool = False,
        **attention_kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """`inputs_embeds [B, S, D]`, `position_ids [3, B, S]`; `attention_mask` is None (causal) or a
        prepared mask (bool `[B, 1, S, K]` for SDPA, a `BlockMask` for flex) used as is.
        `attention_kwargs` reach every attention call (e.g. `sharded_mask` for sequence parallelism)."""
        if attention_mask is not None and not isinstance(attention_mask, dict):
            attention_mask = {"full_attention": attention_mask}
        out = self.hf.model.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            **attention_kwargs,
        )
        return out.last_hidden_state, out.cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hf.lm_head(hidden)


def _seconds_per_grid(timestamps: Any, num_frames: int, temporal_patch_size: int) -> float:
    """Seconds one temporal patch spans, from the sampled frames' timestamps (1 s per frame if unknown)."""
    if timestamps is None or num_frames < 2:
        return float(temporal_patch_size)
    ts = np.asarray(timestamps, dtype=np.float64)
    span = float(ts[-1] - ts[0])
    if not math.isfinite(span) or span <= 0:
        return float(temporal_patch_size)
    return temporal_patch_size * span / (num_frames - 1)


def _processor_chat_template(path: Path) -> str | None:
    """Real Qwen checkpoints keep the chat template beside the processor, not the tokenizer."""
    for name in ("chat_template.jinja", "chat_template.json"):
        file = path / name
        if file.is_file():
            text = file.read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
