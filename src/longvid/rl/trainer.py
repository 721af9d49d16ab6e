"""GRPO for long videos: encode once, prefill once, train each group in one packed pass.

One step, in phases (`train_step`):
- rollout: each video encoded once (embedding cache), then G responses per prompt, every prompt's
  prefix prefilled once and all B x G sequences decoded in one batched loop;
- score: rewards, group advantages, optional online filtering of all-equal groups (DAPO), and the
  counts all data-parallel ranks agree on;
- optimize: per kept group one packed policy pass and one reference pass (one forward per group,
  not G), the GRPO loss and its backward; then the optimizer step (`num_iterations` times);
- record: the metrics.
Rollout and training read the same `VisualEmbeds` and `Prompt`, so the drift between rollout and
training log-probs is ~0 by construction; it is logged every step to prove it.

With `compress` (visual summary tokens, `model/compress/`) each prompt is compressed once per
step: a ratio drawn per window from `compress.ratios` (a function of seed, step and place in the
global batch, like the rollout's random stream), the rollout prefills that layout window by
window with the raw visual K/V evicted and decodes the G responses from it, and the policy and
reference passes are the packed shared-prefix passes over the same layout under the composed
mask (`shared_prefix` AND `visual_summary`). The summary parameters train with the policy (as in
SFT): they start from those saved beside `model.path` when it has them, else fresh; the
reference runs a frozen copy of the initial ones. They ride in every checkpoint (with their
optimizer state) and are saved beside each checkpoint's and the final export's model.
Compression runs under data and sequence parallelism and FSDP (the summary parameters stay
replicated, with their own optimizer: `Trainer._setup_compression`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Callable, Literal

import torch

from ..config import ModelConfig, ParallelConfig, Validated, VideoConfig
from ..data.dataset import video_identity
from ..data.schema import Sample
from ..errors import ConfigError
from ..inputs import Encoded, question_text
from ..model import compress
from ..model.adapter import VideoInputs, VisualEmbeds, VLMAdapter
from ..model.compress import CompressConfig
from ..model.sampling import SamplingConfig
from ..parallel.mesh import Mesh
from ..parallel.parallelize import parallelize
from ..seeds import derived_seed
from ..training import LoRAConfig, OptimConfig, Trainer, pack_consecutive
from ..video.decode import Frames
from ..video.sources import is_generated
from .cache import CacheKey, EmbeddingCache
from .difficulty import filter_groups
from .grpo import grpo_loss, group_advantages
from .packing import Packed, pack, pack_groups, packed_logprobs
from .rewards import RewardOutput, RewardSuite
from .rollout import Group, rollout_groups

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GRPOConfig(Validated):
    train: str = ""
    out_dir: str = "runs/grpo"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=0))
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    compress: CompressConfig | None = None  # visual summary tokens (e.g. --set compress.ratios=4)
    steps: int = 50
    batch_size: int = 2  # prompts per step
    group_size: int = 8  # G responses per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_iterations: int = 1  # optimisation passes over each batch (old log-probs stored)
    pack_tokens: int = 0  # pack a step's kept groups into forwards of at most this many tokens; 0: one group each
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    kl_ratio_correction: bool = True  # k3 * ratio, TRL 1.16's default (use_bias_correction_kl)
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    log_ratio_clamp: float | None = None
    dual_clip: float | None = None
    rewards: dict[str, float] = dataclasses.field(default_factory=lambda: {"accuracy": 0.9, "format": 0.1})
    filter_groups: bool = False  # drop groups whose rewards are all equal (DAPO's online filter)
    reference: Literal["copy", "base"] = "copy"  # frozen copy, or the base model with LoRA disabled
    train_vision: bool = False
    cache_bytes: int = 1 << 30
    cache_offload: bool = False
    save_every: int = 0
    log_every: int = 10
    seed: int = 0
    skip_bad: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not self.train or not Path(self.train).is_file():
            raise ConfigError(f"train: file not found: {self.train!r}")
        for name in ("steps", "batch_size", "group_size", "max_new_tokens", "num_iterations", "cache_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 for group-relative advantages, got {self.group_size}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 for GRPO sampling, got {self.temperature}")
        if not 0 <= self.epsilon_low < 1 or self.epsilon_high < 0:
            raise ConfigError("epsilon_low must be in [0, 1) and epsilon_high >= 0")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.pack_tokens < 0:
            raise ConfigError(f"pack_tokens must be >= 0, got {self.pack_tokens}")
        if self.pack_tokens and self.compress is not None:
            raise ConfigError("pack_tokens and compress cannot be combined: a compressed group's pass takes one group at a time")
        if self.reference == "base" and self.lora.rank == 0 and self.beta > 0:
            raise ConfigError("reference=base needs LoRA (lora.rank > 0): it is the model with the adapter disabled")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_new_tokens, self.temperature, self.top_p, self.top_k)


class GRPOTrainer(Trainer):
    name = "grpo"
    postfix_keys = ("reward", "accuracy", "kl", "drift")

    def __init__(
        self,
        adapter: VLMAdapter,
        config: GRPOConfig,
        samples: list[Sample],
        load_frames: Callable[[Sample], Frames],
        mesh: Mesh | None = None,
        video_key: Callable[[Sample], str] | None = None,
    ):
        # The reference is taken before LoRA wraps the model: a frozen copy of the starting policy.
        self.reference = None
        if config.beta > 0 and config.reference == "copy":
            self.reference = copy.copy(adapter)
            self.reference.model = copy.deepcopy(adapter.model).eval().requires_grad_(False)
        frozen = not config.train_vision
        self._setup(
            adapter,
            config,
            samples,
            load_frames,
            mesh,
            freeze_vision=frozen,
            freeze_projector=frozen,
            freeze_llm=False,
            total_steps=config.steps * config.num_iterations,
        )
        mesh = self.sp.mesh
        par = config.parallel
        self.ref_sp = parallelize(self.reference, mesh, par, trainable=False) if self.reference else None
        self._setup_compression(config.compress, config.model.path, config.steps * config.num_iterations)
        # The reference compresses with the initial summary parameters, frozen (hooked into the
        # reference copy; swapped into the policy for reference=base).
        self.reference_summary = None
        if self.compression and config.beta > 0:
            self.reference_summary = self.compression.summary.frozen_copy()
            if self.reference is not None:
                self.reference_summary.attach(self.reference)
        # Without `video_key` a video's identity is a hash of its decoded pixels (decoded every step).
        self.video_key = video_key
        self.rewards = RewardSuite.from_weights(config.rewards)
        self.cache = EmbeddingCache(config.cache_bytes, offload=config.cache_offload)
        self.encoder_version = 0

    # -- one step, in phases ------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        timer = _PhaseTimer()
        groups, videos = self._rollout(self._next_batch(), timer)
        scored = self._score(groups, timer)
        stats, grad_norm = self._optimize(groups, videos, scored, timer)
        self.step += 1
        record = self._record(groups, scored, stats, grad_norm, timer)
        self.history.append(record)
        return record

    def _next_batch(self) -> list[tuple[int, Sample]]:
        """This rank's prompts with their places in the step's global batch (every rank draws the
        whole batch from the shared sample order and takes every dp_size-th)."""
        mesh = self.sp.mesh
        indices = self.sampler.take(self.config.batch_size * mesh.dp_size)
        return [(j, self.samples[indices[j]]) for j in range(mesh.dp_rank, len(indices), mesh.dp_size)]

    def _rollout(self, batch: list[tuple[int, Sample]], timer: _PhaseTimer) -> tuple[list[Group], list[VideoInputs | None]]:
        """Encode (or fetch) every prompt's video, then sample all B x G responses in one decode loop."""
        cfg = self.config
        self.adapter.model.eval()
        # Whole parameters while ranks decode (and miss the cache) independently: no FSDP collectives.
        with self.sp.full_parameters():
            with timer("encode"):
                encoded, videos = zip(*(self._encode(sample) for _, sample in batch))
            generators = [self._prompt_generator(place) for place, _ in batch]
            with timer("rollout"), torch.no_grad():
                layouts = [self._compressed_prompt(place, e) for (place, _), e in zip(batch, encoded)] if self.compression else None
                groups = rollout_groups(self.adapter, encoded, cfg.group_size, cfg.sampling, generators=generators, layouts=layouts)
        return groups, list(videos)

    def _prompt_seed(self, place: int, *stream: int) -> int:
        return derived_seed(self.config.seed, self.step, place, *stream)

    def _prompt_generator(self, place: int) -> torch.Generator:
        """The random stream of one prompt, a function of (seed, step, place in the global batch) only:
        resume needs no generator state, SP ranks of a replica sample alike, DP ranks differently,
        and a run with DP = n samples what one process with an n times larger batch samples."""
        return torch.Generator(device=self.adapter.device).manual_seed(self._prompt_seed(place))

    def _compressed_prompt(self, place: int, encoded: Encoded) -> compress.Layout:
        """The prompt with summary slots, its ratios drawn from a stream of (seed, step, place) like
        the rollout's, so every mesh (and a resumed run) compresses alike."""
        embeds, positions = self.adapter.prefix_inputs(encoded.prompt, encoded.visual)
        return self.compression.prefix_layout(encoded.prompt, embeds, positions, random.Random(self._prompt_seed(place, 1)))

    def _score(self, groups: list[Group], timer: _PhaseTimer) -> _Scored:
        """Rewards, group advantages, DAPO's filter, and the counts every rank must agree on."""
        cfg = self.config
        with timer("reward"):
            g = cfg.group_size
            rewards = self.rewards(
                [question_text(grp.encoded.sample) for grp in groups for _ in range(g)],
                [text for grp in groups for text in grp.texts],
                **{name: [_column(grp.encoded.sample, name) for grp in groups for _ in range(g)]
                   for name in ("answer", "options", "category", "id")},
            )
            advantages = self._advantages(rewards.total, g)
            keep = filter_groups(rewards.total.view(len(groups), g)) if cfg.filter_groups else torch.ones(len(groups), dtype=torch.bool)
        kept = [i for i in range(len(groups)) if keep[i]]
        tokens = sum(int(groups[i].samples.mask().sum()) for i in kept)
        if cfg.pack_tokens:
            lengths = [len(groups[i].encoded.prompt) + sum(len(r) for r in groups[i].responses) for i in kept]
            chunks = [[kept[j] for j in chunk] for chunk in pack_consecutive(lengths, cfg.pack_tokens)]
        else:
            chunks = [[i] for i in kept]
        kept_per_rank, chunks_per_rank, total_tokens = self._gather_counts(len(kept), len(chunks), tokens)
        return _Scored(rewards, advantages, kept, kept_per_rank, chunks, chunks_per_rank, total_tokens)

    def _optimize(
        self, groups: list[Group], videos: list[VideoInputs | None], scored: _Scored, timer: _PhaseTimer
    ) -> tuple[dict[str, list[float]], float]:
        """`num_iterations` optimizer steps over the kept groups, one forward/backward per chunk (a
        group, or with `pack_tokens` several groups packed into one sequence).

        Every data-parallel rank runs the same number of passes (the most chunks any rank has) and
        the same optimizer steps, whatever it filtered: a rank with fewer chunks fills up with
        zero-weight passes (zero gradient, same collectives, as FSDP needs). If no rank kept a group,
        every rank skips the update."""
        cfg = self.config
        stats: dict[str, list[float]] = {"loss": [], "kl": [], "clip": [], "drift": [], "drift_max": []}
        if scored.passes == 0:
            return stats, 0.0
        old_logps: dict[int, torch.Tensor] = {}
        grad_norm = 0.0
        self.adapter.model.train()
        for iteration in range(cfg.num_iterations):
            for slot in range(scored.passes):
                real = slot < len(scored.chunks)
                chunk = scored.chunks[slot] if real else [scored.kept[0] if scored.kept else 0]  # weighs 0
                results = self._forward_backward(chunk, groups, videos, scored, old_logps, 1.0 if real else 0.0, timer)
                if not real:
                    continue
                for i, (mask, logp, loss, metrics) in zip(chunk, results):
                    if iteration == 0:
                        # Same weights as the rollout: any difference is a bug in the input path.
                        diff = (logp - groups[i].samples.logprobs.to(logp.dtype)).abs()[mask]
                        stats["drift"].append(float(diff.mean()))
                        stats["drift_max"].append(float(diff.max()))
                        old_logps[i] = logp
                    stats["loss"].append(float(loss))
                    stats["kl"].append(float(metrics.get("kl", torch.tensor(0.0))))
                    stats["clip"].append(float(metrics.get("clip_ratio/region_mean", torch.tensor(0.0))))
            # Every rank's loss is normalised per rank (TRL's convention): average over data parallel.
            grad_norm = self.optimizer_step(dp_mean=True)
            if cfg.train_vision:
                self.encoder_version += 1  # cached embeddings of the old tower are stale now
        return stats, grad_norm

    def _forward_backward(
        self,
        chunk: list[int],
        groups: list[Group],
        videos: list[VideoInputs | None],
        scored: _Scored,
        old_logps: dict[int, torch.Tensor],
        weight: float,
        timer: _PhaseTimer,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
        """One policy and one reference pass over the chunk's groups, packed together, each group's
        GRPO loss, and the backward of `weight` x their sum. Returns per group the response mask,
        the detached log-probs, the loss and its metrics."""
        with timer("policy"):
            parts = [self._policy_inputs(groups[i], videos[i]) for i in chunk]
            packed, rows = pack_groups(self.adapter, [part[0] for part in parts])
            logp = self._logprobs(self.adapter, packed, parts[0][1], self.sp)
        with timer("reference"):
            ref_logp = self._reference_logprobs([groups[i] for i in chunk])
        with timer("backward"):
            results, total = [], 0.0
            for i, (part, _), row in zip(chunk, parts, rows):
                width = part.targets.shape[1]  # each group's loss sees exactly its own [G, L]
                mine = logp[row, :width]
                loss, metrics = self._group_loss(
                    mine, old_logps.get(i), None if ref_logp is None else ref_logp[row, :width], scored.advantages[i], part.mask, scored
                )
                total = total + loss
                results.append((part.mask, mine.detach(), loss.detach(), metrics))
            (total * weight).backward()
        return results

    def _group_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        scored: _Scored,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        return grpo_loss(
            logp,
            old_logp,  # None on the first pass: the ratio is 1 in value, as TRL's single iteration
            ref_logp,
            advantages.to(logp.dtype),
            mask,
            epsilon_low=cfg.epsilon_low,
            epsilon_high=cfg.epsilon_high,
            beta=cfg.beta,
            loss_type=cfg.loss_type,
            max_completion_length=cfg.max_new_tokens,
            num_items_in_batch=scored.tokens,
            num_processes=self.sp.mesh.dp_size,
            gradient_accumulation_steps=scored.accumulation,
            kl_ratio_correction=cfg.kl_ratio_correction,
            log_ratio_clamp=cfg.log_ratio_clamp,
            dual_clip=cfg.dual_clip,
        )

    def _record(
        self, groups: list[Group], scored: _Scored, stats: dict[str, list[float]], grad_norm: float, timer: _PhaseTimer
    ) -> dict[str, float]:
        lengths = torch.cat([grp.samples.lengths for grp in groups]).float()
        means = scored.rewards.means()
        return {
            "step": self.step,
            "loss": sum(stats["loss"]) / self.config.num_iterations,
            "reward": float(scored.rewards.total.mean()),
            **{f"reward/{name}": value for name, value in means.items()},
            "accuracy": means.get("accuracy", float("nan")),
            **self._accuracy_by_category(groups, scored.rewards),
            "kl": _mean(stats["kl"]),
            "clip_fraction": _mean(stats["clip"]),
            "response_length": float(lengths.mean()),
            "drift": _mean(stats["drift"]),
            "drift_max": max(stats["drift_max"], default=0.0),
            "groups_kept": len(scored.kept),
            "groups_kept_all_ranks": sum(scored.kept_per_rank),
            "passes": scored.passes,  # policy forwards per iteration (fewer than groups_kept when packed)
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "cache_hit_rate": self.cache.stats.hit_rate,
            **{f"time/{k}": v for k, v in timer.times.items()},
        }

    def _accuracy_by_category(self, groups: list[Group], rewards: RewardOutput) -> dict[str, float]:
        """`accuracy/<category>`: this rank's mean accuracy reward per category in the step's rollouts,
        so a category that GRPO lifts or lets slide shows in the curves (keys only for categories present)."""
        if "accuracy" not in rewards.names:
            return {}
        accuracy = rewards.per_func[:, rewards.names.index("accuracy")].view(len(groups), -1)
        by_category: dict[str, list[torch.Tensor]] = {}
        for grp, row in zip(groups, accuracy):
            if grp.encoded.sample.category:
                by_category.setdefault(grp.encoded.sample.category, []).append(row)
        return {f"accuracy/{c}": torch.nanmean(torch.cat(rows)).item() for c, rows in sorted(by_category.items())}

    def _gather_counts(self, kept: int, chunks: int, tokens: int) -> tuple[list[int], list[int], float]:
        """Kept groups and chunks of every data-parallel rank, and the kept completion tokens over all of them."""
        mesh = self.sp.mesh
        if mesh.dp_size == 1:
            return [kept], [chunks], float(tokens)
        mine = torch.tensor([kept, chunks, tokens], dtype=torch.float64, device=self.adapter.device)
        everyone = mine.new_empty(mesh.dp_size * 3)
        torch.distributed.all_gather_single(everyone, mine, group=mesh.dp_group)
        counts = everyone.view(mesh.dp_size, 3).cpu()
        return [int(k) for k in counts[:, 0]], [int(c) for c in counts[:, 1]], float(counts[:, 2].sum())

    def _advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Group advantages; "batch" scaling uses the std of the whole data-parallel batch, as TRL does."""
        mesh = self.sp.mesh
        if self.config.scale_rewards != "batch" or mesh.dp_size == 1:
            return group_advantages(rewards, group_size, self.config.scale_rewards).view(-1, group_size)
        mine = rewards.to(self.adapter.device).contiguous()
        everything = mine.new_empty(mesh.dp_size * rewards.numel())
        torch.distributed.all_gather_single(everything, mine, group=mesh.dp_group)
        part = slice(mesh.dp_rank * rewards.numel(), (mesh.dp_rank + 1) * rewards.numel())
        return group_advantages(everything.cpu(), group_size, "batch")[part].view(-1, group_size)

    # -- the phases' inputs: cached embeddings, packed groups, reference log-probs ------------------

    def _identity(self, sample: Sample) -> tuple[str, Frames | None]:
        """The video's content identity, and its frames if finding it meant decoding them."""
        if self.video_key is not None:
            return self.video_key(sample), None
        if is_generated(sample.video):
            return sample.video, None
        frames = self.load_frames(sample)
        return video_identity(sample.video, frames.pixels), frames

    def _encode(self, sample: Sample) -> tuple[Encoded, VideoInputs | None]:
        """Embeddings from the cache (decoding and encoding only on a miss), the prompt, and — when
        the vision tower trains — the model-ready pixels the policy pass re-encodes."""
        cfg = self.config
        identity, frames = self._identity(sample)
        sampling = f"frames={cfg.video.num_frames},fps={cfg.video.fps},max={cfg.video.max_frames},size={cfg.video.size}"
        key = CacheKey(sample.id, identity, sampling, self.encoder_version)
        video = None

        def pixels() -> VideoInputs:
            nonlocal frames, video
            if video is None:
                frames = frames if frames is not None else self.load_frames(sample)
                video = self.adapter.preprocess(frames.pixels, frames.timestamps)
            return video

        visual = self.cache.get_or_encode(
            key, lambda: self.sp.encode(pixels(), chunk_patches=cfg.video.encode_chunk), device=self.adapter.device
        )
        encoded = Encoded(sample, visual, self.adapter.build_prompt(question_text(sample), visual))
        return encoded, (pixels() if cfg.train_vision else None)

    def _packed(
        self, adapter: VLMAdapter, group: Group, visual: VisualEmbeds, summary: compress.SummaryTokens | None = None
    ) -> tuple[Packed, compress.Layout | None]:
        """The packed group, and its compressed prefix (the rollout's layout over `adapter`'s
        embeddings and `summary`'s embedding) when the rollout compressed it."""
        embeds, positions = adapter.prefix_inputs(group.encoded.prompt, visual)
        if group.layout is None:
            return pack(adapter, embeds, positions, group.responses, deepstack=visual.deepstack), None
        layout = group.layout.refilled(embeds, summary.embedding)
        return pack(adapter, layout.embeds, layout.positions, group.responses), layout

    def _logprobs(self, adapter: VLMAdapter, packed: Packed, layout: compress.Layout | None, sp) -> torch.Tensor:
        """One packed pass: causal shared-prefix, or composed with the visual-summary mask."""
        if layout is None:
            return packed_logprobs(adapter, packed, temperature=self.config.temperature, sp=sp)
        return compress.packed_logprobs(adapter, layout, packed, temperature=self.config.temperature, sp=sp)

    def _policy_inputs(self, group: Group, video: VideoInputs | None) -> tuple[Packed, compress.Layout | None]:
        """The packed group; with a trainable vision tower the video is re-encoded with gradients."""
        visual = group.encoded.visual if video is None else self.sp.encode(video, chunk_patches=self.config.video.encode_chunk)
        return self._packed(self.adapter, group, visual, self.compression.summary if self.compression else None)

    def _reference_logprobs(self, chunk: list[Group]) -> torch.Tensor | None:
        """The reference pass over the chunk's groups packed together, as the policy's; it reuses the
        step's cached embeddings and never re-encodes."""
        if self.config.beta == 0:
            return None
        summary = self.reference_summary

        def run(adapter: VLMAdapter, sp) -> torch.Tensor:
            parts = [self._packed(adapter, group, group.encoded.visual, summary) for group in chunk]
            return self._logprobs(adapter, pack_groups(adapter, [part[0] for part in parts])[0], parts[0][1], sp)

        with torch.no_grad():
            if self.reference is not None:
                return run(self.reference, self.ref_sp)
            swap = self.compression.summary.replaced_by(summary, self.adapter) if summary else contextlib.nullcontext()
            with self.adapter.model.disable_adapter(), swap:
                return run(self.adapter, self.sp)

    # -- checkpoint state ---------------------------------------------------------------------------

    def extra_state(self) -> dict:
        # The rollout's random streams are functions of (seed, step, place), so no rank has sampler
        # state to save: resume is exact on any mesh from the global state alone.
        return {"encoder_version": self.encoder_version}

    def load_extra_state(self, state: dict) -> None:
        self.encoder_version = state["encoder_version"]


@dataclasses.dataclass
class _Scored:
    """The score phase's result: what each group earned and what every rank must agree on."""

    rewards: RewardOutput
    advantages: torch.Tensor  # [B, G]
    kept: list[int]  # this rank's groups that train
    kept_per_rank: list[int]  # kept groups of every data-parallel rank
    chunks: list[list[int]]  # this rank's kept groups, as the packs of one forward each
    chunks_per_rank: list[int]  # chunks of every data-parallel rank
    tokens: float  # kept completion tokens over all data-parallel ranks ("dapo"'s normaliser)

    @property
    def passes(self) -> int:
        """Forward/backward passes per iteration, the same on every rank."""
        return max(self.chunks_per_rank)

    @property
    def accumulation(self) -> float:
        """Kept groups per rank on average: each kept group's loss counts 1 / (all kept groups)
        after the data-parallel gradient mean, however unevenly the filter left them."""
        return sum(self.kept_per_rank) / len(self.kept_per_rank)


class _PhaseTimer:
    """Wall time per phase of a step, accumulated over calls."""

    def __init__(self):
        self.times = dict.fromkeys(("encode", "rollout", "reward", "policy", "reference", "backward"), 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] += time.perf_counter() - start


def _column(sample: Sample, name: str):
    value = getattr(sample, name)
    return list(value) if name == "options" else value


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
