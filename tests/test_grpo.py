"""GRPO advantages and loss against values worked out by hand in each test."""

import math

import pytest
import torch

from longvid.rl.grpo import group_advantages, grpo_loss

# ---------------------------------------------------------------------------------------------
# Advantages: 2 groups of 2. Group 0 rewards (1, 0), group 1 rewards (0.5, 0.5).
REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5])


def test_group_scaling_uses_unbiased_group_std():
    # Group 0: mean 0.5, deviations +-0.5, unbiased variance (0.25 + 0.25) / (2 - 1) = 0.5.
    std0 = math.sqrt(0.5)
    expected = [0.5 / (std0 + 1e-4), -0.5 / (std0 + 1e-4), 0.0, 0.0]
    got = group_advantages(REWARDS, group_size=2, scale_rewards="group")
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_batch_scaling_uses_unbiased_batch_std_and_group_mean():
    # Batch mean 0.5; deviations 0.5, -0.5, 0, 0; unbiased variance 0.5 / 3 (a biased one is 0.5 / 4).
    std = math.sqrt(0.5 / 3)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0]
    got = group_advantages(REWARDS, group_size=2, scale_rewards="batch")
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_batch_scaling_centres_on_the_group_mean_not_the_batch_mean():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])  # two all-equal groups with different means
    got = group_advantages(rewards, group_size=2, scale_rewards="batch")
    assert got.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_no_scaling_only_centres():
    got = group_advantages(REWARDS, group_size=2, scale_rewards="none")
    assert got.tolist() == [0.5, -0.5, 0.0, 0.0]


def test_two_dimensional_rewards_match_flat_ones():
    grouped = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    # Group 0: mean 2, deviations 1, -1, 0, unbiased variance 2 / 2 = 1, std 1.
    expected = [1 / 1.0001, -1 / 1.0001, 0.0, 0.0, 0.0, 0.0]
    assert group_advantages(grouped, group_size=3).tolist() == pytest.approx(expected, rel=1e-6)
    assert group_advantages(grouped.reshape(-1), group_size=3).tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_rewards_give_zero_advantage_not_nan(scale):
    got = group_advantages(torch.full((6,), 0.7), group_size=3, scale_rewards=scale)
    assert torch.isfinite(got).all()
    assert got.abs().max().item() < 1e-5  # 0.7 is not exact in float32; the deviation is ~1e-8


def test_single_sample_groups_give_zero_advantage():
    got = group_advantages(torch.tensor([3.0, 5.0]), group_size=1, scale_rewards="group")
    assert got.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "rewards, group_size",
    [(torch.ones(5), 2), (torch.ones(2, 3), 2), (torch.tensor([1.0, float("nan")]), 2), (torch.ones(4), 0)],
)
def test_advantage_input_errors(rewards, group_size):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size)


def test_unknown_scale_mode_is_an_error():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(REWARDS, 2, scale_rewards="std")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Loss: 2 sequences, 3 token slots. Sequence 0 has 3 tokens and A = +1; sequence 1 has 2 tokens
# (its third slot is padding holding garbage) and A = -2. Log-ratios logp - old_logp are
#   seq 0: 0, +0.5, -0.5      seq 1: +0.1, -0.4
# With eps = 0.2 the per-token losses -min(r*A, clip(r)*A) are, by hand:
#   seq 0 (A=+1): r=1 -> -1;  r=e^0.5=1.6487 -> -min(1.6487, 1.2) = -1.2;  r=e^-0.5=0.6065 -> -0.6065
#   seq 1 (A=-2): -min(-2r, -2clip) = 2*max(r, clip): r=e^0.1=1.1052 -> 2.2103;  r=e^-0.4=0.6703 -> 2*0.8 = 1.6
LOGP = [[-1.0, -0.5, -2.0], [-1.5, -0.3, -9.9]]
LOG_RATIO = [[0.0, 0.5, -0.5], [0.1, -0.4, 0.0]]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -2.0])
SEQ0 = [-1.0, -1.2, -math.exp(-0.5)]
SEQ1 = [2 * math.exp(0.1), 2 * 0.8]
TOKEN_SUM = sum(SEQ0) + sum(SEQ1)


def _inputs(requires_grad=False):
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=requires_grad)
    old = torch.tensor(LOGP, dtype=torch.float64) - torch.tensor(LOG_RATIO, dtype=torch.float64)
    return logp, old


