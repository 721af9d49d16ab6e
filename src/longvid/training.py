"""Training pieces shared by the recipes: optimizer and schedule configs, LoRA and stage freezing,
the deterministic, resumable order in which samples are visited, and the `Trainer` loop."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import (
    export_pretrained,
    latest_checkpoint,
    load_model_weights,
    load_rank_state,
    load_sharded,
    load_state,
    save_checkpoint,
    set_rng_state,
)
from .config import Validated
from .errors import ConfigError
from .model.adapter import VLMAdapter
from .parallel.mesh import Mesh
from .parallel.parallelize import parallelize, scale_sharded_grads
from .preempt import Preempted, stops_on_signal
from .runs import checkpoint_meta

log = logging.getLogger(__name__)


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
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.rank > 0 and not self.target_modules:
            raise ConfigError("lora.target_modules is empty: LoRA would adapt nothing")
        bad = [t for t in self.target_modules if not t.isidentifier()]
        if bad:
            raise ConfigError(f"lora.target_modules: {bad[0]!r} is not a module name (letters, digits, _)")


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
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        # A negative clip norm flips the gradients' sign (torch scales by max_norm / norm): training goes uphill.
        if not self.max_grad_norm > 0:
            raise ConfigError(f"optim.max_grad_norm must be > 0, got {self.max_grad_norm}")


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


def _optimized(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def clip_grad_norm(parameter_sets: list[list[torch.nn.Parameter]], max_norm: float) -> float:
    """`clip_grad_norm_` over several sets of parameters as one vector (FSDP-sharded DTensors in
    one set, plain replicated tensors in another: `clip_grad_norm_` cannot mix them). Each set's
    norm is made whole (a DTensor's partial norm reduced over its mesh), the total combines them,
    and every set is scaled by the same coefficient. Returns the total norm before clipping."""
    norms = []
    for params in parameter_sets:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not norms:
        return 0.0
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack([n.to(norms[0]) for n in norms]))
    for params in parameter_sets:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


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


class Trainer:
    """The loop every recipe shares: steps with a progress bar, logging to TensorBoard, optimizer
    steps over gradients reduced across ranks, and atomic checkpoints that resume exactly.

    A recipe sets `config` (with steps, save_every, log_every, progress, optim, parallel),
    `adapter`, `sp` (a `SequenceParallel`), `optimizer`, `scheduler`, `sampler`, and implements
    `train_step()`; `extra_state()` / `load_extra_state()` carry whatever else must survive a
    restart (saved once, by rank 0), `rank_state()` / `load_rank_state()` what differs per rank
    (saved by every rank, beside its RNG states).
    """

    name = "train"
    postfix_keys: tuple[str, ...] = ("loss",)
    compression = None  # a `TrainingCompression` when the recipe trains visual summary tokens

    def _setup(
        self,
        adapter: VLMAdapter,
        config,
        samples: list,
        load_frames,
        mesh: Mesh | None,
        *,
        freeze_vision: bool,
        freeze_projector: bool,
        freeze_llm: bool,
        total_steps: int,
    ) -> None:
        """Freeze → LoRA → parallelize (device, activation checkpointing, FSDP, sequence
        parallelism) → optimizer over the (sharded) parameters; then sample order and loop state.
        Without a mesh the trainer is one process on the adapter's device."""
        if not samples:
            raise ConfigError("the training set is empty")
        self.config = config
        self.adapter = apply_trainable(
            adapter, config.lora, freeze_vision=freeze_vision, freeze_projector=freeze_projector, freeze_llm=freeze_llm
        )
        self.samples, self.load_frames = samples, load_frames
        self.compute_dtype = adapter.dtype  # FSDP may keep float32 masters of a bf16 model (parallelize.apply_fsdp)
        self.sp = parallelize(self.adapter, mesh or Mesh.single(adapter.device), config.parallel)
        low = [p for p in self.adapter.model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
        if low:
            log.warning(
                "%.1fM trainable parameters are stepped in %s by one process: updates below 2^-8 of a weight round "
                "away. Train in float32 (--dtype float32), with LoRA (float32 adapters), or under FSDP on several ranks "
                "(float32 masters)", sum(p.numel() for p in low) / 1e6, low[0].dtype,
            )
        self.optimizer, self.scheduler = build_optimizer(self.adapter.model, config.optim, total_steps)
        self.sampler = EpochSampler(len(samples), config.seed)
        self._setup_loop(config.out_dir)

    def _setup_compression(self, compress, start: str | None, total_steps: int) -> None:
        """Visual summary tokens trained with the model (`compress`, a `CompressConfig`; None: off),
        starting from those saved beside the checkpoint `start` if it has them. The summary
        parameters are small and stay replicated on every rank, also under FSDP; they have their own
        AdamW and schedule (same settings, stepped with the model's), so the model's optimizer
        holds only the model's parameters, as `torch.distributed.checkpoint` needs for its sharded
        state. Their values and optimizer state ride in every checkpoint's `state.pt`, and they are
        saved beside the checkpoint's and the final export's model."""
        from .model.compress import PARAMS_FILE, TrainingCompression

        if compress is None:
            if start and (Path(start) / PARAMS_FILE).is_file():
                log.warning("%s has summary tokens but this run is uncompressed (set compress.ratios to use them)", start)
            return
        self.compression = TrainingCompression(self.adapter, compress, start=start)
        # Summary parameters train as float32 masters whatever the compute dtype (the routing hook
        # and the interleave cast them to the layer's): a bf16 master rounds small updates away.
        for p in self.compression.summary.parameters():
            if p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
        self.summary_optimizer, self.summary_scheduler = build_optimizer(self.compression.summary, self.config.optim, total_steps)

    def _setup_loop(self, out_dir: str) -> None:
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.checkpoint_dir = Path(out_dir) / "checkpoints"
        self.is_main = self.sp.mesh.rank == 0

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def rank_state(self) -> dict:
        """State that differs between ranks (saved by each rank beside its RNG states)."""
        return {}

    def load_rank_state(self, state: dict) -> None:
        pass

    def optimizer_step(self, *, dp_mean: bool) -> float:
        """Reduce gradients over the mesh, clip, step; returns the gradient norm before clipping.

        Gradients are summed over every rank (FSDP reduces the sharded ones in backward; replicated
        parameters — all of them without FSDP, the summary tokens' with it — are all-reduced here);
        `dp_mean` then averages over data-parallel ranks. The clipping norm is that of all
        parameters together, model and summary tokens."""
        params = _optimized(self.optimizer)
        replicated = _optimized(self.summary_optimizer) if self.compression else []
        if self.sp.sharded:
            if dp_mean and self.sp.mesh.dp_size > 1:
                scale_sharded_grads(params, 1.0 / self.sp.mesh.dp_size)
            self.sp.all_reduce_grads(replicated, dp_mean=dp_mean)
        else:
            self.sp.all_reduce_grads(params + replicated, dp_mean=dp_mean)
        grad_norm = clip_grad_norm([params, replicated], self.config.optim.max_grad_norm)
        for optimizer, scheduler in self._optimizers():
            optimizer.step()
            scheduler.step()
        self.zero_grad()
        return grad_norm

    def _optimizers(self) -> list:
        """(optimizer, scheduler) pairs: the model's, then the summary tokens' when compressing."""
        pairs = [(self.optimizer, self.scheduler)]
        if self.compression:
            pairs.append((self.summary_optimizer, self.summary_scheduler))
        return pairs

    def zero_grad(self) -> None:
        for optimizer, _ in self._optimizers():
            optimizer.zero_grad(set_to_none=True)

    def _sharded_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.adapter.model, self.optimizer)
        return {"model": model, "optimizer": optimizer}

    def save(self) -> Path:
        """Every rank writes its part (see `checkpoint.save_checkpoint`); returns the folder."""
        state = {
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "history": self.history,
            **self.extra_state(),
            **(self._compression_state() if self.compression else {}),
        }
        sharded = self._sharded_state() if self.sp.sharded else None
        if sharded is None and self.is_main:
            state["optimizer"] = self.optimizer.state_dict()
        path = save_checkpoint(
            self.checkpoint_dir, self.step, self.adapter.model, self.adapter.tokenizer, state,
            meta=checkpoint_meta(self.config, self.name), rank_state=self.rank_state(), sharded=sharded,
        )
        if self.compression and self.is_main:
            self.compression.save_beside(path)
        return path

    def resume(self) -> bool:
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        state = load_state(path)
        if self.compression and "summary_optimizer" not in state:
            raise ConfigError(f"{path}/state.pt holds no optimizer state for the summary tokens (saved without "
                              "compression, or by an older longvid that kept it in the model's optimizer): "
                              "start a fresh run from its model/ folder")
        if self.sp.sharded:
            from torch.distributed.checkpoint.state_dict import set_state_dict

            sharded = self._sharded_state()
            load_sharded(path, sharded)
            set_state_dict(
                self.adapter.model, self.optimizer, model_state_dict=sharded["model"], optim_state_dict=sharded["optimizer"]
            )
        else:
            if "optimizer" not in state:
                raise ValueError(f"{path} holds sharded (FSDP) weights; resume it with parallel.fsdp on the same world size")
            load_model_weights(self.adapter.model, path / "model")
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        self.history = [dict(h) for h in state["history"]]
        self.load_extra_state(state)
        if self.compression:
            self._load_compression_state(state)
        mine = load_rank_state(path)
        self.load_rank_state(mine)
        set_rng_state(mine["rng"])
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def _compression_state(self) -> dict:
        """The summary tokens (replicated: the same on every rank, saved once), their optimizer and schedule."""
        return {
            **self.compression.extra_state(),
            "summary_optimizer": self.summary_optimizer.state_dict(),
            "summary_scheduler": self.summary_scheduler.state_dict(),
        }

    def _load_compression_state(self, state: dict) -> None:
        self.compression.load_extra_state(state)
        self.summary_optimizer.load_state_dict(state["summary_optimizer"])
        self.summary_scheduler.load_state_dict(state["summary_scheduler"])

    def export(self, folder: str | Path) -> Path | None:
        """A plain `save_pretrained` folder of the trained model (LoRA merged); every rank calls it."""
        exported = export_pretrained(self.adapter.model, self.adapter.tokenizer, folder, dtype=self.compute_dtype)
        if self.compression and exported is not None:
            self.compression.summary.save(exported)  # beside it, as beside every checkpoint
        return exported

    def train_step(self) -> dict[str, float]:
        raise NotImplementedError

    @stops_on_signal
    def train(self, *, resume: bool = False, writer=None) -> list[dict[str, float]]:
        cfg = self.config
        if resume and not self.resume():
            log.info("no checkpoint in %s; starting fresh", self.checkpoint_dir)
        show = cfg.progress and self.is_main
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.name, disable=not show, dynamic_ncols=True)
        while self.step < cfg.steps:
            record = self.train_step()
            bar.update(1)
            bar.set_postfix({k: f"{record[k]:.4g}" for k in self.postfix_keys})
            if writer is not None and self.is_main:
                for key, value in record.items():
                    if key != "step":
                        writer.add_scalar(f"{self.name}/{key}", value, self.step)
            if cfg.log_every and self.step % cfg.log_every == 0:
                log.info("%s step %d: %s", self.name, self.step, ", ".join(f"{k} {record[k]:.4g}" for k in self.postfix_keys))
            if self.stop.agreed(self.sp.mesh, self.adapter.device) and self.step < cfg.steps:
                bar.close()
                raise Preempted(self.step, self.save())
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
        bar.close()
        self.save()
        # One plain folder that `from_pretrained` and `longvid eval --model` load (weights gathered, LoRA merged).
        self.export(Path(cfg.out_dir) / "final")
        return self.history


def pack_consecutive(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive indices grouped so each group's lengths sum to at most `budget` (a longer item
    stands alone): the sequences packed into one forward (SFT samples, GRPO groups)."""
    packs: list[list[int]] = []
    used = budget
    for i, n in enumerate(lengths):
        if used + n > budget:
            packs.append([])
            used = 0
        packs[-1].append(i)
        used += n
    return packs
