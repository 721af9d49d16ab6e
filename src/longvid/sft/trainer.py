"""Chain-of-thought SFT: `<think>reasoning</think><answer>X</answer>` targets, loss on response tokens.

One sample per forward (long videos do not batch well without packing); `grad_accum` samples make
one optimizer step, and the loss is normalised by the response tokens of the whole step, so the
gradient is the token mean over the step however the samples are split.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import ModelConfig, ParallelConfig, Validated, VideoConfig
from ..data.schema import Sample
from ..errors import ConfigError
from ..inputs import question_text, target_text, with_response
from ..model.adapter import VLMAdapter
from ..model.compress import CompressConfig
from ..parallel.mesh import Mesh
from ..training import LoRAConfig, OptimConfig, Trainer
from ..video.decode import Frames

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SFTConfig(Validated):
    train: str = ""  # jsonl dataset
    out_dir: str = "runs/sft"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    compress: CompressConfig | None = None  # visual summary tokens (e.g. --set compress.ratios=2,4,8,12,16)
    steps: int = 100
    grad_accum: int = 4
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = False
    save_every: int = 0  # 0: only at the end
    log_every: int = 10
    seed: int = 0
    skip_bad: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not self.train:
            raise ConfigError("train: a jsonl dataset is required")
        if not Path(self.train).is_file():
            raise ConfigError(f"train: file not found: {self.train}")
        if self.steps <= 0:
            raise ConfigError(f"steps must be > 0, got {self.steps}")
        if self.grad_accum <= 0:
            raise ConfigError(f"grad_accum must be > 0, got {self.grad_accum}")
        if self.freeze_vision and self.freeze_projector and self.freeze_llm and self.lora.rank == 0:
            raise ConfigError("everything is frozen: nothing would train")


class SFTTrainer(Trainer):
    name = "sft"
    postfix_keys = ("loss", "tokens_per_s")

    def __init__(
        self,
        adapter: VLMAdapter,
        config: SFTConfig,
        samples: list[Sample],
        load_frames: Callable[[Sample], Frames],
        mesh: Mesh | None = None,
    ):
        self._setup(
            adapter,
            config,
            samples,
            load_frames,
            mesh,
            freeze_vision=config.freeze_vision,
            freeze_projector=config.freeze_projector,
            freeze_llm=config.freeze_llm,
            total_steps=config.steps,
        )
        self._setup_compression(config.compress, config.model.path, config.steps)

    def train_step(self) -> dict[str, float]:
        adapter, cfg, mesh = self.adapter, self.config, self.sp.mesh
        adapter.model.train()
        # Each data-parallel rank takes its share of the step's samples; SP ranks share a sample.
        batch = [self.samples[i] for i in self.sampler.take(cfg.grad_accum * mesh.dp_size)]
        started = time.perf_counter()
        targets = [adapter.response_ids(target_text(s)) for s in batch]
        total_tokens = sum(len(t) for t in targets)
        loss_sum = 0.0
        seq_tokens = 0
        for place, (sample, target) in list(enumerate(zip(batch, targets)))[mesh.dp_rank :: mesh.dp_size]:
            frames = self.load_frames(sample)
            visual = self.sp.encode(adapter.preprocess(frames.pixels, frames.timestamps), chunk_patches=cfg.video.encode_chunk)
            prompt = adapter.build_prompt(question_text(sample), visual)
            embeds, positions, labels = with_response(adapter, prompt, visual, target)
            if self.compression:
                ratios_rng = random.Random(f"{cfg.seed}:{self.step}:{place}")  # the same on any mesh
                hidden, labels = self.compression.hidden_states(self.sp, prompt, embeds, positions, labels, ratios_rng)
            else:
                hidden = self.sp.hidden_states(embeds, positions, deepstack=visual.deepstack)
                labels = self.sp.shard(labels, pad_value=-100)
            keep = labels >= 0
            logits = adapter.logits(hidden[keep])
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least float32
            loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum") / total_tokens
            loss.backward()
            loss_sum += loss.item()
            seq_tokens += embeds.shape[0]
        loss_sum = self.sp.all_reduce_sum(loss_sum)
        lr = self.scheduler.get_last_lr()[0]
        # Losses are normalised by the step's global token count: sum gradients over all ranks.
        grad_norm = self.optimizer_step(dp_mean=False)
        self.step += 1
        elapsed = time.perf_counter() - started
        record = {
            "step": self.step,
            "loss": loss_sum,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": seq_tokens / elapsed,
            "samples_per_s": len(batch) / elapsed,
        }
        self.history.append(record)
        return record