@pytest.mark.parametrize(
    "loss_type, kwargs, expected",
    [
        ("grpo", {}, (sum(SEQ0) / 3 + sum(SEQ1) / 2) / 2),
        ("bnpo", {}, TOKEN_SUM / 5),
        ("dr_grpo", {"max_completion_length": 4}, TOKEN_SUM / (2 * 4)),
        ("dapo", {"num_items_in_batch": 10}, TOKEN_SUM / 10),
        ("dapo", {"num_items_in_batch": 10, "num_processes": 2}, TOKEN_SUM / 5),
        ("dapo", {}, TOKEN_SUM / 5),  # default normaliser: this micro-batch's 5 tokens
    ],
)
def test_loss_types_match_hand_computation(loss_type, kwargs, expected):
    logp, old = _inputs()
    loss, _ = grpo_loss(logp, old, None, ADV, MASK, loss_type=loss_type, **kwargs)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_gradient_accumulation_divides_all_but_dapo():
    logp, old = _inputs()
    for loss_type, kwargs in [("grpo", {}), ("bnpo", {}), ("dr_grpo", {"max_completion_length": 4})]:
        one, _ = grpo_loss(logp, old, None, ADV, MASK, loss_type=loss_type, **kwargs)
        four, _ = grpo_loss(
            logp, old, None, ADV, MASK, loss_type=loss_type, gradient_accumulation_steps=4, **kwargs
        )
        assert four.item() == pytest.approx(one.item() / 4, rel=1e-12)
    dapo, _ = grpo_loss(
        logp, old, None, ADV, MASK, loss_type="dapo", num_items_in_batch=20, gradient_accumulation_steps=4
    )
    assert dapo.item() == pytest.approx(TOKEN_SUM / 20, rel=1e-9)


def test_clip_metrics_count_only_clips_that_bind():
    logp, old = _inputs()
    _, metrics = grpo_loss(logp, old, None, ADV, MASK)
    # High clip binds at seq 0 token 1 (r=1.65 > 1.2, A>0); low clip at seq 1 token 1 (r=0.67 < 0.8,
    # A<0). Seq 0 token 2 has r=0.61 < 0.8 but A>0, where the clip does not bind.
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(2 / 5)
    ratios = [1.0, math.exp(0.5), math.exp(-0.5), math.exp(0.1), math.exp(-0.4)]
    assert metrics["ratio/mean"].item() == pytest.approx(sum(ratios) / 5)
    assert metrics["ratio/min"].item() == pytest.approx(math.exp(-0.5))
    assert metrics["ratio/max"].item() == pytest.approx(math.exp(0.5))
    assert metrics["num_tokens"].item() == 5
    assert "kl" not in metrics
    assert all(not v.requires_grad for v in metrics.values())


def test_gradients_vanish_where_clipped_and_follow_the_advantage_elsewhere():
    logp, old = _inputs(requires_grad=True)
    loss, _ = grpo_loss(logp, old, None, ADV, MASK, loss_type="grpo")
    loss.backward()
    # d loss / d logp = -A * r / (N * len) on unclipped tokens, 0 on clipped ones and padding.
    expected = [
        [-1 * 1.0 / (2 * 3), 0.0, -1 * math.exp(-0.5) / (2 * 3)],
        [2 * math.exp(0.1) / (2 * 2), 0.0, 0.0],
    ]
    assert logp.grad.tolist() == [pytest.approx(row, rel=1e-9, abs=1e-15) for row in expected]


def test_on_policy_gradient_is_the_policy_gradient():
    # old_logp None: ratio = 1 in value, and d loss / d logp = -A / (N * len).
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    loss, metrics = grpo_loss(logp, None, None, ADV, MASK)
    assert loss.item() == pytest.approx((-1 * 3 / 3 + 2 * 2 / 2) / 2)
    loss.backward()
    assert logp.grad.tolist() == [pytest.approx([-1 / 6] * 3), pytest.approx([0.5, 0.5, 0.0])]
    assert metrics["ratio/mean"].item() == 1.0


# KL: one sequence, two tokens, A = 0 so only the penalty remains. d = ref - logp = (-0.5, +1).
# k3 = e^d - d - 1: e^-0.5 + 0.5 - 1 = 0.10653, e^1 - 1 - 1 = 0.71828.
KL_LOGP = [[-1.0, -2.0]]
KL_REF = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
K3 = [math.exp(-0.5) + 0.5 - 1, math.e - 2]


