"""Visual summary tokens: KV-cache bytes, prefill time, decode time and peak memory against the
compression ratio, and the most frames that fit a fixed memory budget.

    python bench/compress.py                      # ratios 1,2,4,8,16; frames 256..2048
    python bench/compress.py --quick

Model: the tiny Qwen2.5-VL (longvid.model.tiny, float32, CPU), with fresh summary tokens (timing
and memory do not depend on their training). The video's visual embeddings are made once, outside
every measurement (synthetic embeddings: 2 LLM tokens per frame, as a 56x56 video costs).

- ratio 1 is today's path: one causal prefill over the whole prompt (`adapter.hidden_states`).
- ratio r > 1: `compress.windowed_prefill` (window by window, raw visual K/V dropped after each).
- `kv_bytes`: K/V tensors held by the cache after prefill.
- `prefill_s`: median of `--repeats` prefills of the longest video (after one warm-up round; the
  ratios take turns, so load on a shared machine slows them alike); `decode_s_per_token`: the
  median time of one greedy decoding step over the prefilled cache (`--decode-tokens` per round).
- `peak_mb`: the peak of (allocated - freed) by PyTorch's CPU allocator during one prefill
  (torch profiler, `profile_memory=True`), beyond the weights and the embeddings that exist before
  it: the activations and the cache.
- `max_frames`: budget = the uncompressed path's peak at the largest frame count measured; for each
  ratio, a linear fit of peak against frames (every path here is O(frames): SDPA's CPU kernel holds
  no S x S tensor) solved for that budget. `fit_residual_mb` says how well the line fits.
Prints ONE JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from longvid.config import ModelConfig  # noqa: E402
from longvid.model import load_adapter  # noqa: E402
from longvid.model import compress  # noqa: E402
from cpu_memory import peak_bytes  # noqa: E402  (bench/ is the script's folder)

TOKENS_PER_FRAME = 2


def prompt_inputs(adapter, num_frames: int):
    """Prompt embeddings and positions of a `num_frames` video (synthetic visual embeddings)."""
    from longvid.model.adapter import VisualEmbeds

    tokens = num_frames * TOKENS_PER_FRAME
    g = torch.Generator().manual_seed(num_frames)
    # A grid of [T/2, 2, 4] patches merges 2x2 into 2 tokens per frame, as a 56x56 video does.
    visual = VisualEmbeds(0.02 * torch.randn(tokens, adapter.hidden_size, generator=g), torch.tensor([[num_frames // 2, 4, 4]]), 1.0)
    prompt = adapter.build_prompt("A brief coloured flash is hidden among the grey frames. What colour is it?", visual)
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    return prompt, embeds, positions


def make_prefill(adapter, summary, prompt, embeds, positions, ratio: int):
    if ratio == 1:
        def run():
            hidden, cache = adapter.hidden_states(embeds[None], positions.unsqueeze(-2), use_cache=True)
            return hidden[0, -1], cache, positions
    else:
        layout = compress.layout_for(adapter, summary, embeds, positions, prompt.visual_mask, ratio)

        def run():
            pre = compress.windowed_prefill(adapter, layout)
            return pre.last_hidden[-1], pre.cache, layout.positions
    return run


def decode_seconds(adapter, last, cache, positions, steps: int) -> list[float]:
    """Seconds of each greedy decoding step over a prefilled cache."""
    token = adapter.logits(last).argmax()[None]
    pos = adapter.continuation_positions(positions, steps)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        hidden, cache = adapter.hidden_states(adapter.embed_tokens(token)[None], pos[..., i : i + 1].unsqueeze(-2), cache=cache, use_cache=True)
        token = adapter.logits(hidden[0, -1]).argmax()[None]
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def memory(adapter, summary, num_frames: int, ratio: int) -> dict:
    prompt, embeds, positions = prompt_inputs(adapter, num_frames)
    run = make_prefill(adapter, summary, prompt, embeds, positions, ratio)
    out = {"frames": num_frames, "prompt_tokens": len(prompt), "peak_mb": peak_bytes(run) / 2**20}
    _, cache, _ = run()
    out["kv_bytes"] = compress.cache_bytes(cache)
    out["cached_tokens"] = cache.get_seq_length()
    return out


@torch.no_grad()
def timing(adapter, summary, num_frames: int, ratios: list[int], repeats: int, decode_tokens: int) -> dict[int, dict]:
    """Round-robin over the ratios (a loaded machine slows every ratio alike): prefill seconds and
    per-token decode seconds, after one warm-up round."""
    prompt, embeds, positions = prompt_inputs(adapter, num_frames)
    runs = {r: make_prefill(adapter, summary, prompt, embeds, positions, r) for r in ratios}
    prefill = {r: [] for r in ratios}
    decode = {r: [] for r in ratios}
    for round_ in range(repeats + 1):
        for r, run in runs.items():
            start = time.perf_counter()
            last, cache, pos = run()
            elapsed = time.perf_counter() - start
            steps = decode_seconds(adapter, last, cache, pos, decode_tokens)
            if round_:
                prefill[r].append(elapsed)
                decode[r] += steps
    return {
        r: {"prefill_s": statistics.median(prefill[r]), "prefill_s_min": min(prefill[r]), "decode_s_per_token": statistics.median(decode[r])}
        for r in ratios
    }


def fit(frames: list[int], peaks: list[float]) -> tuple[float, float, float]:
    x, y = np.asarray(frames, float), np.asarray(peaks, float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept), float(np.abs(np.polyval((slope, intercept), x) - y).max())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default="1,2,4,8,16")
    parser.add_argument("--frames", default="256,512,1024,2048", help="frame counts; the largest is the timed 'long video'")
    parser.add_argument("--window", type=int, default=480, help="visual tokens per window (Video-XL: 1440)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="frames 128,256, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = "128,256", 2
    torch.set_num_threads(args.threads)
    ratios = [int(r) for r in args.ratios.split(",")]
    frames = sorted(int(f) for f in args.frames.split(","))
    adapter = load_adapter(ModelConfig(seed=0))
    adapter.model.eval()
    summary = compress.SummaryTokens.from_adapter(adapter, ratios=[r for r in ratios if r > 1], window=args.window).attach(adapter)

    results = {}
    for r in ratios:
        rows = [memory(adapter, summary, f, r) for f in frames]
        slope, intercept, residual = fit(frames, [row["peak_mb"] for row in rows])
        results[r] = {"long_video": rows[-1], "peak_mb_by_frames": {row["frames"]: row["peak_mb"] for row in rows},
                      "peak_fit_mb_per_frame": slope, "peak_fit_intercept_mb": intercept, "fit_residual_mb": residual}
    for r, times in timing(adapter, summary, frames[-1], ratios, args.repeats, args.decode_tokens).items():
        results[r]["long_video"].update(times)
    budget = results[1]["long_video"]["peak_mb"] if 1 in results else None
    for r, res in results.items():
        if budget is not None:
            res["max_frames"] = int((budget - res["peak_fit_intercept_mb"]) / res["peak_fit_mb_per_frame"])

    base = results.get(1, {}).get("long_video")
    report = {
        "model": "tiny Qwen2.5-VL (hidden 128, 4 layers, 4 heads, 2 KV heads), float32, CPU",
        "threads": args.threads,
        "window_tokens": args.window,
        "tokens_per_frame": TOKENS_PER_FRAME,
        "long_video_frames": frames[-1],
        "memory_budget_mb": budget,
        "ratios": {str(r): res for r, res in results.items()},
    }
    if base is not None:
        for r, res in results.items():
            if r == 1:
                continue
            lv = res["long_video"]
            report[f"kv_ratio_{r}"] = lv["kv_bytes"] / base["kv_bytes"]
            report[f"max_frames_ratio_{r}"] = res["max_frames"] / results[1]["max_frames"]
            report[f"prefill_speedup_{r}"] = base["prefill_s"] / lv["prefill_s"]
            report[f"decode_speedup_{r}"] = base["decode_s_per_token"] / lv["decode_s_per_token"]
        if 16 in results:
            report["targets"] = {
                "kv_ratio_16 <= 1/12": report["kv_ratio_16"] <= 1 / 12,
                "max_frames_ratio_16 >= 8": report["max_frames_ratio_16"] >= 8,
                "prefill at 16x not slower": report["prefill_speedup_16"] >= 1.0,
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
