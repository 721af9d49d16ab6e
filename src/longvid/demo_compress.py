"""`longvid demo --compress`: Video-XL's visual summary tokens on the tiny model, judged by video
needle-in-a-haystack.

Needle rows (spec videos: grey haystack, a coloured flash, "what colour?", needle lengths from 2
frames to the whole video: the curriculum a randomly initialised model needs) → uncompressed SFT of
the tiny model (the trained VLM Video-XL starts from) → SFT with summary tokens, a compression
ratio drawn per window (Video-XL's recipe) → NIAH over haystack length x needle depth at ratios 1
(no compression), 4 and 16, plus a control (the uncompressed-trained model through fresh summary
tokens) → heatmaps, a markdown table, metrics.json and report.md.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import VideoConfig
from .data.schema import write_jsonl
from .eval import niah
from .eval.plots import plot_curves
from .model.compress import CompressConfig, Compressor, SummaryTokens
from .model.tiny import build_tiny_adapter
from .sft.trainer import SFTConfig, SFTTrainer
from .synth import needle_haystack, render_spec
from .synth.haystack import needle_training_rows
from .training import OptimConfig

log = logging.getLogger(__name__)

CONTROL_RATIO = 16
SIZE = 56  # 2x2 visual tokens per frame pair for the tiny Qwen2.5-VL: a frame pair is 4 tokens


@dataclass(frozen=True)
class CompressDemoPlan:
    train_samples: int
    train_frames: tuple[int, ...]  # haystack lengths of the training rows
    needle_lengths: tuple[int | None, ...]  # flash lengths in frames drawn per row (None: the whole video)
    base_steps: int  # uncompressed SFT first (the pretrained VLM Video-XL starts from); 0: none
    steps: int  # then SFT with summary tokens, a ratio drawn per window
    grad_accum: int
    lr: float  # uncompressed SFT
    compress_lr: float  # the summary-token phase fine-tunes a trained model: a high rate undoes it
    window: int  # visual tokens per compression window (4 per frame pair)
    ratios: tuple[int, ...]  # trained ratios, one drawn per window (1 = that window uncompressed)
    eval_frames: tuple[int, ...]
    depths: tuple[float, ...]
    trials: int  # needles per cell, a multiple of 4: a video-blind model scores exactly chance
    eval_ratios: tuple[int, ...] = (1, 4, 16)
    model: tuple[tuple[str, int], ...] = ()  # tiny-model sizes (`tiny_config` keywords); () = the default


FULL = CompressDemoPlan(
    train_samples=1200, train_frames=(16, 32, 64), needle_lengths=(2, 2, 4, 8, 16, None), base_steps=200, steps=900,
    grad_accum=4, lr=2e-3, compress_lr=1e-3, window=32, ratios=(1, 2, 4, 8, 12, 16),
    eval_frames=(32, 64, 128, 256), depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=8,
)
QUICK = CompressDemoPlan(
    train_samples=400, train_frames=(16, 32, 64), needle_lengths=(2, 2, 4, 8, 16, None), base_steps=150, steps=300,
    grad_accum=4, lr=2e-3, compress_lr=1e-3, window=32, ratios=(1, 2, 4, 8, 12, 16),
    eval_frames=(32, 64), depths=(0.0, 0.5, 1.0), trials=8,
)


def run_compress_demo(out: str | Path, *, quick: bool = False, seed: int = 0, progress: bool = True,
                      plan: CompressDemoPlan | None = None) -> dict:
    plan = plan or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    rows = needle_training_rows(plan.train_samples, plan.train_frames, plan.needle_lengths, size=SIZE, seed=seed)
    train_jsonl = out / "data" / "train.jsonl"
    train_jsonl.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(train_jsonl, rows)

    t = time.perf_counter()
    adapter = build_tiny_adapter(seed=seed, **dict(plan.model))

    def sft(name: str, steps: int, lr: float, compress: CompressConfig | None, run_seed: int) -> SFTTrainer:
        config = SFTConfig(
            train=str(train_jsonl),
            out_dir=str(out / name),
            video=VideoConfig(num_frames=max(plan.train_frames), size=SIZE),
            optim=OptimConfig(lr=lr, warmup_steps=steps // 10),
            compress=compress,
            steps=steps,
            grad_accum=plan.grad_accum,
            seed=run_seed,
            progress=progress,
            log_every=0,
        )
        trainer = SFTTrainer(adapter, config, rows, lambda sample: render_spec(sample.video))
        trainer.train()
        return trainer

    history = sft("sft_base", plan.base_steps, plan.lr, None, seed).history if plan.base_steps else []
    timings["sft_base_s"] = time.perf_counter() - t

    t = time.perf_counter()
    make_item = needle_haystack(SIZE, seed)  # evaluation seeds never meet the training rows'
    # Control: the uncompressed-trained model read through fresh (untrained) summary tokens.
    fresh = SummaryTokens.from_adapter(adapter, ratios=(CONTROL_RATIO,), window=plan.window).attach(adapter)
    control = niah.run_grid(adapter, Compressor(fresh, CONTROL_RATIO), make_item, plan.eval_frames, plan.depths, trials=plan.trials)
    fresh.detach_hooks()
    timings["control_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trainer = sft("sft", plan.steps, plan.compress_lr, CompressConfig(ratios=plan.ratios, window=plan.window), seed + 1)
    history += [{**h, "step": h["step"] + plan.base_steps} for h in trainer.history]
    summary = trainer.compression.summary
    timings["sft_compress_s"] = time.perf_counter() - t

    t = time.perf_counter()
    grids = []
    for ratio in plan.eval_ratios:
        compressor = Compressor(summary if ratio != 1 else None, ratio)
        grids.append(niah.run_grid(adapter, compressor, make_item, plan.eval_frames, plan.depths, trials=plan.trials, progress=progress))
        log.info("NIAH ratio %d: %.1f%% (chance %.1f%%)", ratio, 100 * grids[-1].mean, 100 * grids[-1].chance)
    paths = niah.write_report(grids, out)
    summary.detach_hooks()
    timings["niah_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    curves = {"uncompressed": [(h["step"], h["loss"]) for h in history[: plan.base_steps]],
              "summary tokens, random ratios": [(h["step"], h["loss"]) for h in history[plan.base_steps :]]}
    plot_curves({k: v for k, v in curves.items() if v}, out / "sft_loss.png",
                title="CoT-SFT loss", ylabel="loss (nats per response token)")
    accuracy = {g.ratio: g.mean for g in grids}
    base = accuracy.get(1)
    metrics = {
        "accuracy": {str(r): a for r, a in accuracy.items()},
        "chance": grids[0].chance,
        "drop_points": {str(r): 100 * (base - a) for r, a in accuracy.items() if base is not None and r != 1},
        "windows": {str(n): -(-2 * n // plan.window) for n in plan.eval_frames},  # 4 tokens per frame pair
        "control_untrained_summary": {"ratio": CONTROL_RATIO, "accuracy": control.mean},
        "grids": [g.summary() for g in grids],
        "final_train_loss": history[-1]["loss"],
        "plan": plan.__dict__,
        "timings": timings,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.md").write_text(_report(plan, grids, control, timings, quick, paths["png"].name))
    log.info("compression demo done in %.0f s: NIAH %s; report in %s", timings["total_s"],
             ", ".join(f"{r}x {100 * a:.1f}%" for r, a in accuracy.items()), out)
    return metrics


def _report(plan: CompressDemoPlan, grids: list[niah.Grid], control: niah.Grid, timings: dict[str, float], quick: bool, heatmap: str) -> str:
    model = ", ".join(f"{k}={v}" for k, v in plan.model) or "default sizes"
    trained_control = next((g.mean for g in grids if g.ratio == control.ratio), float("nan"))
    lengths = ", ".join("whole video" if n is None else f"{n}" for n in plan.needle_lengths)
    rows = "\n".join(
        f"| {g.ratio} | {100 * g.mean:.1f} | {100 * (grids[0].mean - g.mean):+.1f} |" for g in grids
    )
    windows = ", ".join(f"{n} frames = {2 * n} visual tokens = {-(-2 * n // plan.window)} windows" for n in plan.eval_frames)
    return f"""# longvid demo --compress{' (quick)' if quick else ''}

