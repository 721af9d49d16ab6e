"""Visual summary tokens (Video-XL), applied from outside to an unmodified Hugging Face model.

The visual span of a sequence is cut into windows of `window` visual tokens. In a window with
ratio r a summary token is interleaved after every r visual tokens (`x0..x(r-1) S x(r)..`); a
partial group at the end of a window gets one summary too, so a window of n tokens yields
ceil(n / r) summaries. Summary tokens have their own input embedding (initialised from EOS) and,
in every decoder layer, their own q/k/v projections (copies of the layer's); o_proj, MLP and norms
are shared. The q/k/v routing is done by forward hooks on the layer's `q_proj`/`k_proj`/`v_proj`:
inside `routing(is_summary)` a hook recomputes the summary rows with the summary weights. Nothing
is registered inside the Hugging Face model, so its `save_pretrained`/`from_pretrained` are untouched;
the summary parameters live in `SummaryTokens` and are saved beside it as safetensors.

Attention (`masks.visual_summary`): causal, except that a raw visual token is visible only inside
its own window. So every token sees the text before the video and all earlier summaries; text
after the video sees text and summaries, never a raw visual token. Training is one forward with
that mask; inference prefills window by window and drops the raw visual K/V after each window
(`windowed_prefill`), which computes the same numbers because those K/V are invisible to
everything that follows.

Positions (Qwen2.5-VL's 3-D rotary ids, or any family's opaque positions): every token keeps the
position the uncompressed prompt gives it, and a summary takes the position of the visual token it
follows (the last of its group). Why: positions are then a pure function of the layout, so the
windowed path (which slices the one-pass layout) and the one-pass path use the same ones by
construction; Hugging Face caches keys after RoPE, so Video-XL's rule (positions contiguous over
kept tokens, RoPE re-applied to cached keys) would need a cache of pre-RoPE keys and could not be
matched by one masked forward; the text after the video, the visual tokens and ratio 1 keep
exactly today's positions; and a summary carries the time/place of what it summarises. The
price: positions grow with the video's length (as Qwen's temporal ids, tied to seconds, do
anyway), not with the kept tokens.

Ratio 1 means "keep this window uncompressed": no summaries, and its visual tokens stay in the
cache and stay visible (ratio 1 everywhere is exactly today's path). A video shorter than one
window is one partial window.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .. import masks
from ..config import Validated
from ..errors import ConfigError
from .adapter import VLMAdapter

KEPT, RAW, SUMMARY = 0, 1, 2  # token kinds: kept (text, uncompressed visual), raw visual (evicted), summary
NO_WINDOW = -1
DEFAULT_RATIOS = (2, 4, 8, 12, 16)
PARAMS_FILE = "summary_tokens.safetensors"
PROJECTIONS = ("q_proj", "k_proj", "v_proj")

log = logging.getLogger(__name__)

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
        """Hook the summary projections into `adapter`'s attention layers (after any peft wrapping)."""
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


# ------------------------------------------------------------------------------------------------
# Layout: where summaries go, their positions, kinds and windows
# ------------------------------------------------------------------------------------------------
def num_windows(num_visual: int, window: int) -> int:
    return max(1, math.ceil(num_visual / window))


@dataclasses.dataclass
class Layout:
    """A compressed sequence: summary slots interleaved in the visual span."""

    embeds: torch.Tensor  # [S', D]
    positions: torch.Tensor  # [..., S']
    kind: torch.Tensor  # [S'] KEPT / RAW / SUMMARY
    window_id: torch.Tensor  # [S'] window of visual and summary tokens, NO_WINDOW elsewhere
    source: torch.Tensor  # [S'] index into the uncompressed sequence (-1 for summaries)
    windows: list[tuple[int, int]]  # [start, stop) of each window in the compressed sequence
    labels: torch.Tensor | None = None  # [S'] next-token labels, -100 on visual and summary tokens

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @property
    def is_summary(self) -> torch.Tensor:
        return self.kind == SUMMARY

    @property
    def mask_fn(self) -> masks.MaskFn:
        return masks.visual_summary(self.kind, self.window_id)

    def refilled(self, embeds: torch.Tensor, summary_embedding: torch.Tensor) -> "Layout":
        """This layout over new embeddings `[S, D]` of the same uncompressed sequence and a summary
        embedding: the GRPO policy pass (with gradients) and reference pass (another model's)
        rebuild the very prefix the rollout decoded from."""
        if embeds.shape[0] <= int(self.source.max()):
            raise ValueError(f"embeddings of {embeds.shape[0]} tokens for a layout over {int(self.source.max()) + 1}")
        rows = embeds[self.source.clamp(min=0)]
        summary = summary_embedding.to(rows.dtype)[None].expand_as(rows)
        return dataclasses.replace(self, embeds=torch.where(self.is_summary[:, None], summary, rows))

    @property
    def compressed(self) -> bool:
        """Whether any raw visual token is evicted (False: ratio 1 everywhere, today's sequence)."""
        return bool((self.kind == RAW).any())

    def padded(self, length: int) -> "Layout":
        """Kinds and windows extended with plain text up to `length` (responses packed after it)."""
        extra = length - len(self)
        if extra < 0:
            raise ValueError(f"cannot pad a layout of {len(self)} tokens to {length}")
        kind = torch.cat([self.kind, self.kind.new_full((extra,), KEPT)])
        window_id = torch.cat([self.window_id, self.window_id.new_full((extra,), NO_WINDOW)])
        return dataclasses.replace(self, kind=kind, window_id=window_id)