def test_kl_penalty_without_correction():
    logp = torch.tensor(KL_LOGP, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.2, -2.0]], dtype=torch.float64)  # log-ratios 0.2, 0: ignored here
    loss, metrics = grpo_loss(logp, old, KL_REF, torch.zeros(1), torch.ones(1, 2), beta=0.1, kl_ratio_correction=False)
    assert loss.item() == pytest.approx(0.1 * (K3[0] + K3[1]) / 2, rel=1e-9)
    assert metrics["kl"].item() == pytest.approx((K3[0] + K3[1]) / 2, rel=1e-9)
    loss.backward()
    # d k3 / d logp = 1 - e^d: pulls logp towards ref (negative where ref is above logp).
    assert logp.grad.tolist() == [pytest.approx([0.1 * (1 - math.exp(-0.5)) / 2, 0.1 * (1 - math.e) / 2])]
    assert logp.grad[0, 1] < 0 < logp.grad[0, 0]


def test_kl_penalty_with_ratio_correction():
    logp = torch.tensor(KL_LOGP, dtype=torch.float64)
    old = torch.tensor([[-1.2, -2.0]], dtype=torch.float64)  # ratios e^0.2 and 1
    loss, metrics = grpo_loss(
        logp, old, KL_REF, torch.zeros(1), torch.ones(1, 2), beta=0.1, kl_ratio_correction=True
    )
    corrected = [K3[0] * math.exp(0.2), K3[1] * 1.0]
    assert loss.item() == pytest.approx(0.1 * sum(corrected) / 2, rel=1e-9)
    assert metrics["kl"].item() == pytest.approx(sum(corrected) / 2, rel=1e-9)


def test_ratio_correction_changes_the_on_policy_gradient():
    # On-policy the ratio is 1 in value but has derivative 1, so d(k3 * ratio) = d k3 + k3.
    logp = torch.tensor(KL_LOGP, dtype=torch.float64, requires_grad=True)
    loss, _ = grpo_loss(logp, None, KL_REF, torch.zeros(1), torch.ones(1, 2), beta=0.1, kl_ratio_correction=True)
    loss.backward()
    expected = [0.1 * (1 - math.exp(-0.5) + K3[0]) / 2, 0.1 * (1 - math.e + K3[1]) / 2]
    assert logp.grad.tolist() == [pytest.approx(expected, rel=1e-9)]


def test_kl_is_reported_but_not_added_when_beta_is_zero():
    logp = torch.tensor(KL_LOGP, dtype=torch.float64)
    loss, metrics = grpo_loss(logp, None, KL_REF, torch.zeros(1), torch.ones(1, 2), beta=0.0)
    assert loss.item() == 0.0
    assert metrics["kl"].item() == pytest.approx((K3[0] + K3[1]) / 2)


