"""Chain-of-thought SFT: `<think>reasoning</think><answer>X</answer>` targets, loss on response tokens.

One sample per forward (long videos do not batch well without packing); `grad_accum` samples make
one optimizer step, and the loss is normalised by the response tokens of the whole step, so the
gradient is the token mean over the step however the samples are split.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..checkpoint import latest_checkpoint, load_model_weights, load_state, save_checkpoint, set_rng_state
from ..config import ModelConfig, ParallelConfig, Validated, VideoConfig
from ..data.schema import Sample
from ..errors import ConfigError
from ..inputs import question_text, target_text, with_response
from ..parallel.apply import SequenceParallel
from ..parallel.mesh import Mesh
from ..model.adapter import VLMAdapter
from ..training import EpochSampler, LoRAConfig, OptimConfig, apply_trainable, build_optimizer
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


class SFTTrainer:
    def __init__(
        self,
        adapter: VLMAdapter,
        config: SFTConfig,
        samples: list[Sample],
        load_frames: Callable[[Sample], Frames],
        mesh: Mesh | None = None,
    ):
        if not samples:
            raise ConfigError("the training set is empty")
        self.config = config
        self.adapter = apply_trainable(
            adapter,
            config.lora,
            freeze_vision=config.freeze_vision,
            freeze_projector=config.freeze_projector,
            freeze_llm=config.freeze_llm,
        )
        self.samples = samples
        self.load_frames = load_frames
        mesh = mesh or Mesh.single()
        self.sp = SequenceParallel(self.adapter, mesh, mode=config.parallel.mode, layout=config.parallel.layout)
        self.is_main = mesh.rank == 0
        self.optimizer, self.scheduler = build_optimizer(self.adapter.model, config.optim, config.steps)
        self.sampler = EpochSampler(len(samples), config.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.checkpoint_dir = Path(config.out_dir) / "checkpoints"

    def resume(self) -> bool:
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        load_model_weights(self.adapter.model, path / "model")
        state = load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        self.history = [dict(h) for h in state["history"]]
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def save(self) -> Path | None:
        """Rank 0 writes; every rank waits for it, so a resume never sees a half-written step."""
        path = self._write_checkpoint() if self.is_main else None
        self.sp.barrier()
        return path

    def _write_checkpoint(self) -> Path:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "history": self.history,
        }
        return save_checkpoint(self.checkpoint_dir, self.step, self.adapter.model, self.adapter.tokenizer, state)

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
        for sample, target in list(zip(batch, targets))[mesh.dp_rank :: mesh.dp_size]:
            frames = self.load_frames(sample)
            visual = self.sp.encode(adapter.preprocess(frames.pixels, frames.timestamps), chunk_patches=cfg.video.encode_chunk)
            prompt = adapter.build_prompt(question_text(sample), visual)
            embeds, positions, labels = with_response(adapter, prompt, visual, target)
            hidden = self.sp.hidden_states(embeds, positions)
            labels = self.sp.shard(labels, pad_value=-100)
            keep = labels >= 0
            logits = adapter.logits(hidden[keep]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum") / total_tokens
            loss.backward()
            loss_sum += loss.item()
            seq_tokens += embeds.shape[0]
        self.sp.all_reduce_grads(p for g in self.optimizer.param_groups for p in g["params"])
        loss_sum = self.sp.all_reduce_sum(loss_sum)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.optim.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        elapsed = time.perf_counter() - started
        record = {
            "step": self.step,
            "loss": loss_sum,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": seq_tokens / elapsed,
            "samples_per_s": len(batch) / elapsed,
        }
        self.history.append(record)
        return record

    def train(self, *, resume: bool = False, writer=None) -> list[dict[str, float]]:
        cfg = self.config
        if resume and not self.resume():
            log.info("no checkpoint in %s; starting fresh", self.checkpoint_dir)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="sft", disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        while self.step < cfg.steps:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            if writer is not None and self.is_main:
                for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                    writer.add_scalar(f"sft/{key}", record[key], self.step)
            if cfg.log_every and self.step % cfg.log_every == 0:
                log.info("step %d loss %.4f lr %.2e", self.step, record["loss"], record["lr"])
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
        bar.close()
        self.save()
        return self.history
