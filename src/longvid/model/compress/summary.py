"""Summary-token parameters: their config, the q/k/v routing hooks, init, save and load."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ...config import Validated
from ...errors import ConfigError
from ..adapter import VLMAdapter

DEFAULT_RATIOS = (2, 4, 8, 12, 16)
PARAMS_FILE = "summary_tokens.safetensors"
PROJECTIONS = ("q_proj", "k_proj", "v_proj")

_summary_rows: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("summary_rows", default=None)


@dataclasses.dataclass
class CompressConfig(Validated):
    """`compress.*` settings: the ratios trained (one drawn per window), the window in visual tokens."""

    ratios: tuple[int, ...] | int | str = DEFAULT_RATIOS  # also "2,4,8" or 4 (the command line's forms)
    window: int = 1440

    def validate(self) -> None:
        if isinstance(self.ratios, int) and not isinstance(self.ratios, bool):
            self.ratios = (self.ratios,)
        if isinstance(self.ratios, str):
            try:
                self.ratios = tuple(int(r) for r in self.ratios.split(",") if r.strip())
            except ValueError:
                raise ConfigError(f"compress.ratios: expected comma-separated integers, got {self.ratios!r}") from None
        check_ratios(self.ratios, self.window)


def check_ratios(ratios: Sequence[int], window: int) -> None:
    if window <= 0:
        raise ConfigError(f"compress.window must be > 0 visual tokens, got {window}")
    if not ratios:
        raise ConfigError("compress.ratios must name at least one ratio")
    for r in ratios:
        if int(r) != r or r <= 0:
            raise ConfigError(f"compress ratio must be a positive integer, got {r!r}")
        if r > window:
            raise ConfigError(f"compress ratio {r} is larger than the window of {window} visual tokens")


@contextlib.contextmanager
def routing(is_summary: torch.Tensor | None) -> Iterator[None]:
    """Inside: rows where `is_summary` (`[B, S]` bool, the tokens a forward runs on — a rank's shard
    under sequence parallelism) use the summary q/k/v projections."""
    token = _summary_rows.set(is_summary if is_summary is not None and bool(is_summary.any()) else None)
    try:
        yield
    finally:
        _summary_rows.reset(token)


def _route_hook(summary_proj: nn.Linear):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        rows = _summary_rows.get()
        if rows is None:
            return output
        x = args[0]
        if rows.shape != x.shape[:-1]:
            raise ValueError(
                f"summary routing mask has shape {tuple(rows.shape)} but the projection input is {tuple(x.shape[:-1])}; "
                "pass the mask of the tokens this forward runs on (batch, sequence)"
            )
        rows = rows.to(x.device)
        # In the summary weights' dtype: under FSDP with a bf16 model they are float32 (replicated
        # masters, like FSDP's sharded ones) while the layer computes in bf16.
        summary = summary_proj(x[rows].to(summary_proj.weight.dtype))
        return output.index_put((rows,), summary.to(output.dtype))

    return hook


class SummaryTokens(nn.Module):
    """The summary parameters: an input embedding and per-layer q/k/v for summary tokens."""

    def __init__(self, embedding: torch.Tensor, projections: list[dict[str, nn.Linear]], *, ratios, window: int):
        super().__init__()
        check_ratios(ratios, window)
        self.embedding = nn.Parameter(embedding.detach().clone())
        self.layers = nn.ModuleList(nn.ModuleDict(p) for p in projections)
        self.ratios = tuple(int(r) for r in ratios)
        self.window = int(window)
        self._handles: list = []

    @classmethod
    def from_adapter(
        cls, adapter: VLMAdapter, *, ratios: Sequence[int] = DEFAULT_RATIOS, window: int = 1440
    ) -> "SummaryTokens":
        """Fresh summary parameters: EOS embedding, copies of every layer's q/k/v."""
        eos = adapter.eos_token_ids[0] if getattr(adapter.tokenizer, "eos_token_id", None) is None else adapter.tokenizer.eos_token_id
        with torch.no_grad():
            embedding = adapter.embed_tokens(torch.tensor([eos]))[0]
        projections = []
        for attn in _attentions(adapter):
            projections.append({name: _copy_linear(getattr(attn, name)) for name in PROJECTIONS})
        return cls(embedding, projections, ratios=ratios, window=window)

    # -- attaching to a model ---------------------------------------------------------------------

    def attach(self, adapter: VLMAdapter) -> "SummaryTokens":
        """Hook the summary projections into `adapter`'s attention layers (after any peft wrapping).

        DeepStack families (Qwen3-VL) are refused here, the one door every compressed path uses:
        their vision features are added to the visual tokens' hidden states inside the first LLM
        layers, and the compressed paths (interleaved slots, evicted raw visual K/V) do not carry them yet."""
        if getattr(adapter, "deepstack_layers", 0):
            raise ConfigError(f"compress: visual summary tokens do not support DeepStack families ({type(adapter).__name__}) yet")
        self.detach_hooks()
        attentions = _attentions(adapter)
        if len(attentions) != len(self.layers):
            raise ConfigError(f"summary tokens have {len(self.layers)} layers but the model has {len(attentions)}")
        for attn, layer in zip(attentions, self.layers):
            for name in PROJECTIONS:
                self._handles.append(getattr(attn, name).register_forward_hook(_route_hook(layer[name])))
        return self

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def frozen_copy(self) -> "SummaryTokens":
        """These parameters as they are now, frozen and attached nowhere (a GRPO reference's)."""
        projections = [{name: _copy_linear(layer[name]) for name in PROJECTIONS} for layer in self.layers]
        return SummaryTokens(self.embedding, projections, ratios=self.ratios, window=self.window).requires_grad_(False)

    @contextlib.contextmanager
    def replaced_by(self, other: "SummaryTokens", adapter: VLMAdapter) -> Iterator[None]:
        """Inside: `other`'s projections are hooked into `adapter` instead of these (the policy with
        its LoRA disabled as the GRPO reference runs the initial summary parameters)."""
        self.detach_hooks()
        other.attach(adapter)
        try:
            yield
        finally:
            other.detach_hooks()
            self.attach(adapter)

    # -- checks -----------------------------------------------------------------------------------

    def check_inference_ratio(self, ratio: int) -> int:
        if int(ratio) != ratio or ratio <= 0:
            raise ConfigError(f"compression ratio must be a positive integer, got {ratio!r}")
        if ratio != 1 and ratio not in self.ratios:
            raise ConfigError(f"compression ratio {ratio} was not trained; trained ratios: {list(self.ratios)} (or 1: off)")
        if ratio > self.window:
            raise ConfigError(f"compression ratio {ratio} is larger than the window of {self.window} visual tokens")
        return int(ratio)

    def draw_ratios(self, num_visual: int, rng: random.Random, ratios: Sequence[int] | None = None) -> list[int]:
        """One ratio per window (training), from `ratios` (default: every trained one)."""
        return [rng.choice(ratios or self.ratios) for _ in range(num_windows(num_visual, self.window))]

    # -- save / load ------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write `summary_tokens.safetensors` into `folder` (beside a `save_pretrained` checkpoint)."""
        from safetensors.torch import save_file

        path = Path(folder) / PARAMS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"ratios": json.dumps(list(self.ratios)), "window": str(self.window)}
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, folder: str | Path, adapter: VLMAdapter) -> "SummaryTokens":
        """Read the summary parameters saved beside a checkpoint; shapes must fit `adapter`."""
        from safetensors import safe_open

        path = Path(folder) / PARAMS_FILE
        if not path.is_file():
            raise ConfigError(f"{path}: no summary-token parameters (train with compression, or run without it)")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        try:
            ratios, window = json.loads(meta["ratios"]), int(meta["window"])
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{path}: bad metadata ({e})") from None
        module = cls.from_adapter(adapter, ratios=ratios, window=window)
        expected = {k: v.shape for k, v in module.state_dict().items()}
        got = {k: v.shape for k, v in state.items()}
        if expected != got:
            missing = sorted(set(expected) ^ set(got)) or sorted(k for k in expected if expected[k] != got[k])
            raise ConfigError(f"{path}: parameters do not fit this model (first mismatch: {missing[:3]})")
        module.load_state_dict(state)
        return module.to(adapter.device)  # dtypes of `from_adapter` (float32 q/k/v beside FSDP's float32 masters)


def _attentions(adapter: VLMAdapter) -> list[nn.Module]:
    return [layer.self_attn for layer in adapter.layers()["llm"]]


def _copy_linear(linear: nn.Module) -> nn.Linear:
    base = getattr(linear, "base_layer", linear)  # a peft-wrapped projection: copy its base weights
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=base.weight.device, dtype=base.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(_whole(base.weight))
        if base.bias is not None:
            out.bias.copy_(_whole(base.bias))
    return out


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor of the whole parameter: an FSDP-sharded one (a DTensor) is gathered (a
    collective: every rank copies the same layers). The summary copies stay replicated."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor




def num_windows(num_visual: int, window: int) -> int:
    return max(1, math.ceil(num_visual / window))