def interleave(
    embeds: torch.Tensor,
    positions: torch.Tensor,
    visual_mask: torch.Tensor,
    summary_embedding: torch.Tensor | None,
    ratios: int | Sequence[int],
    window: int,
    labels: torch.Tensor | None = None,
) -> Layout:
    """Insert summary slots into the (one, contiguous) visual span of `embeds [S, D]`.

    `ratios`: one ratio for every window, or one per window (training draws them).
    `summary_embedding` may be None when every ratio is 1 (nothing compressed)."""
    visual = visual_mask.nonzero().flatten().to(embeds.device)
    if len(visual) == 0:
        raise ValueError("the sequence has no visual tokens to compress")
    first, count = int(visual[0]), len(visual)
    if int(visual[-1]) - first + 1 != count:
        raise ValueError("the visual tokens must form one contiguous span (one video per sequence)")
    if window <= 0:
        raise ConfigError(f"compression window must be > 0 visual tokens, got {window}")
    n_win = num_windows(count, window)
    per_window = [int(ratios)] * n_win if isinstance(ratios, int) else [int(r) for r in ratios]
    if len(per_window) != n_win:
        raise ValueError(f"{len(per_window)} ratios for {n_win} windows of {window} visual tokens")
    for r in per_window:
        if r <= 0:
            raise ConfigError(f"compression ratio must be > 0, got {r}")
        if r > window:
            raise ConfigError(f"compression ratio {r} is larger than the window of {window} visual tokens")

    if summary_embedding is None:
        if any(r != 1 for r in per_window):
            raise ConfigError("compression ratios above 1 need trained summary tokens (SummaryTokens)")
        summary_embedding = embeds.new_zeros(embeds.shape[-1])
    device = embeds.device
    summary_slot = embeds.shape[0]  # index of the summary embedding in the table gathered from below

    def plain(start: int, stop: int, kind: int = KEPT, window_id: int = NO_WINDOW):
        tokens = torch.arange(start, stop, device=device)
        return tokens, tokens, torch.full((stop - start,), kind, device=device), torch.full((stop - start,), window_id, device=device)

    parts = [plain(0, first)]  # each part: (source index, position source, kind, window id)
    windows, cursor = [], first
    for w, r in enumerate(per_window):
        start = first + w * window
        n = min(window, count - w * window)
        if r == 1:  # kept uncompressed: visible and cached like text
            parts.append(plain(start, start + n))
        else:
            g = torch.arange(math.ceil(n / r), device=device)
            group_end = torch.clamp((g + 1) * r, max=n)  # visual tokens up to and including each group
            slots = group_end + g  # summary g follows its group and the g summaries before it
            idx = torch.arange(n, device=device)
            src, pos, kind, wid = plain(0, n + len(g), RAW, w)
            src, pos, kind = src.clone(), pos.clone(), kind.clone()
            src[idx + idx // r] = pos[idx + idx // r] = idx + start
            src[slots] = summary_slot
            pos[slots] = start + group_end - 1  # a summary sits at the position of the token it follows
            kind[slots] = SUMMARY
            parts.append((src, pos, kind, wid))
        windows.append((cursor, cursor + len(parts[-1][0])))
        cursor = windows[-1][1]
    parts.append(plain(first + count, embeds.shape[0]))

    src, gather_pos, kind, window_id = (torch.cat(column) for column in zip(*parts))
    table = torch.cat([embeds, summary_embedding.to(embeds.dtype)[None]])
    out_labels = None
    if labels is not None:
        out_labels = torch.where(kind == KEPT, labels[src.clamp(max=summary_slot - 1)], -100)
    source = torch.where(kind == SUMMARY, -1, src)
    return Layout(
        embeds=table[src],
        positions=positions[..., gather_pos],
        kind=kind,
        window_id=window_id,
        source=source,
        windows=windows,
        labels=out_labels,
    )


def layout_for(
    adapter: VLMAdapter,
    summary: SummaryTokens,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    visual_mask: torch.Tensor,
    ratios: int | Sequence[int],
    labels: torch.Tensor | None = None,
) -> Layout:
    """`interleave` with the summary module's embedding and window; a single ratio is checked
    against the trained set (inference)."""
    if isinstance(ratios, int):
        summary.check_inference_ratio(ratios)
    return interleave(embeds, positions, visual_mask.to(embeds.device), summary.embedding, ratios, summary.window, labels)


# ------------------------------------------------------------------------------------------------
# Forwards: one masked pass (training, reference) and windowed prefill with eviction (inference)
# ------------------------------------------------------------------------------------------------
def masked_hidden_states(adapter: VLMAdapter, layout: Layout) -> torch.Tensor:
    """Hidden states `[S', D]` of the whole compressed sequence in one forward under its mask."""
    # With no raw visual token (ratio 1 everywhere) the mask is plain causal: today's path exactly.
    mask = masks.prepared_mask(layout.mask_fn, len(layout), layout.embeds.device) if layout.compressed else None
    with routing(layout.is_summary[None]):
        hidden, _ = adapter.hidden_states(layout.embeds[None], layout.positions.unsqueeze(-2), attention_mask=mask)
    return hidden[0]


@dataclasses.dataclass
class Prefilled:
    """A compressed prefix after windowed prefill: its cache holds only kept tokens and summaries."""

    cache: Any
    last_hidden: torch.Tensor  # [S_tail, D] hidden states of the text after the video
    positions: torch.Tensor  # [..., S'] positions of the whole layout (continuations follow them)
    kept: torch.Tensor  # [S_cache] layout indices of the tokens whose K/V the cache holds


@torch.no_grad()
def windowed_prefill(adapter: VLMAdapter, layout: Layout, cache: Any = None) -> Prefilled:
    """Prefill the prefix text, each window (then drop its raw visual K/V), then the text after.

    `cache` may be any transformers cache whose layers hold `keys`/`values` `[B, H, S, D]`
    (DynamicCache); None starts a DynamicCache."""
    if not layout.windows:
        raise ValueError("the layout has no windows")
    segments = [(0, layout.windows[0][0])] + list(layout.windows) + [(layout.windows[-1][1], len(layout))]
    if segments[-1][1] <= segments[-1][0]:
        raise ValueError("the sequence must have text after the video (the question, the assistant turn)")
    if not layout.compressed:  # nothing to evict: one pass, exactly today's prefill
        segments = [(0, len(layout))]
    kept = []
    hidden = None
    for a, b in segments:
        if b <= a:
            continue
        before = cache.get_seq_length() if cache is not None else 0
        with routing(layout.is_summary[None, a:b]):
            hidden, cache = adapter.hidden_states(
                layout.embeds[None, a:b], layout.positions[..., a:b].unsqueeze(-2), cache=cache, use_cache=True
            )
        keep = (layout.kind[a:b] != RAW).nonzero().flatten()
        if len(keep) < b - a:
            _evict(cache, before, keep)
        kept.append(keep + a)
    tail = len(layout) - layout.windows[-1][1]
    return Prefilled(cache, hidden[0, -tail:], layout.positions, torch.cat(kept))


def _evict(cache: Any, before: int, keep_in_segment: torch.Tensor) -> None:
    """Keep the first `before` cached tokens and, of the segment after them, `keep_in_segment`."""
    for layer in cache.layers:
        index = torch.cat([torch.arange(before, device=layer.keys.device), keep_in_segment.to(layer.keys.device) + before])
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)