Visual summary tokens (Video-XL) on a tiny Qwen2.5-VL ({model}, random init), trained with a
compression ratio drawn per window from {list(plan.ratios)} and evaluated by video
needle-in-a-haystack: a {2}-frame coloured flash hidden among grey frames, "what colour is it?"
(4 options, chance {100 * grids[0].chance:.0f}%), scored by the likelihood of each option's answer.

| ratio | NIAH accuracy (%) | drop vs ratio {grids[0].ratio} (points) |
| ---: | ---: | ---: |
{rows}

Control: the same model before the summary-token phase, read at {control.ratio}x through fresh
(untrained) summary tokens, scores {100 * control.mean:.1f}% on the same grid; trained ones score
{100 * trained_control:.1f}%.

![NIAH heatmaps]({heatmap})

{niah.markdown_table(grids)}
## Recipe

- Training rows: {plan.train_samples} needle videos of {", ".join(map(str, plan.train_frames))} frames (56x56), needle
  lengths drawn from [{lengths}] frames (long needles teach colour → letter, short ones teach finding it),
  depth uniform, answer letter balanced; target `<think></think><answer>X</answer>`.
- CoT-SFT: {plan.base_steps} steps uncompressed (the trained VLM Video-XL starts from), then
  {plan.steps} steps of {plan.grad_accum} rows at lr {plan.compress_lr} (uncompressed: {plan.lr}), summary tokens on windows of
  {plan.window} visual tokens, one ratio drawn per window (ratio 1 keeps that window uncompressed).
- NIAH: {len(plan.depths)} depths x {len(plan.eval_frames)} haystack lengths ({windows}),
  {plan.trials} needles per cell at each ratio; at ratio r the question sees only the summaries
  (1 per r visual tokens) of every window, never a raw visual token.

![loss](sft_loss.png)

Wall time: uncompressed SFT {timings['sft_base_s']:.0f} s, control {timings['control_s']:.0f} s, SFT with summary
tokens {timings['sft_compress_s']:.0f} s, NIAH {timings['niah_s']:.0f} s, total {timings['total_s']:.0f} s.
"""
