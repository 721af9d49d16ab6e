"""`longvid demo`: synthetic long videos → CoT-SFT of the tiny model → evaluation → report folder."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, VideoConfig
from .data.dataset import VideoDataset
from .eval.mcq import frames_scaling, markdown_table, write_result, evaluate
from .eval.plots import plot_category_bars, plot_curves, plot_frames_scaling
from .model import load_adapter
from .rl.trainer import GRPOConfig, GRPOTrainer
from .sft.trainer import SFTConfig, SFTTrainer
from .training import OptimConfig
from .synth import CATEGORIES, write_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    train_samples: int
    test_samples: int
    video_frames: int  # frames in each synthetic video file
    train_frames: int  # frames sampled per video for training
    sft_steps: int
    grad_accum: int
    lr: float  # SFT peak learning rate; GRPO uses GRPO_LR
    grpo_steps: int
    grpo_prompts: int  # prompts per GRPO step
    group_size: int
    scaling_frames: tuple[int, ...]
    scaling_samples: int


FULL = DemoPlan(800, 200, 64, 32, 500, 4, 3e-3, 40, 4, 8, (8, 16, 32, 64), 60)
QUICK = DemoPlan(160, 40, 16, 16, 80, 4, 3e-3, 4, 2, 4, (8, 16), 20)

GRPO_LR = 5e-5  # small steps: the tiny policy is easily pushed off what SFT taught it

# The tiny model learns these settings within the demo's minutes; `longvid data synth` keeps the
# harder defaults (distractors, several hops, order questions).
DEMO_TASKS = {
    "temporal": {"distractors": 0},
    "goal": {"progress": 1.0},
    "spatial": {"hops": 1, "distractors": 0},
    "plot": {"ask": "first"},
}


def run_demo(out: str | Path, *, quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    plan = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    train_jsonl, test_jsonl = (
        write_dataset(out / "data" / name, n, num_frames=plan.video_frames, seed=seed + offset, progress=progress, task_kwargs=DEMO_TASKS)
        for name, n, offset in (("train", plan.train_samples, 0), ("test", plan.test_samples, 10_000))
    )
    timings["data_s"] = time.perf_counter() - t

    video = VideoConfig(num_frames=plan.train_frames, size=56)
    train_set = VideoDataset.from_jsonl(train_jsonl, video=video, cache=True)
    test_set = VideoDataset.from_jsonl(test_jsonl, video=video, cache=True)
    train, test = train_set.samples, test_set.samples

    t = time.perf_counter()
    adapter = load_adapter(ModelConfig(seed=seed))
    config = SFTConfig(
        train=str(train_jsonl),
        out_dir=str(out / "sft"),
        video=video,
        optim=OptimConfig(lr=plan.lr, warmup_steps=plan.sft_steps // 10),
        steps=plan.sft_steps,
        grad_accum=plan.grad_accum,
        seed=seed,
        progress=progress,
        log_every=0,
    )
    history = SFTTrainer(adapter, config, train, train_set.load_frames).train()
    timings["sft_s"] = time.perf_counter() - t

    t = time.perf_counter()
    result = evaluate(adapter, test, test_set.load_frames, progress=progress, desc="eval (after SFT)")
    result.num_frames = plan.train_frames
    write_result(result, out, "eval_sft")
    timings["eval_sft_s"] = time.perf_counter() - t

    t = time.perf_counter()
    grpo_config = GRPOConfig(
        train=str(train_jsonl),
        out_dir=str(out / "grpo"),
        video=video,
        optim=OptimConfig(lr=GRPO_LR, warmup_steps=0),
        steps=plan.grpo_steps,
        batch_size=plan.grpo_prompts,
        group_size=plan.group_size,
        max_new_tokens=64,
        seed=seed,
        progress=progress,
        log_every=0,
    )
    grpo_history = GRPOTrainer(adapter, grpo_config, train, train_set.load_frames, video_key=train_set.video_key).train()
    timings["grpo_s"] = time.perf_counter() - t

    t = time.perf_counter()
    sft_result, result = result, evaluate(adapter, test, test_set.load_frames, progress=progress, desc="eval (after GRPO)")
    result.num_frames = plan.train_frames
    write_result(result, out, "eval_grpo")
    subset = test[: plan.scaling_samples]
    scaling = frames_scaling(
        adapter,
        subset,
        lambda n: VideoDataset(subset, root=test_jsonl.parent, video=VideoConfig(num_frames=n, size=56)).load_frames,
        list(plan.scaling_frames),
        progress=progress,
    )
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    plot_curves({"train loss": [(h["step"], h["loss"]) for h in history]}, out / "sft_loss.png", title="CoT-SFT loss", ylabel="loss (nats per response token)")
    plot_curves(
        {name: [(h["step"], h[key]) for h in grpo_history] for name, key in (("total", "reward"), ("accuracy", "reward/accuracy"), ("format", "reward/format"))},
        out / "grpo_reward.png", title="GRPO reward (training rollouts)", ylabel="mean reward per response",
    )
    stages = {"after SFT": sft_result, "after GRPO": result}
    plot_category_bars({name: {c: v["accuracy"] for c, v in r.per_category.items()} for name, r in stages.items()}, out / "accuracy_by_category.png", chance=result.chance)
    plot_frames_scaling({"after GRPO": [(r.num_frames, r.accuracy) for r in scaling]}, out / "frames_scaling.png", chance=scaling[0].chance)

    metrics = {
        "accuracy": result.accuracy,
        "chance": result.chance,
        "accuracy_after_sft": sft_result.accuracy,
        "per_category": result.per_category,
        "per_category_after_sft": sft_result.per_category,
        "grpo": [{k: h[k] for k in ("step", "reward", "reward/accuracy", "reward/format", "kl", "drift")} for h in grpo_history],
        "frames_scaling": [{"frames": r.num_frames, "accuracy": r.accuracy} for r in scaling],
        "final_train_loss": history[-1]["loss"],
        "plan": plan.__dict__,
        "timings": timings,
        "categories": list(CATEGORIES),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.md").write_text(_report(plan, stages, scaling, grpo_history, timings, quick))
    log.info("demo done in %.0f s: accuracy %.3f (chance %.3f); report in %s", timings["total_s"], result.accuracy, result.chance, out)
    return metrics


def _report(plan: DemoPlan, stages: dict, scaling, grpo_history, timings: dict[str, float], quick: bool) -> str:
    sft, grpo = stages["after SFT"], stages["after GRPO"]
    scaling_rows = "\n".join(f"| {r.num_frames} | {100 * r.accuracy:.1f} |" for r in scaling)
    first, last = grpo_history[0], grpo_history[-1]
    return f"""# longvid demo{' (quick)' if quick else ''}