def cache_bytes(cache: Any) -> int:
    """Bytes of the K/V tensors a transformers cache holds."""
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size() for layer in cache.layers)


def sp_hidden_states(sp: Any, layout: Layout) -> torch.Tensor:
    """`masked_hidden_states` through a `SequenceParallel` (a mesh of one is the plain path):
    this rank's hidden states, routed by this rank's shard of the summary mask."""
    is_summary = sp.shard(layout.is_summary.to(torch.uint8)).bool()
    with routing(is_summary[None]):
        return sp.hidden_states(layout.embeds, layout.positions, layout.mask_fn)


# ------------------------------------------------------------------------------------------------
# Rollout and GRPO over a compressed prefix. A trainer builds ONE layout per group (a ratio per
# window, drawn or fixed) and uses it everywhere, so rollout and training see the same inputs
# (rl/trainer.py does this with `TrainingCompression.prefix_layout` and `rollout_groups(layouts=)`):
#   layout = Compressor(summary, ratio).layout(prompt, embeds, positions)   # or interleave(...)
#   samples = compress.sample(adapter, layout, G, sampling_config)           # prefill once, evicted
#   layout = layout.refilled(embeds_with_grad, summary.embedding)           # the same layout, trainable
#   packed = rl.packing.pack(adapter, layout.embeds, layout.positions, responses)
#   logp = compress.packed_logprobs(adapter, layout, packed, sp=sp)          # policy and reference
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample(adapter: VLMAdapter, layout: Layout, num_samples: int, config: Any, **kwargs: Any):
    """`sampling.sample` over a compressed prefix: windowed prefill once (raw visual K/V evicted),
    the cache replicated for the G samples, decoding as usual."""
    from .sampling import sample as sample_from

    pre = windowed_prefill(adapter, layout)
    return sample_from(
        adapter, layout.embeds, layout.positions, num_samples, config, prefilled=(pre.last_hidden[-1], pre.cache), **kwargs
    )


