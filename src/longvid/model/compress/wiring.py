"""Summary tokens wired into callers: inference at one ratio (`Compressor`, for evaluation and
serving) and training (`TrainingCompression`, for the SFT and GRPO trainers)."""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from ...errors import ConfigError
from ..adapter import VLMAdapter
from .forward import continuation_logprobs, sample, sp_hidden_states, windowed_prefill
from .layout import Layout, interleave
from .summary import PARAMS_FILE, CompressConfig, SummaryTokens

log = logging.getLogger(__name__)


def summary_tokens_for(
    adapter: VLMAdapter, model_path: str | None, ratios: Sequence[int], untrained_window: int | None
) -> SummaryTokens | None:
    """The summary tokens saved beside the checkpoint, or fresh untrained ones when asked; None
    when no ratio compresses."""
    bad = [r for r in ratios if r < 1]
    if bad:
        raise ConfigError(f"compression ratios must be >= 1 (1 = off), got {bad}")
    compressing = sorted({r for r in ratios if r != 1})
    if not compressing:
        return None
    if untrained_window:
        return SummaryTokens.from_adapter(adapter, ratios=compressing, window=untrained_window).attach(adapter)
    if model_path is None:
        raise ConfigError(f"compression ratio(s) {compressing} need the {PARAMS_FILE} trained beside a model "
                          "(--model); train with compress.ratios, or pass --untrained-summary WINDOW to try fresh ones")
    return SummaryTokens.load(model_path, adapter).attach(adapter)


def compressor_for(adapter: VLMAdapter, model_path: str | None, ratio: int) -> "Compressor | None":
    """Inference at one ratio with the summary tokens trained beside `model_path`; None at ratio 1."""
    if ratio == 1:
        return None
    return Compressor(summary_tokens_for(adapter, model_path, [ratio], None), ratio)


@dataclasses.dataclass
class Compressor:
    """Inference with one ratio: what evaluation and rollout call for a prompt. `summary` may be
    None only with ratio 1 (no compression: the prompt runs as today)."""

    summary: SummaryTokens | None
    ratio: int = 1

    def __post_init__(self) -> None:
        if self.summary is not None:
            self.summary.check_inference_ratio(self.ratio)
        elif self.ratio != 1:
            raise ConfigError(f"compression ratio {self.ratio} needs trained summary tokens (none loaded)")

    def layout(self, prompt: Any, embeds: torch.Tensor, positions: torch.Tensor) -> Layout:
        window = self.summary.window if self.summary is not None else max(1, int(prompt.visual_mask.sum()))
        embedding = self.summary.embedding if self.summary is not None else None
        return interleave(embeds, positions, prompt.visual_mask.to(embeds.device), embedding, self.ratio, window)

    def sample(self, adapter: VLMAdapter, prompt: Any, embeds: torch.Tensor, positions: torch.Tensor, num_samples: int, config: Any, **kwargs: Any):
        return sample(adapter, self.layout(prompt, embeds, positions), num_samples, config, **kwargs)

    @torch.no_grad()
    def score(self, adapter: VLMAdapter, prompt: Any, embeds: torch.Tensor, positions: torch.Tensor, candidates: list[torch.Tensor]) -> torch.Tensor:
        """Log-likelihood of each candidate response after the compressed prompt."""
        return continuation_logprobs(adapter, windowed_prefill(adapter, self.layout(prompt, embeds, positions)), candidates)


class TrainingCompression:
    """What a trainer needs to train with summary tokens: the summary parameters hooked into the
    model (fresh, or those trained beside the starting checkpoint), a ratio drawn per window from
    `config.ratios`, the compressed forward and its labels, and the parameters' save/restore
    beside the trainer's checkpoints and final export."""

    STATE_KEY = "summary_tokens"

    def __init__(self, adapter: VLMAdapter, config: CompressConfig, *, start: str | Path | None = None):
        config.validate()
        self.ratios = tuple(config.ratios)  # drawn from; the summary module records every ratio trained
        self.summary = starting_summary(adapter, config, start).attach(adapter)

    def draw_ratios(self, num_visual: int, rng: random.Random) -> list[int]:
        """One of this run's ratios per window, from `rng` (the trainer's stream of this sample:
        a function of seed, step and place in the global batch, so any mesh draws alike)."""
        return self.summary.draw_ratios(num_visual, rng, self.ratios)

    def prefix_layout(self, prompt: Any, embeds: torch.Tensor, positions: torch.Tensor, rng: random.Random) -> Layout:
        """The compressed prompt `[S', D]` of a rollout: ratios drawn per window from `rng`."""
        ratios = self.draw_ratios(int(prompt.visual_mask.sum()), rng)
        return interleave(embeds, positions, prompt.visual_mask.to(embeds.device), self.summary.embedding, ratios, self.summary.window)

    def hidden_states(
        self, sp: Any, prompt: Any, embeds: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor, rng: random.Random
    ):
        """This rank's hidden states and shifted labels of `[prompt | response]` compressed (one
        forward under the visual-summary mask; a ratio drawn per window from `rng`)."""
        visual = torch.zeros(len(embeds), dtype=torch.bool, device=embeds.device)
        visual[: len(prompt)] = prompt.visual_mask.to(embeds.device)
        ratios = self.draw_ratios(int(visual.sum()), rng)
        layout = interleave(embeds, positions, visual, self.summary.embedding, ratios, self.summary.window, labels)
        return sp_hidden_states(sp, layout), sp.shard(layout.labels, pad_value=-100)

    def extra_state(self) -> dict:
        return {self.STATE_KEY: {k: v.detach().cpu() for k, v in self.summary.state_dict().items()}}

    def load_extra_state(self, state: dict) -> None:
        if self.STATE_KEY not in state:
            raise ConfigError("the checkpoint holds no summary-token state: it was saved without compression")
        self.summary.load_state_dict(state[self.STATE_KEY])

    def save_beside(self, checkpoint: Path | None) -> None:
        """`summary_tokens.safetensors` next to the checkpoint's `model/` folder contents."""
        if checkpoint is not None:
            self.summary.save(Path(checkpoint) / "model")


def starting_summary(adapter: VLMAdapter, config: CompressConfig, start: str | Path | None) -> SummaryTokens:
    """The summary parameters a training run starts from: those saved beside the starting
    checkpoint `start` when it has them (every ratio asked for must be one they were trained
    with, and the window the same), else fresh ones (`SummaryTokens.from_adapter`)."""
    if start is None or not (Path(start) / PARAMS_FILE).is_file():
        return SummaryTokens.from_adapter(adapter, ratios=config.ratios, window=config.window)
    loaded = SummaryTokens.load(start, adapter)
    untrained = [r for r in config.ratios if r != 1 and r not in loaded.ratios]
    if untrained:
        raise ConfigError(f"compress.ratios: ratio(s) {untrained} were not trained with the summary tokens in {start} "
                          f"(trained: {list(loaded.ratios)}, or 1: off)")
    if loaded.window != config.window:
        raise ConfigError(f"compress.window={config.window}, but the summary tokens in {start} were trained with "
                          f"windows of {loaded.window} visual tokens: set compress.window={loaded.window}")
    log.info("summary tokens from %s (trained ratios %s); this run draws from %s", start, list(loaded.ratios), list(config.ratios))
    return loaded
