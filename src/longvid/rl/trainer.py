"""GRPO for long videos: encode once, prefill once, train each group in one packed pass.

One step: a batch of prompts → each video encoded once (embedding cache) → G rollouts per prompt
from one prefill → rewards → group advantages → optional online filtering of all-equal groups →
packed policy and reference passes (one forward per group, not G) → GRPO loss → optimizer step.
Rollout and training read the same `VisualEmbeds` and `Prompt`, so the drift between rollout and
training log-probs is ~0 by construction; it is logged every step to prove it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Literal

import torch

from ..config import ModelConfig, ParallelConfig, Validated, VideoConfig
from ..data.dataset import video_identity
from ..data.schema import Sample
from ..errors import ConfigError
from ..inputs import Encoded, question_text
from ..model.adapter import VideoInputs, VisualEmbeds, VLMAdapter
from ..model.sampling import SamplingConfig
from ..parallel.mesh import Mesh
from ..parallel.parallelize import parallelize
from ..training import LoRAConfig, OptimConfig, Trainer
from ..video.decode import Frames
from ..video.synth import SPEC_PREFIX
from .cache import CacheKey, EmbeddingCache
from .difficulty import filter_groups
from .grpo import grpo_loss, group_advantages
from .packing import Packed, pack, packed_logprobs
from .rewards import RewardSuite
from .rollout import Group, rollout_group

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
    steps: int = 50
    batch_size: int = 2  # prompts per step
    group_size: int = 8  # G responses per prompt
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_iterations: int = 1  # optimisation passes over each batch (old log-probs stored)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    kl_ratio_correction: bool = False
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
        # Without `video_key` a video's identity is a hash of its decoded pixels (decoded every step).
        self.video_key = video_key
        self.rewards = RewardSuite.from_weights(config.rewards)
        self.cache = EmbeddingCache(config.cache_bytes, offload=config.cache_offload)
        self.encoder_version = 0
        # SP ranks of a group must sample the same responses; data-parallel ranks different ones.
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + mesh.dp_rank)

    # -- one step --------------------------------------------------------------------------------

    def _identity(self, sample: Sample) -> tuple[str, Frames | None]:
        """The video's content identity, and its frames if finding it meant decoding them."""
        if self.video_key is not None:
            return self.video_key(sample), None
        if sample.video.startswith(SPEC_PREFIX):
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

    def _packed(self, adapter: VLMAdapter, group: Group, visual: VisualEmbeds) -> Packed:
        embeds, positions = adapter.prefix_inputs(group.encoded.prompt, visual)
        return pack(adapter, embeds, positions, group.responses)

    def _policy_inputs(self, group: Group, video: VideoInputs | None) -> Packed:
        """The packed group; with a trainable vision tower the video is re-encoded with gradients."""
        visual = group.encoded.visual if video is None else self.sp.encode(video, chunk_patches=self.config.video.encode_chunk)
        return self._packed(self.adapter, group, visual)

    def _reference_logprobs(self, group: Group) -> torch.Tensor | None:
        """The reference pass reuses the step's cached embeddings; it never re-encodes."""
        if self.config.beta == 0:
            return None
        temperature = self.config.temperature
        with torch.no_grad():
            if self.reference is not None:
                packed = self._packed(self.reference, group, group.encoded.visual)
                return packed_logprobs(self.reference, packed, temperature=temperature, sp=self.ref_sp)
            with self.adapter.model.disable_adapter():
                packed = self._packed(self.adapter, group, group.encoded.visual)
                return packed_logprobs(self.adapter, packed, temperature=temperature, sp=self.sp)

    def train_step(self) -> dict[str, float]:
        cfg, adapter = self.config, self.adapter
        times = dict.fromkeys(("encode", "rollout", "reward", "policy", "reference", "backward"), 0.0)
        mesh = self.sp.mesh
        batch = [self.samples[i] for i in self.sampler.take(cfg.batch_size * mesh.dp_size)][mesh.dp_rank :: mesh.dp_size]

        adapter.model.eval()
        groups, videos = [], []
        # Whole parameters while ranks decode (and miss the cache) independently: no FSDP collectives.
        with self.sp.full_parameters():
            for sample in batch:
                t = time.perf_counter()
                enc, video = self._encode(sample)
                videos.append(video)
                times["encode"] += time.perf_counter() - t
                t = time.perf_counter()
                groups.append(rollout_group(adapter, enc, cfg.group_size, cfg.sampling, generator=self.generator))
                times["rollout"] += time.perf_counter() - t

        t = time.perf_counter()
        g = cfg.group_size
        texts = [text for grp in groups for text in grp.texts]
        columns = {
            "answer": [grp.encoded.sample.answer for grp in groups for _ in range(g)],
            "options": [list(grp.encoded.sample.options) for grp in groups for _ in range(g)],
            "category": [grp.encoded.sample.category for grp in groups for _ in range(g)],
            "id": [grp.encoded.sample.id for grp in groups for _ in range(g)],
        }
        prompts = [question_text(grp.encoded.sample) for grp in groups for _ in range(g)]
        rewards = self.rewards(prompts, texts, **columns)
        advantages = self._advantages(rewards.total, g)
        keep = filter_groups(rewards.total.view(len(groups), g)) if cfg.filter_groups else torch.ones(len(groups), dtype=torch.bool)
        times["reward"] += time.perf_counter() - t

        kept = [i for i in range(len(groups)) if keep[i]]
        total_tokens = self.sp.all_reduce_sum(sum(int(groups[i].samples.mask().sum()) for i in kept), self.sp.mesh.dp_group)
        stats: dict[str, list[float]] = {"loss": [], "kl": [], "clip": [], "drift": [], "drift_max": []}
        old_logps: dict[int, torch.Tensor] = {}
        adapter.model.train()
        for iteration in range(cfg.num_iterations):
            for i in kept:
                grp = groups[i]
                t = time.perf_counter()
                packed = self._policy_inputs(grp, videos[i])
                logp = packed_logprobs(adapter, packed, temperature=cfg.temperature, sp=self.sp)
                times["policy"] += time.perf_counter() - t
                if iteration == 0:
                    # Same weights as the rollout: any difference is a bug in the input path.
                    diff = (logp.detach() - grp.samples.logprobs.to(logp.dtype)).abs()[packed.mask]
                    stats["drift"].append(float(diff.mean()))
                    stats["drift_max"].append(float(diff.max()))
                    old_logps[i] = logp.detach()
                t = time.perf_counter()
                ref_logp = self._reference_logprobs(grp)
                times["reference"] += time.perf_counter() - t
                t = time.perf_counter()
                loss, metrics = grpo_loss(
                    logp,
                    old_logps[i] if cfg.num_iterations > 1 else None,
                    ref_logp,
                    advantages[i].to(logp.dtype),
                    packed.mask,
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    beta=cfg.beta,
                    loss_type=cfg.loss_type,
                    max_completion_length=cfg.max_new_tokens,
                    num_items_in_batch=total_tokens,
                    num_processes=mesh.dp_size,
                    gradient_accumulation_steps=len(kept),
                    kl_ratio_correction=cfg.kl_ratio_correction,
                    log_ratio_clamp=cfg.log_ratio_clamp,
                    dual_clip=cfg.dual_clip,
                )
                loss.backward()
                times["backward"] += time.perf_counter() - t
                stats["loss"].append(float(loss.detach()))
                stats["kl"].append(float(metrics.get("kl", torch.tensor(0.0))))
                stats["clip"].append(float(metrics.get("clip_ratio/region_mean", torch.tensor(0.0))))
            # Every rank's loss is normalised per rank (TRL's convention): average over data parallel.
            grad_norm = self.optimizer_step(dp_mean=True) if kept else 0.0
            if kept and cfg.train_vision:
                self.encoder_version += 1  # cached embeddings of the old tower are stale now
        self.step += 1

        lengths = torch.cat([grp.samples.lengths for grp in groups]).float()
        means = rewards.means()
        record = {
            "step": self.step,
            "loss": sum(stats["loss"]) / cfg.num_iterations,
            "reward": float(rewards.total.mean()),
            **{f"reward/{name}": value for name, value in means.items()},
            "accuracy": means.get("accuracy", float("nan")),
            "kl": _mean(stats["kl"]),
            "clip_fraction": _mean(stats["clip"]),
            "response_length": float(lengths.mean()),
            "drift": _mean(stats["drift"]),
            "drift_max": max(stats["drift_max"], default=0.0),
            "groups_kept": len(kept),
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "cache_hit_rate": self.cache.stats.hit_rate,
            **{f"time/{k}": v for k, v in times.items()},
        }
        self.history.append(record)
        return record

    def _advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        """Group advantages; "batch" scaling uses the std of the whole data-parallel batch, as TRL does."""
        mesh = self.sp.mesh
        if self.config.scale_rewards != "batch" or mesh.dp_size == 1:
            return group_advantages(rewards, group_size, self.config.scale_rewards).view(-1, group_size)
        everything = rewards.new_empty(mesh.dp_size * rewards.numel())
        torch.distributed.all_gather_into_tensor(everything, rewards.contiguous(), group=mesh.dp_group)
        mine = slice(mesh.dp_rank * rewards.numel(), (mesh.dp_rank + 1) * rewards.numel())
        return group_advantages(everything, group_size, "batch")[mine].view(-1, group_size)

    def extra_state(self) -> dict:
        return {"encoder_version": self.encoder_version}

    def load_extra_state(self, state: dict) -> None:
        self.encoder_version = state["encoder_version"]

    def rank_state(self) -> dict:
        return {"generator": self.generator.get_state()}  # each data-parallel rank samples its own stream

    def load_rank_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
