"""The GRPO objective, numerically as TRL's `GRPOTrainer` computes it, plus verl's safety options.

Advantages come from a group's rewards (`group_advantages`); the loss (`grpo_loss`) is PPO's
clipped surrogate per token with an optional k3 KL penalty to a reference policy, aggregated by
one of TRL's loss types.

Several optimisation passes per batch (TRL `num_iterations` > 1, or more optimizer steps per
generation than accumulation steps): the trainer computes the policy's log-probs once, before
any update (from the rollout or a first no-grad pass), stores them as `old_logp`, and passes
them to every pass. With a single on-policy pass it may pass `old_logp=None`: the ratio is then
`exp(logp - logp.detach())`, 1 in value, with the policy gradient in its derivative (as TRL).
"""

from __future__ import annotations

from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ADVANTAGE_EPS = 1e-4  # TRL adds this to the std before dividing


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: ScaleRewards = "group"
) -> torch.Tensor:
    """Group-relative advantages `[B*G]` from rewards `[B*G]` (groups contiguous) or `[B, G]`.

    A = r - mean(group), divided by (std + 1e-4) where std is the group's ("group", TRL's
    default), the whole batch's ("batch"; the mean stays per group), or not divided ("none").
    Both stds are unbiased (n-1), as TRL's `tensor.std()`. A std that cannot be computed (one
    sample) counts as 0, as TRL does; so an all-equal group gets advantage 0, never NaN.
    In a distributed run pass the rewards of the whole generation batch (TRL gathers them first):
    a group's members may sit on different ranks, and "batch" means the global batch.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() == 2 and rewards.shape[1] != group_size:
        raise ValueError(f"rewards have shape {tuple(rewards.shape)} but group_size is {group_size}")
    if rewards.dim() not in (1, 2) or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; combine reward functions with a nansum first")
    grouped = rewards.reshape(-1, group_size).float()
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards == "none":
        return centered.reshape(-1)
    if scale_rewards == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
    elif scale_rewards == "batch":
        std = grouped.std() if grouped.numel() > 1 else torch.zeros(())
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return (centered / (std + ADVANTAGE_EPS)).reshape(-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / count


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | torch.Tensor | None = None,
    num_processes: int = 1,
    gradient_accumulation_steps: float = 1,
    kl_ratio_correction: bool = True,
    log_ratio_clamp: float | None = None,
    dual_clip: float | None = None,
    k3_clamp: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss of N completions of up to T tokens. Returns (loss, detached scalar metrics).

    logp, old_logp, ref_logp, mask: `[N, T]` (mask 1/True on completion tokens); advantages `[N]`.
    Per token: ratio = exp(logp - old_logp), l = -min(ratio*A, clamp(ratio, 1-eps_low, 1+eps_high)*A),
    plus beta * k3 with k3 = exp(ref - logp) - (ref - logp) - 1 when beta != 0.

    kl_ratio_correction: multiply k3 by the ratio (TRL's `use_bias_correction_kl`, DeepSeek-V3.2);
    on by default, as in TRL 1.16 (it was off through TRL 1.9). It changes gradients even
    on-policy, where the ratio is 1 in value.
    Aggregation (TRL): "grpo" mean over sequences of per-sequence token means; "bnpo" token mean of
    this micro-batch; "dr_grpo" sum / (N * max_completion_length); "dapo" sum / (num_items_in_batch
    / num_processes), num_items_in_batch being the completion tokens of the whole generation batch
    over all ranks and accumulation steps (default: this micro-batch's), so that DDP's gradient
    mean across ranks gives the global token mean. As in TRL, grpo/bnpo/dr_grpo are divided by
    `gradient_accumulation_steps` and dapo is not (its normaliser already spans them). It may be
    fractional: after DAPO's filter the trainer passes the kept groups per rank on average.

    verl/EasyR1 safety options, off by default:
    log_ratio_clamp: clamp logp - old_logp and ref - logp to +-c before exp (verl: 20).
    dual_clip: c > 1 (verl `clip_ratio_c`, 3). For A < 0 the token loss becomes
        min(max(-A*ratio, -A*clamp(ratio, 1-eps_low, 1+eps_high)), -A*c): the PPO loss, which is
        unbounded in the ratio when A < 0, is capped at c*|A|, and stops pushing past ratio c.
    k3_clamp: clamp k3 to +-c (verl: 10; k3 >= 0 so only the top binds).
    """
    if logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp {tuple(logp.shape)} and mask {tuple(mask.shape)} must both be [N, T]")
    for name, other in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if other is not None and other.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(other.shape)}, logp {tuple(logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages have shape {tuple(advantages.shape)}, expected ({logp.shape[0]},)")
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")

    valid = mask.bool()
    m = valid.to(logp.dtype)
    # Padding may hold garbage (-inf, NaN); zero it before any arithmetic so that neither the loss
    # nor its gradient can pick up 0 * inf. Where all inputs are finite this equals TRL's masking.
    logp = logp.masked_fill(~valid, 0.0)
    old = logp.detach() if old_logp is None else old_logp.masked_fill(~valid, 0.0)
    adv = advantages.to(logp.dtype).unsqueeze(1)

    log_ratio = logp - old
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)
    if dual_clip is not None:
        capped = torch.min(per_token, -adv * dual_clip)
        dual_clipped = (per_token > -adv * dual_clip) & (adv < 0)
        per_token = torch.where(adv < 0, capped, per_token)

    kl = None
    if ref_logp is not None:
        ref_minus_logp = ref_logp.masked_fill(~valid, 0.0) - logp
        if log_ratio_clamp is not None:
            ref_minus_logp = ref_minus_logp.clamp(-log_ratio_clamp, log_ratio_clamp)
        kl = torch.exp(ref_minus_logp) - ref_minus_logp - 1
        if k3_clamp is not None:
            kl = kl.clamp(-k3_clamp, k3_clamp)
        if kl_ratio_correction:
            kl = kl * ratio
        if beta != 0.0:
            per_token = per_token + beta * kl

    token_sum = (per_token * m).sum()
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean() / gradient_accumulation_steps
    elif loss_type == "bnpo":
        loss = token_sum / m.sum().clamp(min=1.0) / gradient_accumulation_steps
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        loss = token_sum / (logp.shape[0] * max_completion_length) / gradient_accumulation_steps
    elif loss_type == "dapo":
        total = m.sum().clamp(min=1.0) if num_items_in_batch is None else num_items_in_batch / num_processes
        loss = token_sum / total
    else:
        raise ValueError(f"loss_type must be 'grpo', 'bnpo', 'dr_grpo' or 'dapo', got {loss_type!r}")

    # Metrics as TRL logs them: token means over this micro-batch. A token counts as clipped only
    # where the clip changes the loss (low side for A < 0, high side for A > 0).
    with torch.no_grad():
        count = m.sum().clamp(min=1.0)
        low = (ratio < 1 - epsilon_low) & (adv < 0)
        high = (ratio > 1 + epsilon_high) & (adv > 0)
        metrics = {
            "clip_ratio/low_mean": _masked_mean(low.to(m.dtype), m, count),
            "clip_ratio/high_mean": _masked_mean(high.to(m.dtype), m, count),
            "clip_ratio/region_mean": _masked_mean((low | high).to(m.dtype), m, count),
            "ratio/mean": _masked_mean(ratio, m, count),
            "ratio/min": ratio.masked_fill(~valid, float("inf")).min() if valid.any() else torch.ones(()),
            "ratio/max": ratio.masked_fill(~valid, float("-inf")).max() if valid.any() else torch.ones(()),
            "num_tokens": m.sum(),
        }
        if kl is not None:
            metrics["kl"] = _masked_mean(kl, m, count)
        if dual_clip is not None:
            metrics["clip_ratio/dual_mean"] = _masked_mean(dual_clipped.to(m.dtype), m, count)
        metrics = {k: v.detach() for k, v in metrics.items()}
    return loss, metrics
