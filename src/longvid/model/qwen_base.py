"""What the Qwen vision-language families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) truly share.

All three take videos as flattened `temporal_patch_size x patch x patch` patches ordered for a
`merge x merge` spatial merge, build prompts from the checkpoint's chat template with
`<|vision_start|><|video_pad|><|vision_end|>` per video, place tokens with 3-D rotary positions
computed by the model's own `get_rope_index`, and run a Hugging Face decoder with an LM head and
a transformers `Cache`. A family file subclasses `QwenVLAdapter` and overrides the few hooks where
it differs (normalisation constants, the text around a video, extra `get_rope_index` inputs, extra
inputs of the language model).

We patchify frames ourselves (the Hugging Face video processors need torchvision, which has no CPU
build); tests prove the patches equal Hugging Face's image processor and the logits equal the
model's own forward. Text that follows the prompt (a response) continues one past the prompt's last
token, as a forward over prompt + response places it (in transformers 5.x text after a long video no
longer starts past the video's largest temporal position, so "largest position + 1" would disagree
with the forward); rollout and training both use this rule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .adapter import Prompt, VideoInputs, VisualEmbeds

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_PAD = "<|video_pad|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
MAX_PIXELS_PER_FRAME = 16384 * 28 * 28  # beyond this a frame is surely a mistake
ROPE_ROWS = 3  # temporal, height, width


def as_list(visual: VisualEmbeds | list[VisualEmbeds]) -> list[VisualEmbeds]:
    return list(visual) if isinstance(visual, (list, tuple)) else [visual]


class QwenVLAdapter:
    """A Qwen `...ForConditionalGeneration` (or a peft model wrapping it) behind `VLMAdapter`."""

    hf_class: ClassVar[str]  # the transformers class a checkpoint of this family loads into
    image_mean: ClassVar[tuple[float, float, float]] = CLIP_MEAN
    image_std: ClassVar[tuple[float, float, float]] = CLIP_STD
    deepstack_layers: int = 0
    # Whether the text model takes a prepared mask as {"full_attention": mask} (it skips its own
    # mask creation then) or as the tensor itself (which `create_causal_mask` passes through).
    mask_by_layer_type: ClassVar[bool] = True

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
        if tokenizer.convert_tokens_to_ids(VIDEO_PAD) != self.video_token_id:
            raise ConfigError(f"tokenizer and model disagree on the id of {VIDEO_PAD}")

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
    ) -> "QwenVLAdapter":
        """Load a local checkpoint folder (`save_pretrained` layout, safetensors)."""
        import transformers

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a model folder (no config.json)")
        model = getattr(transformers, cls.hf_class).from_pretrained(
            str(path),
            dtype=dtype,
            attn_implementation=attn_implementation,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
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
        """Parameters by stage role: vision tower, projector (patch mergers), language model."""
        visual = self.hf.model.visual
        projector = list(visual.merger.parameters())
        for merger in getattr(visual, "deepstack_merger_list", []):
            projector += list(merger.parameters())
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

    def layers(self) -> dict[str, list[torch.nn.Module]]:
        return {"vision": list(self.hf.model.visual.blocks), "llm": list(self.hf.model.language_model.layers)}

    def entry_modules(self) -> list[torch.nn.Module]:
        model = self.hf.model
        return [model.visual, model.get_input_embeddings(), model.language_model, self.hf.lm_head]

    # -- video ----------------------------------------------------------------------------------

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """The size frames are resized to: multiples of patch*merge, aspect kept."""
        factor = self.patch_size * self.merge_size
        h = max(factor, round(height / factor) * factor)
        w = max(factor, round(width / factor) * factor)
        return h, w

    def preprocess(self, pixels: torch.Tensor | np.ndarray, timestamps: Any = None) -> VideoInputs:
        """uint8 `[T, H, W, 3]` → flattened patches `[grid_t*grid_h*grid_w, 3*tps*p*p]` in Qwen's order.

        Without timestamps, frames are taken to be one second apart."""
        frames = torch.as_tensor(np.asarray(pixels) if not torch.is_tensor(pixels) else pixels)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected frames of shape [T, H, W, 3] with T > 0, got {tuple(frames.shape)}")
        t, height, width, _ = frames.shape
        if height * width > MAX_PIXELS_PER_FRAME:
            raise ValueError(f"frames of {height}x{width} are too large; resize them when decoding")
        times = _frame_times(timestamps, t)
        x = frames.permute(0, 3, 1, 2).float().div_(255.0)
        h, w = self.frame_size(height, width)
        if (h, w) != (height, width):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        x = (x - mean) / std
        tps, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -t % tps:  # the processors repeat the last frame
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
            times = np.concatenate([times, np.repeat(times[-1:], pad)])
        gt, gh, gw = x.shape[0] // tps, h // p, w // p
        x = x.view(gt, tps, 3, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, 3 * tps * p * p)
        # A temporal patch is stamped with the mean of its first and last frame (Qwen3-VL's processor).
        patch_times = tuple(float((times[i] + times[i + tps - 1]) / 2) for i in range(0, len(times), tps))
        return VideoInputs(
            pixel_values=x.to(self.dtype),
            grid_thw=torch.tensor([[gt, gh, gw]]),
            seconds_per_grid=_seconds_per_grid(timestamps, t, tps),
            patch_times=patch_times,
        )

    def encode(self, video: VideoInputs, *, chunk_patches: int | None = None) -> VisualEmbeds:
        """Run the vision tower. With `chunk_patches`, encode that many temporal patches at a time:
        exact, because Qwen's vision attention never crosses a temporal patch."""
        visual = self.hf.model.visual
        gt, gh, gw = (int(v) for v in video.grid_thw[0])
        pixels = video.pixel_values.to(self.device, visual.dtype)
        step = gt if not chunk_patches else max(1, chunk_patches)
        rows = gh * gw
        parts, layers = [], []
        for start in range(0, gt, step):
            n = min(step, gt - start)
            grid = torch.tensor([[n, gh, gw]], device=self.device)
            out = visual(pixels[start * rows : (start + n) * rows], grid_thw=grid)
            parts.append(out.pooler_output)
            layers.append(getattr(out, "deepstack_features", None) or [])
        deepstack = [torch.cat(per_layer) for per_layer in zip(*layers)] or None
        return video.embedded(torch.cat(parts) if len(parts) > 1 else parts[0], deepstack)

    def temporal_length(self, video: VideoInputs) -> int:
        return int(video.grid_thw[0, 0])

    def slice_temporal(self, video: VideoInputs, start: int, stop: int) -> VideoInputs:
        _, gh, gw = (int(v) for v in video.grid_thw[0])
        rows = gh * gw
        grid = torch.tensor([[stop - start, gh, gw]])
        times = None if video.patch_times is None else video.patch_times[start:stop]
        return VideoInputs(video.pixel_values[start * rows : stop * rows], grid, video.seconds_per_grid, times)

    def num_visual_tokens(self, video: VideoInputs) -> int:
        return self.visual_token_count(*(int(v) for v in video.grid_thw[0]))

    # -- text -----------------------------------------------------------------------------------

    def video_spans(self, visual: VisualEmbeds) -> tuple[str, list[int]]:
        """The text that stands for one video in the prompt, with one `<|video_pad|>` per visual
        span, and the number of visual tokens each span holds. Qwen2/2.5-VL: one span."""
        return VIDEO_PLACEHOLDER, [visual.num_tokens]

    def build_prompt(self, question: str, visual: VisualEmbeds | int | list[VisualEmbeds]) -> Prompt:
        """The chat template's text with the videos before the question; `visual` may be a token
        count (one video of that many tokens, for checks that need no encoder)."""
        if isinstance(visual, int):
            spans = [(VIDEO_PLACEHOLDER, [visual])]
        else:
            spans = [self.video_spans(v) for v in as_list(visual)]
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        content = [{"type": "video"} for _ in spans] + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pieces = text.split(VIDEO_PLACEHOLDER)
        if len(pieces) != len(spans) + 1 or VIDEO_PAD in question:
            raise ConfigError(
                f"the chat template must render {VIDEO_PLACEHOLDER} once per video ({len(spans)}) "
                "and the question may not contain it"
            )
        text = pieces[0] + "".join(video_text + piece for (video_text, _), piece in zip(spans, pieces[1:]))
        counts = [n for _, per_span in spans for n in per_span]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        slots = [i for i, token in enumerate(ids) if token == self.video_token_id]
        if len(slots) != len(counts):
            raise ConfigError(f"the prompt text has {len(slots)} {VIDEO_PAD} tokens for {len(counts)} visual spans")
        expanded: list[int] = []
        last = 0
        for slot, n in zip(slots, counts):
            expanded += ids[last:slot] + [self.video_token_id] * n
            last = slot + 1
        input_ids = torch.tensor(expanded + ids[last:], dtype=torch.long)
        return Prompt(input_ids=input_ids, visual_mask=input_ids == self.video_token_id)

    def response_ids(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids + [self.tokenizer.convert_tokens_to_ids("<|im_end|>")], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf.model.get_input_embeddings()(ids.to(self.device))

    def prefix_inputs(
        self, prompt: Prompt, visual: VisualEmbeds | list[VisualEmbeds]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        visuals = as_list(visual)
        slots, tokens = int(prompt.visual_mask.sum()), sum(v.num_tokens for v in visuals)
        if slots != tokens:
            raise ValueError(f"prompt has {slots} video slots but the video(s) have {tokens} tokens")
        ids = prompt.input_ids.to(self.device)
        embeds = self.embed_tokens(ids)
        mask = prompt.visual_mask.to(self.device)
        vis = torch.cat([v.embeds for v in visuals]) if len(visuals) > 1 else visuals[0].embeds
        embeds = embeds.masked_scatter(mask[:, None], vis.to(embeds.dtype))
        return embeds, self.positions(prompt, visuals)

    def rope_inputs(self, visuals: list[VisualEmbeds]) -> dict[str, torch.Tensor]:
        """Family-specific inputs of `get_rope_index` beyond the ids and the grids."""
        return {}

    def positions(self, prompt: Prompt, visual: VisualEmbeds | list[VisualEmbeds]) -> torch.Tensor:
        """3-D rotary positions `[3, S]` of the prompt, by the model's own `get_rope_index`."""
        visuals = as_list(visual)
        ids = prompt.input_ids[None].to(self.device)
        token_types = (prompt.visual_mask[None] * 2).to(self.device, torch.int)
        grids = torch.cat([v.grid_thw for v in visuals]).to(self.device)
        pos, _ = self.hf.model.get_rope_index(
            ids, mm_token_type_ids=token_types, video_grid_thw=grids, **self.rope_inputs(visuals)
        )
        return pos[:, 0]

    def continuation_positions(self, prefix_positions: torch.Tensor, length: int) -> torch.Tensor:
        start = int(prefix_positions[:ROPE_ROWS, -1].max()) + 1
        return (torch.arange(length, device=prefix_positions.device) + start).expand(ROPE_ROWS, -1)

    def concat_sequences(
        self, positions: list[torch.Tensor], deepstacks: list[list[torch.Tensor] | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        if any(d is not None for d in deepstacks):
            raise ValueError(f"{type(self).__name__} has no DeepStack features")
        return torch.cat(positions, dim=-1), None

    # -- language model ------------------------------------------------------------------------

    def language_inputs(
        self, position_ids: torch.Tensor, deepstack: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Our positions → the language model's `position_ids` and any extra inputs it takes."""
        if deepstack is not None:
            raise ValueError(f"{type(self).__name__} has no DeepStack features; got {len(deepstack)} layers of them")
        return position_ids, {}

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: Any = None,
        cache: Any = None,
        use_cache: bool = False,
        *,
        deepstack: list[torch.Tensor] | None = None,
        **attention_kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """`inputs_embeds [B, S, D]`, `position_ids [..., B, S]`; `attention_mask` is None (causal) or
        a prepared mask (bool `[B, 1, S, K]` for SDPA, a `BlockMask` for flex) used as is.
        `attention_kwargs` reach every attention call (e.g. `sharded_mask` for sequence parallelism)."""
        if attention_mask is not None and self.mask_by_layer_type and not isinstance(attention_mask, dict):
            attention_mask = {"full_attention": attention_mask}
        rope_positions, extra = self.language_inputs(position_ids, deepstack)
        out = self.hf.model.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=rope_positions,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            **extra,
            **attention_kwargs,
        )
        return out.last_hidden_state, out.cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hf.lm_head(hidden)


def _frame_times(timestamps: Any, num_frames: int) -> np.ndarray:
    """Each frame's time in seconds (one second apart when unknown or unusable)."""
    if timestamps is None:
        return np.arange(num_frames, dtype=np.float64)
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(ts) != num_frames:
        raise ValueError(f"{len(ts)} timestamps for {num_frames} frames")
    if not np.all(np.isfinite(ts)):
        raise ValueError("frame timestamps must be finite")
    return ts


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
