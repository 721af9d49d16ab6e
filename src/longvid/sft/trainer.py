"""Chain-of-thought SFT: `<think>reasoning</think><answer>X</answer>` targets, loss on response tokens.

One sample per forward (long videos do not batch well without packing); `grad_accum` samples make
one optimizer step, and the loss is normalised by the response tokens of the whole step, so the
gradient is the token mean over the step however the samples are split.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..checkpoint import latest_checkpoint, load_model_weights, load_state, save_checkpoint, set_rng_state
from ..config import ModelConfig, VideoConfig
from ..data.schema import Sample
from ..errors import ConfigError
from ..inputs import encode_sample, target_text, with_response
from ..model.adapter import VLMAdapter
from ..video.decode import Frames

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoRAConfig:
    rank: int = 0  # 0 disables LoRA
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def validate(self) -> None:
        if self.rank < 0:
            raise ConfigError(f"lora.rank must be >= 0, got {self.rank}")


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10
    max_grad_norm: float = 1.0

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclasses.dataclass
class SFTConfig:
    train: str = ""  # jsonl dataset
    out_dir: str = "runs/sft"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
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


def apply_trainable(adapter: VLMAdapter, config: SFTConfig) -> VLMAdapter:
    """Freeze stages as configured and wrap the LLM with LoRA when `lora.rank > 0`."""
    groups = adapter.parameter_groups()
    for name, frozen in (("vision", config.freeze_vision), ("projector", config.freeze_projector), ("llm", config.freeze_llm)):
        for p in groups[name]:
            p.requires_grad_(not frozen)
    if config.lora.rank > 0:
        from peft import LoraConfig, get_peft_model

        targets = "|".join(config.lora.target_modules)
        lora = LoraConfig(
            r=config.lora.rank,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=rf".*language_model.*\.({targets})",
        )
        keep_training = [p for name in ("vision", "projector") for p in groups[name] if p.requires_grad]
        adapter.model = get_peft_model(adapter.model, lora)
        # peft freezes every base weight; the vision stages the user asked to train stay trainable.
        for p in keep_training:
            p.requires_grad_(True)
    return adapter


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class SFTTrainer:
    def __init__(
        self,
        adapter: VLMAdapter,
        config: SFTConfig,
        samples: list[Sample],
        load_frames: Callable[[Sample], Frames],
    ):
        if not samples:
            raise ConfigError("the training set is empty")
        self.config = config
        self.adapter = apply_trainable(adapter, config)
        self.samples = samples
        self.load_frames = load_frames
        params = [p for p in self.adapter.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, config.optim.warmup_steps, config.steps, config.optim.min_lr_ratio),
        )
        self.step = 0
        self.epoch = 0
        self.cursor = 0  # position inside the epoch's order
        self.history: list[dict[str, float]] = []
        self.checkpoint_dir = Path(config.out_dir) / "checkpoints"

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.samples), generator=g).tolist()

    def _next_samples(self, n: int) -> list[Sample]:
        out = []
        while len(out) < n:
            order = self._order(self.epoch)
            take = order[self.cursor : self.cursor + n - len(out)]
            out += [self.samples[i] for i in take]
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def resume(self) -> bool:
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        load_model_weights(self.adapter.model, path / "model")
        state = load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        self.history = [dict(h) for h in state["history"]]
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def save(self) -> Path:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "cursor": self.cursor,
            "history": self.history,
        }
        return save_checkpoint(self.checkpoint_dir, self.step, self.adapter.model, self.adapter.tokenizer, state)

    def train_step(self) -> dict[str, float]:
        adapter, cfg = self.adapter, self.config
        adapter.model.train()
        batch = self._next_samples(cfg.grad_accum)
        started = time.perf_counter()
        targets = [adapter.response_ids(target_text(s)) for s in batch]
        total_tokens = sum(len(t) for t in targets)
        loss_sum = 0.0
        seq_tokens = 0
        for sample, target in zip(batch, targets):
            frames = self.load_frames(sample)
            enc = encode_sample(adapter, sample, frames.pixels, frames.timestamps, chunk=cfg.video.encode_chunk)
            embeds, positions, labels = with_response(adapter, enc.prompt, enc.visual, target)
            hidden, _ = adapter.hidden_states(embeds[None], positions[:, None])
            keep = labels >= 0
            logits = adapter.logits(hidden[0, keep]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum") / total_tokens
            loss.backward()
            loss_sum += loss.item()
            seq_tokens += embeds.shape[0]
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
        bar = tqdm(total=cfg.steps, initial=self.step, desc="sft", disable=not cfg.progress, dynamic_ncols=True)
        while self.step < cfg.steps:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            if writer is not None:
                for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                    writer.add_scalar(f"sft/{key}", record[key], self.step)
            if cfg.log_every and self.step % cfg.log_every == 0:
                log.info("step %d loss %.4f lr %.2e", self.step, record["loss"], record["lr"])
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
        bar.close()
        self.save()
        return self.history