Tiny Qwen2.5-VL (embedded default, random init) trained with CoT-SFT then GRPO on synthetic
long-video reasoning questions, evaluated on {plan.test_samples} held-out questions. Task settings:
{", ".join(f"{task} {kw}" for task, kw in DEMO_TASKS.items())}.

**Held-out accuracy: {100 * sft.accuracy:.1f}% after SFT, {100 * grpo.accuracy:.1f}% after GRPO** — chance is {100 * grpo.chance:.1f}%.

{markdown_table(stages)}

## GRPO

{plan.grpo_steps} steps of {plan.grpo_prompts} prompts x {plan.group_size} responses. Training-rollout reward
{first['reward']:.3f} → {last['reward']:.3f} (accuracy {first['reward/accuracy']:.3f} → {last['reward/accuracy']:.3f});
rollout/training log-prob drift at most {max(h['drift_max'] for h in grpo_history):.1e} (same inputs by construction).

![reward](grpo_reward.png)

## Frames scaling (first {plan.scaling_samples} test questions; trained at {plan.train_frames} frames)

| frames | accuracy (%) |
| ---: | ---: |
{scaling_rows}

![loss](sft_loss.png) ![categories](accuracy_by_category.png) ![frames](frames_scaling.png)

## Run

{plan.train_samples} training videos of {plan.video_frames} frames (56x56), {plan.train_frames} frames sampled per
video, {plan.sft_steps} SFT steps of {plan.grad_accum} samples. Wall time: data {timings['data_s']:.0f} s,
SFT {timings['sft_s']:.0f} s, GRPO {timings['grpo_s']:.0f} s, evaluation {timings['eval_sft_s'] + timings['eval_s']:.0f} s,
total {timings['total_s']:.0f} s.
"""
