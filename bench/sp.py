"""Sequence parallelism: per-rank peak memory and time of a training step and a prefill vs length.

Runs a tiny-ish Hugging Face Qwen2.5-VL language model (float32, inputs_embeds + 3-D positions,
causal mask) on local gloo ranks at SP = 1, 2, 4 with Ulysses, ring and hybrid attention, and
prints ONE JSON object. Optionally draws a PNG.

    python bench/sp.py --lengths 1024,2048,4096 --plot sp.png

Memory is measured, not estimated: each rank runs the step under torch.profiler with
`profile_memory=True`, which records every allocation and free of PyTorch's CPU allocator with
its size and time; the peak of the running sum is the most memory the step held at once beyond
what was allocated before it (weights and their already-allocated .grad buffers). That is the
per-rank peak activation memory: activations, temporaries, gradients in flight and communication
buffers. Times come from separate runs without the profiler (slowest rank, best of --repeats).

Baselines at SP=1: "sp1" is this package's path on a mesh of one (tiled attention kernel);
"hf_sdpa" is stock transformers with SDPA's causal flash kernel, no longvid code at all. The
ratios use the smaller (stronger) of the two.

`max_len_ratio_sp4`: the per-rank budget is the SP=1 baseline's peak at the longest length;
each configuration's longest fitting length comes from a linear fit of its measured peaks
(memory vs length); the SP=4 mode with the smallest one is then run at that length and the
length kept only if the measured peak is within budget (backing off otherwise: `verified`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from cpu_memory import peak_bytes  # bench/ is the script's folder
from longvid import masks
from longvid.parallel import (
    Mesh,
    ShardedMask,
    init_mesh,
    register_sp_attention,
    shard_sequence,
    sharded_loss,
    shift_labels,
    spawn_local,
)

MODEL = dict(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=768, vocab=2048)
PRELOAD = ("torch", "torch.distributed", "longvid.parallel", "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")


def build_model():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    head_dim = MODEL["hidden"] // MODEL["heads"]
    section = [head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=MODEL["hidden"],
            num_hidden_layers=MODEL["layers"],
            num_attention_heads=MODEL["heads"],
            num_key_value_heads=MODEL["kv_heads"],
            intermediate_size=MODEL["intermediate"],
            vocab_size=MODEL["vocab"],
            max_position_embeddings=1 << 20,
            bos_token_id=0,
            eos_token_id=1,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        ),
        vision_config=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=32, out_hidden_size=MODEL["hidden"]),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _inputs(length):
    g = torch.Generator().manual_seed(length)
    embeds = torch.randn(1, length, MODEL["hidden"], generator=g)
    positions = torch.arange(length).expand(3, 1, -1)
    labels = torch.randint(0, MODEL["vocab"], (1, length), generator=g)
    return embeds, positions, labels


def _rank(rank, world, mode, lengths, repeats, stock):
    """Per length: (train time, train peak, prefill time, prefill peak) on this rank."""
    import torch.distributed as dist

    mesh = init_mesh(sp=world, ulysses=2 if mode == "hybrid" else None) if world > 1 else Mesh.single()
    model = build_model()
    if not stock:
        model.set_attn_implementation({"text_config": register_sp_attention(mesh, mode)})
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for length in lengths:
        embeds, positions, labels = _inputs(length)
        x, _ = shard_sequence(embeds, 1, mesh, "zigzag")
        pos, _ = shard_sequence(positions, 2, mesh, "zigzag")
        targets, _ = shard_sequence(shift_labels(labels), 1, mesh, "zigzag", pad_value=-100)
        extra = {} if stock else {"sharded_mask": ShardedMask.from_layout(masks.causal, length, mesh, "zigzag")}

        def forward():
            return model(inputs_embeds=x, position_ids=pos, use_cache=False, **extra).logits

        def train():
            sharded_loss(forward(), targets, mesh).backward()

        def prefill():
            with torch.no_grad():
                forward()

        def timed(fn):
            best = float("inf")
            for _ in range(repeats):
                if world > 1:
                    dist.barrier()
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            return best

        train()  # warm-up; allocates every .grad, which later steps reuse
        train_time = timed(train)
        train_peak = peak_bytes(train)
        prefill_time = timed(prefill)
        prefill_peak = peak_bytes(prefill)
        for p in params:
            p.grad = None
        out[length] = (train_time, train_peak, prefill_time, prefill_peak)
    return out


def run_config(sp, mode, lengths, repeats, stock=False):
    """{length: per-rank maxima} for one configuration."""
    threads = max(1, (os.cpu_count() or 1) // sp)
    codes, got = spawn_local(_rank, sp, mode, lengths, repeats, stock, timeout=3000, preload=PRELOAD, threads=threads)
    if any(codes) or len(got) != sp:
        errors = "\n".join(v for ok, v in got.values() if not ok)
        raise RuntimeError(f"sp={sp} {mode} failed (exit codes {codes}):\n{errors}")
    per_rank = [got[r][1] for r in range(sp)]
    return {
        length: dict(
            train_s=max(r[length][0] for r in per_rank),
            train_peak_mb=max(r[length][1] for r in per_rank) / 2**20,
            prefill_s=max(r[length][2] for r in per_rank),
            prefill_peak_mb=max(r[length][3] for r in per_rank) / 2**20,
        )
        for length in lengths
    }


def fit_max_len(lengths, peaks_mb, budget_mb):
    """Longest length whose linear fit of measured peak memory stays within `budget_mb`.

    Linear because no path here holds an S x S tensor (SDPA's flash kernel and the tiled kernel
    are O(S)); `fit_residual_mb` in the report shows how well that holds.
    """
    slope, intercept = np.polyfit(np.asarray(lengths, float), np.asarray(peaks_mb, float), 1)
    return int((budget_mb - intercept) / slope)


def fit_residual_mb(lengths, peaks_mb):
    x, y = np.asarray(lengths, float), np.asarray(peaks_mb, float)
    return float(np.abs(np.polyval(np.polyfit(x, y, 1), x) - y).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096", help="comma-separated sequence lengths")
    parser.add_argument("--sp", default="1,2,4", help="comma-separated SP sizes (1 = baseline)")
    parser.add_argument("--modes", default="ulysses,ring,hybrid")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions (best is kept)")
    parser.add_argument("--no-verify", action="store_true", help="skip running SP=4 at its fitted max length")
    parser.add_argument("--plot", help="write a PNG of memory and time vs length here")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    sizes = [int(x) for x in args.sp.split(",")]
    modes = args.modes.split(",")

    results = {"hf_sdpa": run_config(1, "ulysses", lengths, args.repeats, stock=True)}
    if 1 in sizes:
        results["sp1"] = run_config(1, "ulysses", lengths, args.repeats)
    for sp in (s for s in sizes if s > 1):
        for mode in modes:
            if mode == "hybrid" and sp < 4:
                continue  # hybrid needs Ulysses x ring both > 1
            results[f"sp{sp}_{mode}"] = run_config(sp, mode, lengths, args.repeats)

    longest = max(lengths)
    baseline = min((k for k in ("hf_sdpa", "sp1") if k in results), key=lambda k: results[k][longest]["train_peak_mb"])
    budget = results[baseline][longest]["train_peak_mb"]
    peaks = {name: [r[n]["train_peak_mb"] for n in lengths] for name, r in results.items()}
    max_len = {name: fit_max_len(lengths, p, budget) for name, p in peaks.items()}
    max_len[baseline] = longest  # the budget is its measured peak there
    summary = {
        "baseline": baseline,
        "budget_mb": budget,
        "max_len": max_len,
        "fit_residual_mb": {name: fit_residual_mb(lengths, p) for name, p in peaks.items()},
    }
    sp4 = [name for name in results if name.startswith("sp4_")]
    if sp4:
        ratios = {name: results[name][longest]["train_peak_mb"] / budget for name in sp4}
        prefill = {
            name: results[name][longest]["prefill_peak_mb"] / results[baseline][longest]["prefill_peak_mb"]
            for name in sp4
        }
        worst = min(sp4, key=max_len.get)  # the mode the headline length ratio comes from
        if not args.no_verify:
            # Measure the worst mode at its fitted length; back off in proportion if it overshoots.
            length, tries = max_len[worst] // 8 * 8, []
            for _ in range(3):
                peak = run_config(4, worst.removeprefix("sp4_"), [length], 1)[length]["train_peak_mb"]
                tries.append({"length": length, "train_peak_mb": peak})
                if peak <= budget:
                    break
                length = int(length * budget / peak) // 8 * 8
            summary["verified"] = dict(config=worst, tries=tries, within_budget=peak <= budget)
            max_len[worst] = length if peak <= budget else 0
        len_ratios = {name: max_len[name] / max_len[baseline] for name in sp4}
        summary.update(
            memory_ratio_sp4=max(ratios.values()),  # the worst SP=4 mode
            memory_ratio_sp4_by_mode=ratios,
            prefill_memory_ratio_sp4_by_mode=prefill,
            max_len_ratio_sp4=min(len_ratios.values()),
            max_len_ratio_sp4_by_mode=len_ratios,
        )

    report = {
        "model": MODEL,
        "dtype": "float32",
        "mask": "causal, zigzag layout",
        "cpu_threads": os.cpu_count(),
        "memory": "torch.profiler allocation events, peak per rank (max over ranks), MiB",
        "time": "seconds per step, slowest rank, best of repeats; ranks share the CPU cores",
        "lengths": lengths,
        "results": {name: {str(n): v for n, v in r.items()} for name, r in results.items()},
        **summary,
    }
    print(json.dumps(report, indent=1))
    if args.plot:
        plot(results, lengths, args.plot)


def plot(results, lengths, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, r in results.items():
        for ax, key in zip(axes, ("train_peak_mb", "prefill_peak_mb", "train_s")):
            ax.plot(lengths, [r[n][key] for n in lengths], marker="o", label=name)
    for ax, title in zip(axes, ("train step: per-rank peak MiB", "prefill: per-rank peak MiB", "train step: seconds")):
        ax.set_title(title)
        ax.set_xlabel("sequence length")
        ax.set_xscale("log", base=2)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
