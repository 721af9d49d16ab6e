"""Chain-of-thought SFT: `<think>reasoning</think><answer>X</answer>` targets, loss on response tokens.

One sample per forward by default (a long video fills a sequence alone); with `pack_tokens`, a
rank's samples of a step are packed into sequences of at most that many tokens under a document
mask, which computes the same loss in fewer, larger forwards (short videos, where per-forward
overhead dominates). `grad_accum` samples make one optimizer step, and the loss is normalised by
the response tokens of the whole step, so the gradient is the token mean over the step however the
samples are split or packed.
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
from .. import masks
from ..errors import ConfigError
from ..inputs import question_text, target_text, with_response
from ..model.adapter import VLMAdapter
from ..model.compress import CompressConfig
from ..parallel.mesh import Mesh
from ..training import LoRAConfig, OptimConfig, Trainer, pack_consecutive
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
    pack_tokens: int = 0  # pack a step's samples into sequences of at most this many tokens; 0: one per forward
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
        if self.pack_tokens < 0:
            raise ConfigError(f"pack_tokens must be >= 0, got {self.pack_tokens}")
        if self.pack_tokens and self.compress is not None:
            raise ConfigError("pack_tokens and compress cannot be combined: the compressed forward takes one sample at a time")
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
        if config.pack_tokens and self.sp.sharded and self.sp.mesh.dp_size > 1:
            # Data-parallel ranks pack their samples into different numbers of sequences, while FSDP
            # needs every rank to run the same forwards and backwards (its collectives).
            raise ConfigError("pack_tokens needs parallel.fsdp=false on more than one data-parallel rank (FSDP); set pack_tokens=0 or turn FSDP off")

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
        mine = list(enumerate(zip(batch, targets)))[mesh.dp_rank :: mesh.dp_size]
        for loss, tokens in self._packed_losses(mine, total_tokens) if cfg.pack_tokens else self._losses(mine, total_tokens):
            loss.backward()
            loss_sum += loss.item()
            seq_tokens += tokens
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

    def _inputs(self, sample: Sample, target: torch.Tensor):
        """`[prompt | response]` embeddings, positions, labels, and the prompt and its video."""
        frames = self.load_frames(sample)
        visual = self.sp.encode(self.adapter.preprocess(frames.pixels, frames.timestamps), chunk_patches=self.config.video.encode_chunk)
        prompt = self.adapter.build_prompt(question_text(sample), visual)
        return (*with_response(self.adapter, prompt, visual, target), prompt, visual)

    def _loss(self, hidden: torch.Tensor, labels: torch.Tensor, total_tokens: int) -> torch.Tensor:
        """Summed response-token cross-entropy over `total_tokens` (this rank's shard of the labels)."""
        keep = labels >= 0
        logits = self.adapter.logits(hidden[keep])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least float32
        return torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum") / total_tokens

    def _losses(self, mine, total_tokens: int):
        """(loss, tokens) of each sample, one forward each."""
        for place, (sample, target) in mine:
            embeds, positions, labels, prompt, visual = self._inputs(sample, target)
            if self.compression:
                ratios_rng = random.Random(f"{self.config.seed}:{self.step}:{place}")  # the same on any mesh
                hidden, labels = self.compression.hidden_states(self.sp, prompt, embeds, positions, labels, ratios_rng)
            else:
                hidden = self.sp.hidden_states(embeds, positions, deepstack=visual.deepstack)
                labels = self.sp.shard(labels, pad_value=-100)
            yield self._loss(hidden, labels, total_tokens), embeds.shape[0]

    def _packed_losses(self, mine, total_tokens: int):
        """(loss, tokens) of each pack: consecutive samples laid end to end, up to `pack_tokens`,
        one forward under a document mask (each sample attends only to itself)."""
        parts = [self._inputs(sample, target) for _, (sample, target) in mine]
        for pack in pack_consecutive([len(part[0]) for part in parts], self.config.pack_tokens):
            chosen = [parts[i] for i in pack]
            embeds = torch.cat([part[0] for part in chosen])
            positions, deepstack = self.adapter.concat_sequences([part[1] for part in chosen], [part[4].deepstack for part in chosen])
            labels = torch.cat([part[2] for part in chosen])
            segments = torch.cat([torch.full((len(part[0]),), k, dtype=torch.long, device=embeds.device) for k, part in enumerate(chosen)])
            hidden = self.sp.hidden_states(embeds, positions, masks.document(segments), deepstack=deepstack)
            yield self._loss(hidden, self.sp.shard(labels, pad_value=-100), total_tokens), embeds.shape[0]

