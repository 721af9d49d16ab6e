"""Training pieces shared by the recipes: optimizer and schedule configs, LoRA and stage freezing,
and the deterministic, resumable order in which samples are visited."""

from __future__ import annotations

import dataclasses
import math

import torch

from .config import Validated
from .errors import ConfigError
from .model.adapter import VLMAdapter


@dataclasses.dataclass
class LoRAConfig(Validated):
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
class OptimConfig(Validated):
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


def apply_trainable(
    adapter: VLMAdapter, lora_config: LoRAConfig, *, freeze_vision: bool, freeze_projector: bool, freeze_llm: bool
) -> VLMAdapter:
    """Freeze stages as configured and wrap the LLM with LoRA when `lora.rank > 0`."""
    groups = adapter.parameter_groups()
    for name, frozen in (("vision", freeze_vision), ("projector", freeze_projector), ("llm", freeze_llm)):
        for p in groups[name]:
            p.requires_grad_(not frozen)
    if lora_config.rank > 0:
        from peft import LoraConfig, get_peft_model

        targets = "|".join(lora_config.target_modules)
        lora = LoraConfig(
            r=lora_config.rank,
            lora_alpha=lora_config.alpha,
            lora_dropout=lora_config.dropout,
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


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, total_steps: int):
    """AdamW over the trainable parameters and a warm-up + cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: everything is frozen")
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, optim.warmup_steps, total_steps, optim.min_lr_ratio)
    )
    return optimizer, scheduler


class EpochSampler:
    """Visits samples in a seeded permutation per epoch; (epoch, cursor) is the resumable position."""

    def __init__(self, size: int, seed: int):
        if size <= 0:
            raise ConfigError("the dataset is empty")
        self.size, self.seed = size, seed
        self.epoch = 0
        self.cursor = 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self._order()
            part = order[self.cursor : self.cursor + n - len(out)]
            out += part
            self.cursor += len(part)
            if self.cursor >= self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
