"""lmms-eval plugin: any longvid model inside lmms-eval, `lmms-eval --model longvid`.

    pip install 'longvid[lmms]'
    lmms-eval --model longvid --model_args pretrained=CKPT,frames=64 --tasks videomme

lmms-eval (0.7.x) finds plugin models through the `lmms_eval.models` entry-point group; ours
points at `manifest`, which names `LongvidLMM` as a "simple" model (the task's prompt text plus a
list of visual paths per request). `model_args` (comma-separated `key=value`):

- `pretrained`: a longvid/Hugging Face checkpoint folder (default: the embedded tiny model);
- `frames` (64), `fps`, `max_frames`, `size` (square side; default: decoded size): frame sampling,
  done by our PyAV decoder, as lmms-eval leaves it to the model;
- `max_new_tokens` (256) unless the task's generation kwargs say otherwise; `dtype`, `device`,
  `attn_implementation`, `trust_remote_code`;
- `video_root`: when set, every video path must resolve inside it;
- `compress_ratio`: visual-summary compression at this ratio, with the summary tokens trained
  beside `pretrained` (`generate_until` only).

`generate_until` decodes greedily (or samples when the task sets `do_sample`/`temperature`) and
cuts the text at the task's `until` strings; `loglikelihood` scores a continuation in one forward
over `[prompt | continuation]`. Images (PIL) and remote URLs are refused with a clear error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ..config import ModelConfig
from ..errors import ConfigError, VideoError
from ..inputs import with_response
from ..model import load_adapter
from ..model.common import token_logprobs
from ..model import compress
from ..model.compress import Compressor
from ..model.sampling import SamplingConfig
from ..respond import respond_to_prompt
from ..video.decode import Frames, check_sampling, decode

log = logging.getLogger(__name__)

MODEL_ID = "longvid"


def manifest():
    """The `lmms_eval.models` entry point: lmms-eval's manifest of our model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LongvidLMM")


def compressor_for(adapter: Any, pretrained: str | None, ratio: int) -> Compressor | None:
    """Visual-summary compression at `ratio` with the summary tokens trained beside `pretrained`
    (`summary_tokens.safetensors`); None at ratio 1."""
    if ratio == 1:
        return None
    if pretrained is None:
        raise ConfigError(f"compress_ratio={ratio} needs pretrained=CKPT trained with compression (summary tokens)")
    return compress.compressor_for(adapter, pretrained, ratio)


def _optional(value: Any, kind: type) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"expected a {kind.__name__}, got {value!r}") from e


class LongvidLMM(lmms):
    """One request at a time: decode its video, encode once, answer."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        frames: int | None = 64,
        fps: float | None = None,
        max_frames: int | None = None,
        size: int | None = None,
        max_new_tokens: int = 256,
        dtype: str = "auto",
        device: str | None = "auto",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        video_root: str | None = None,
        compress_ratio: int | None = None,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"unknown longvid model_args: {', '.join(sorted(unknown))}; known: pretrained, frames, fps, "
                "max_frames, size, max_new_tokens, dtype, device, attn_implementation, trust_remote_code, "
                "video_root, compress_ratio"
            )
        if batch_size not in (None, 1, "1"):
            log.warning("longvid answers one request at a time; batch_size=%s is ignored", batch_size)
        side = _optional(size, int)
        self.sampling = {
            "num_frames": _optional(frames, int),
            "fps": _optional(fps, float),
            "max_frames": _optional(max_frames, int),
            "size": (side, side) if side else None,
        }
        try:
            check_sampling(**self.sampling)
        except ValueError as e:
            raise ConfigError(f"longvid model_args: {e}") from e
        self.max_new_tokens = int(max_new_tokens)
        self.video_root = Path(video_root).resolve() if video_root else None
        path = None if pretrained in (None, "", "tiny") else str(pretrained)
        # lmms-eval passes its --device ("cuda:0", "cuda", "cpu"); our config picks the GPU itself.
        device = "cuda" if str(device or "auto").startswith("cuda") else str(device or "auto")
        self.adapter = load_adapter(
            ModelConfig(path=path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                        trust_remote_code=bool(trust_remote_code))
        )
        self.adapter.model.eval()
        self.compressor = compressor_for(self.adapter, path, _optional(compress_ratio, int) or 1)

    # -- requests ---------------------------------------------------------------------------------

    def _unpack(self, request: Instance) -> tuple[list[Any], Any, Frames]:
        """(leading args, doc, frames) of a request whose args end (…, doc_to_visual, doc_id, task, split)."""
        *head, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if callable(doc_to_visual) else doc_to_visual
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) != 1 or not isinstance(visuals[0], (str, Path)):
            kinds = ", ".join(type(v).__name__ for v in visuals) or "none"
            raise VideoError(f"{task} doc {doc_id}: longvid takes exactly one video path per request, got {kinds}")
        return head, doc, self._decode(str(visuals[0]), f"{task} doc {doc_id}")

    def _decode(self, video: str, where: str) -> Frames:
        if "://" in video:
            raise VideoError(f"{where}: {video!r} is not a local file (remote videos are not fetched)")
        path = Path(video).resolve()
        if self.video_root is not None and not path.is_relative_to(self.video_root):
            raise VideoError(f"{where}: {video!r} is outside video_root {self.video_root}")
        return decode(path, **self.sampling)

    def _config(self, kwargs: dict[str, Any]) -> SamplingConfig:
        if int(kwargs.get("num_beams", 1) or 1) != 1:
            raise ConfigError(f"num_beams={kwargs['num_beams']}: longvid does not do beam search")
        temperature = float(kwargs.get("temperature", 0) or 0)
        if not kwargs.get("do_sample", temperature > 0):
            temperature = 0.0
        return SamplingConfig(
            max_new_tokens=int(kwargs.get("max_new_tokens") or self.max_new_tokens),
            temperature=temperature,
            top_p=float(kwargs.get("top_p") or 1.0),
        )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for request in requests:
            (context, gen_kwargs), _, frames = self._unpack(request)
            gen_kwargs = dict(gen_kwargs or {})
            config = self._config(gen_kwargs)
            text = respond_to_prompt(self.adapter, context, frames, 1, config, compressor=self.compressor)[0]
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    text = text.split(stop, 1)[0]
            out.append(text)
        return out

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        if self.compressor is not None:
            raise ConfigError("loglikelihood with compress_ratio is not supported (generate_until is)")
        out = []
        for request in requests:
            (context, target), doc, frames = self._unpack(request)
            continuation = target(doc) if callable(target) else target
            adapter = self.adapter
            ids = adapter.response_ids(str(continuation))[:-1]  # the continuation, without end-of-turn
            if len(ids) == 0:
                raise ValueError(f"{request.task_name} doc {request.doc_id}: empty continuation")
            visual = adapter.encode(adapter.preprocess(frames.pixels, frames.timestamps))
            prompt = adapter.build_prompt(context, visual)
            embeds, positions, labels = with_response(adapter, prompt, visual, ids)
            hidden, _ = adapter.hidden_states(embeds[None], positions.unsqueeze(-2))
            scored = labels != -100
            targets = labels[scored]
            picked = hidden[0][scored]
            logprob = token_logprobs(adapter, picked, targets).sum().item()
            greedy = bool((adapter.logits(picked).argmax(-1) == targets).all())
            out.append((logprob, greedy))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("longvid answers single-round tasks (generate_until, loglikelihood)")