def test_dual_clip_caps_negative_advantage_loss():
    # Tokens: (A=-1, r=5), (A=-1, r=2), and a second sequence (A=+1, r=5).
    logp = torch.tensor([[math.log(5), math.log(2)], [math.log(5), 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 2, dtype=torch.float64)
    adv = torch.tensor([-1.0, 1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    plain, _ = grpo_loss(logp, old, None, adv, mask, loss_type="bnpo")
    # Without the dual clip: max(r, clip(r)) * |A| = 5 and 2; the A>0 token gives -min(5, 1.2) = -1.2.
    assert plain.item() == pytest.approx((5 + 2 - 1.2) / 3)
    dual, metrics = grpo_loss(logp, old, None, adv, mask, loss_type="bnpo", dual_clip=3.0)
    # verl: min(5, 3 * 1) = 3 for the first token; the others are unchanged.
    assert dual.item() == pytest.approx((3 + 2 - 1.2) / 3)
    assert metrics["clip_ratio/dual_mean"].item() == pytest.approx(1 / 3)
    dual.backward()
    # Capped token: constant loss, no gradient. Token r=2 (A=-1): d(r)/d logp = r = 2, / 3 tokens.
    assert logp.grad.tolist() == [pytest.approx([0.0, 2 / 3]), pytest.approx([0.0, 0.0])]


def test_log_ratio_clamp_bounds_the_ratio():
    logp = torch.tensor([[50.0]], dtype=torch.float64)
    old = torch.zeros(1, 1, dtype=torch.float64)
    unclamped, _ = grpo_loss(logp, old, None, torch.tensor([-1.0]), torch.ones(1, 1))
    assert unclamped.item() == pytest.approx(math.exp(50))
    clamped, metrics = grpo_loss(logp, old, None, torch.tensor([-1.0]), torch.ones(1, 1), log_ratio_clamp=20.0)
    assert clamped.item() == pytest.approx(math.exp(20))
    assert metrics["ratio/max"].item() == pytest.approx(math.exp(20))


def test_k3_clamp_bounds_the_penalty():
    logp = torch.tensor([[-6.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.0]], dtype=torch.float64)  # d = 5: k3 = e^5 - 6 = 142.4
    loss, _ = grpo_loss(logp, None, ref, torch.zeros(1), torch.ones(1, 1), beta=1.0)
    assert loss.item() == pytest.approx(math.exp(5) - 6)
    loss, _ = grpo_loss(logp, None, ref, torch.zeros(1), torch.ones(1, 1), beta=1.0, k3_clamp=10.0, kl_ratio_correction=False)
    assert loss.item() == 10.0
    loss.backward()
    assert logp.grad.item() == 0.0


@pytest.mark.parametrize("garbage", [float("-inf"), float("nan"), 1e30])
def test_padding_garbage_does_not_leak(garbage):
    logp, old = _inputs(requires_grad=False)
    logp = logp.detach().clone()
    logp[1, 2] = garbage
    old[1, 2] = -garbage if garbage == garbage else garbage
    ref = logp.detach().clone() - 0.1
    ref[1, 2] = garbage
    logp.requires_grad_(True)
    loss, metrics = grpo_loss(logp, old, ref, ADV, MASK, beta=0.04, loss_type="bnpo")
    clean_logp, clean_old = _inputs()
    clean_ref = clean_logp - 0.1
    clean, _ = grpo_loss(clean_logp, clean_old, clean_ref, ADV, MASK, beta=0.04, loss_type="bnpo")
    assert loss.item() == pytest.approx(clean.item(), rel=1e-12)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[1, 2] == 0.0
    assert all(torch.isfinite(v) for v in metrics.values())


def test_gradients_are_finite_and_descend_on_a_random_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    logp = torch.nn.functional.logsigmoid(logits)
    old = logp.detach() + 0.05 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    ref = logp.detach() + 0.05 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    mask = torch.ones(4, 5)
    mask[2, 3:] = 0
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        logits.grad = None
        loss, _ = grpo_loss(
            logp, old, ref, adv, mask, beta=0.04, loss_type=loss_type, max_completion_length=5, dual_clip=3.0
        )
        loss.backward(retain_graph=True)
        assert torch.isfinite(logits.grad).all()
        # A small step against the gradient lowers the loss.
        with torch.no_grad():
            stepped_logp = torch.nn.functional.logsigmoid(logits - 1e-3 * logits.grad)
        stepped, _ = grpo_loss(
            stepped_logp, old, ref, adv, mask, beta=0.04, loss_type=loss_type, max_completion_length=5, dual_clip=3.0
        )
        assert stepped.item() < loss.item()


def test_positive_advantage_raises_log_probs_on_policy():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, None, None, torch.tensor([0.7]), torch.ones(1, 2))
    loss.backward()
    assert (logp.grad < 0).all()  # gradient descent increases logp


def test_empty_sequence_counts_in_the_grpo_mean():
    # As TRL: the mean is over all N sequences; one with no tokens adds 0 (its length clamps to 1).
    logp = torch.zeros(2, 2, dtype=torch.float64)
    mask = torch.tensor([[1, 1], [0, 0]])
    loss, metrics = grpo_loss(logp, None, None, torch.tensor([1.0, 1.0]), mask)
    assert loss.item() == pytest.approx((-1.0 + 0.0) / 2)
    empty, metrics = grpo_loss(logp, None, None, torch.tensor([1.0, 1.0]), torch.zeros(2, 2))
    assert empty.item() == 0.0 and metrics["ratio/min"].item() == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "dr_grpo"}, "max_completion_length"),
        ({"loss_type": "sum"}, "loss_type"),
        ({"beta": 0.1}, "ref_logp"),
        ({"dual_clip": 1.0}, "dual_clip"),
    ],
)
def test_loss_argument_errors(kwargs, match):
    logp, old = _inputs()
    with pytest.raises(ValueError, match=match):
        grpo_loss(logp, old, None, ADV, MASK, **kwargs)


def test_loss_shape_errors():
    logp, old = _inputs()
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, None, torch.ones(3), MASK)
    with pytest.raises(ValueError, match="old_logp"):
        grpo_loss(logp, old[:, :2], None, ADV, MASK)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, old, None, ADV, MASK[:, :2])


def test_the_kl_ratio_correction_default_is_trls():
    """TRL 1.16 multiplies k3 by the ratio by default (`use_bias_correction_kl=True`, PR #6503; it was
    False through 1.9): so do `grpo_loss` and `GRPOConfig`. Checked against the installed TRL."""
    import dataclasses
    import inspect

    trl = pytest.importorskip("trl")
    from longvid.rl.trainer import GRPOConfig

    trl_default = next(f.default for f in dataclasses.fields(trl.GRPOConfig) if f.name == "use_bias_correction_kl")
    assert inspect.signature(grpo_loss).parameters["kl_ratio_correction"].default is trl_default
    assert next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "kl_ratio_correction") is trl_default