def packed_mask(layout: Layout, packed: Any) -> tuple[masks.MaskFn, torch.Tensor]:
    """For `packed = rl.packing.pack(adapter, layout.embeds, layout.positions, responses)`: the
    composed mask (shared prefix AND visual summary) and the summary rows of the packed sequence."""
    if not torch.equal(packed.embeds[: len(layout)], layout.embeds):
        raise ValueError("the packed sequence does not start with this compressed prefix")
    padded = layout.padded(len(packed))
    if not layout.compressed:  # ratio 1 everywhere: the visual-summary mask is causal, today's pass
        return packed.mask_fn, padded.is_summary
    return masks.and_masks(packed.mask_fn, padded.mask_fn), padded.is_summary


def packed_logprobs(
    adapter: VLMAdapter, layout: Layout, packed: Any, *, temperature: float = 1.0, sp: Any = None
) -> torch.Tensor:
    """GRPO's packed pass `[compressed prefix | r1 | … | rG]`: per-token log-probs `[G, L]` (0 where
    padded) from one forward under the composed mask; with `sp`, sequence-parallel."""
    from .common import token_logprobs

    mask_fn, is_summary = packed_mask(layout, packed)
    if sp is None:
        mask = masks.prepared_mask(mask_fn, len(packed), packed.embeds.device)
        with routing(is_summary[None]):
            hidden = adapter.hidden_states(packed.embeds[None], packed.positions.unsqueeze(-2), attention_mask=mask)[0][0]
        logp = token_logprobs(adapter, hidden[packed.source_index], packed.targets, temperature=temperature)
    else:
        with routing(sp.shard(is_summary.to(torch.uint8)).bool()[None]):
            logp = sp.token_logprobs(
                packed.embeds, packed.positions, mask_fn, packed.source_index, packed.targets, temperature=temperature
            )
    return logp.masked_fill(~packed.mask, 0.0)


def continuation_logprobs(adapter: VLMAdapter, prefilled: Prefilled, continuations: list[torch.Tensor]) -> torch.Tensor:
    """Log-prob `[C]` of each token sequence continuing a prefilled prefix (multiple-choice scoring
    by likelihood): the cache replicated for the C candidates, one batched right-padded pass. The
    prefilled cache is consumed."""
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("continuation_logprobs needs at least one non-empty continuation")
    first = torch.log_softmax(adapter.logits(prefilled.last_hidden[-1]).double(), -1)
    device = prefilled.last_hidden.device
    width = max(len(c) for c in continuations)
    ids = torch.zeros(len(continuations), width, dtype=torch.long, device=device)
    for i, c in enumerate(continuations):
        ids[i, : len(c)] = c.to(device)
    total = first[ids[:, 0]]
    if width > 1:
        cache = prefilled.cache
        if len(continuations) > 1:
            cache.batch_repeat_interleave(len(continuations))
        pos = adapter.continuation_positions(prefilled.positions, width - 1)
        pos = pos.unsqueeze(-2).expand(*pos.shape[:-1], len(continuations), width - 1)
        hidden, _ = adapter.hidden_states(adapter.embed_tokens(ids[:, :-1]), pos, cache=cache, use_cache=True)
        logp = torch.log_softmax(adapter.logits(hidden).double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        steps = torch.arange(1, width, device=device)
        lengths = torch.tensor([len(c) for c in continuations], device=device)
        total = total + (logp * (steps[None] < lengths[:, None])).sum(-1)
    return total


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
