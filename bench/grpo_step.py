"""One GRPO step on one long-video prompt, four ways: time, time split and peak memory vs frames.

    python bench/grpo_step.py --frames 64,128,256,512 --plot grpo_step.png
    python bench/grpo_step.py --quick

A step is: encode the video, roll out G responses, policy log-probs (with gradients), reference
log-probs (no gradients), a GRPO loss (longvid.rl.grpo, beta > 0 so the reference counts) and its
backward. No optimizer step. The modes differ only in how often they repeat the video's work:

- naive: stock Hugging Face. Rollout is `generate(num_return_sequences=G, do_sample=True)` on
  pixels (G prefills as one batch); the policy and reference log-probs are G separate
  `model(input_ids=prompt+response, pixel_values_videos=...)` forwards each, every one re-running
  the vision tower (TRL's way, with `logits_to_keep` so only response logits are computed).
  Vision-tower calls are counted with a hook (`vision_calls`; `vision_videos` = patches encoded /
  patches of the video). transformers 5.23's `generate` encodes the video once and then expands
  the embeddings G times, so naive encodes 1 + 2G times per step, not 3G.
- mrsp: MR-SP's embedding reuse on one device. The video is encoded once (no grad, the tower is
  frozen, as EmbeddingCache does on a miss) and the embeddings feed everything. Rollout prefills
  the prefix once per sample (G copies as one batch, then batched decoding: nothing shared, as
  `generate` does); policy and reference are `separate_logprobs` (G forwards over [prefix | r_g]).
- mrsp_batched: as mrsp, but the policy and reference passes run the G sequences as one
  right-padded batch forward with a causal + key-padding mask.
- longvid: encode once, shared-prefix rollout (`sample`: prefill once, KV replicated for G),
  packed policy and reference passes (`pack` + `packed_logprobs`: one forward over
  [prefix | r1 .. rG] with the shared-prefix mask).

The batched-rollout row (`batched_rollout`, `--rollout-prompts B`, default 4): rollout of B prompts
(different videos of frames, frames - 2, ... frames) as one decode loop of B x G rows
(`sample_batch`: each prefix prefilled once, caches merged) vs one `sample` call per prompt, same
seeds (`same_tokens` checks they agree), median of `--repeats` after a warm-up, in one process.

Fairness: same model, weights, video and prompt in every mode; every response is exactly
`--max-new-tokens` tokens (HF: `min_new_tokens = max_new_tokens`, which masks EOS until then;
ours: an adapter whose only stop id is -1, which no sampled token can equal); temperature 1, no
top-k/top-p. The reference model is the policy's weights under no_grad (a frozen copy costs the
same compute). Frames are patchified once outside the step (decoding is not measured). The naive
log-probs differ slightly from the others' (same cost): a transformers 5.23 forward over
prompt+response places the response at the prompt's last position + 1, the adapter at max + 1.

Model: a tiny Qwen2.5-VL (longvid.model.tiny) whose vision-to-LLM cost ratio matches
Qwen2.5-VL-7B's: matmul FLOPs the vision tower spends per merged (LLM) visual token divided by the
LLM's matmul FLOPs per token (attention-score FLOPs excluded: they depend on context length and
window size). The vision depth is chosen to match the 7B ratio; both ratios are in the JSON.

Measurement: each (frames, mode) runs in a fresh subprocess (one CPU thread by default, the
steadiest on a shared machine), so no mode inherits another's allocator state. Time: wall clock,
one warm-up step, then the median of `--repeats` (and their minimum, the figure least disturbed
by other load). `split_s` is per phase; naive has no encode phase (its vision work sits inside
rollout, policy and reference), so `vision_s`, the vision tower's hook-timed total per step, is
reported for every mode. Memory on CPU: the kernel's peak-RSS mark is reset
(/proc/self/clear_refs = 5) after the model and inputs are loaded, and the peak is VmHWM after the
steps minus VmRSS at the reset: the most memory the steps held at once beyond weights and inputs
(activations, KV caches, gradients; allocator slack included). On CUDA:
torch.cuda.max_memory_allocated minus memory_allocated at the reset.
Prints ONE JSON object on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from longvid.model.adapter import Prompt, VideoInputs
from longvid.model.common import token_logprobs
from longvid.model.qwen2_5_vl import Qwen25VLAdapter
from longvid.model.sampling import SamplingConfig, sample, sample_batch
from longvid.model.tiny import build_tiny_model, load_tokenizer
from longvid.rl.grpo import grpo_loss, group_advantages
from longvid.rl.packing import pack, packed_logprobs, separate_logprobs

log = logging.getLogger("grpo_step")

QUESTION = "What happens in the video? Think, then answer with one letter."
BETA = 0.04  # KL weight: > 0 so the reference pass is part of the loss
# Qwen2.5-VL-7B (config.json of Qwen/Qwen2.5-VL-7B-Instruct).
VISION_7B = dict(depth=32, hidden=1280, mlp=3420, out=3584)
LLM_7B = dict(layers=28, hidden=3584, mlp=18944, heads=28, kv_heads=4, head_dim=128)
# The bench model: tiny_config's LLM at hidden 256 x 4 layers (MLP 3x, 4 heads, 2 KV heads) and its
# vision tower (hidden 64, MLP 128); only the vision depth is free, chosen to match the 7B ratio.
LLM_BENCH = dict(layers=4, hidden=256, mlp=768, heads=4, kv_heads=2, head_dim=64)
VISION_BENCH = dict(hidden=64, mlp=128, out=256)
MODES = ("naive", "mrsp", "mrsp_batched", "longvid")
ROLLOUT_WORKER = "rollout_batch"  # the batched-rollout row: B prompts in one decode loop vs one at a time
PHASES = ("encode", "rollout", "policy", "reference", "backward")


# -- cost model ------------------------------------------------------------------------------------


def vision_flops_per_token(depth, hidden, mlp, out, merge=2, patch=14, temporal_patch=2):
    """Matmul FLOPs of Qwen2.5-VL's vision tower per merged token: merge^2 patches through the patch
    embedding and `depth` blocks (qkv + proj 4h^2, gated MLP 3hm), then the merger (4h -> 4h -> out)."""
    per_patch = 2 * (3 * temporal_patch * patch**2 * hidden + depth * (4 * hidden**2 + 3 * hidden * mlp))
    wide = merge**2 * hidden
    return merge**2 * per_patch + 2 * (wide * wide + wide * out)


def llm_flops_per_token(layers, hidden, mlp, heads, kv_heads, head_dim):
    """Matmul FLOPs of the LLM per token (q, o: h x heads*hd; k, v: h x kv*hd; gated MLP 3hm)."""
    return 2 * layers * (2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * mlp)


def cost_ratio(vision: dict, llm: dict) -> float:
    return vision_flops_per_token(**vision) / llm_flops_per_token(**llm)


def matching_vision_depth() -> int:
    target = cost_ratio(VISION_7B, LLM_7B)
    return min(range(1, 33), key=lambda d: abs(cost_ratio(dict(VISION_BENCH, depth=d), LLM_BENCH) - target))


# -- the bench: model, inputs, one step per mode ---------------------------------------------------


class FixedLengthAdapter(Qwen25VLAdapter):
    """Never stops early: the only stop id is -1, which no sampled token can equal."""

    @property
    def eos_token_ids(self) -> list[int]:
        return [-1]


@dataclass
class Bench:
    adapter: FixedLengthAdapter
    video: VideoInputs
    prompt: Prompt
    group: int
    max_new_tokens: int
    device: torch.device

    @classmethod
    def build(cls, frames: int, size: int, group: int, max_new_tokens: int, vision_depth: int, device: str):
        tokenizer = load_tokenizer()
        model, _ = build_tiny_model(
            tokenizer, seed=0, dtype=torch.float32,
            hidden_size=LLM_BENCH["hidden"], num_layers=LLM_BENCH["layers"], vision_depth=vision_depth,
        )
        model = model.to(device).eval()
        model.model.visual.requires_grad_(False)  # frozen during RL, as in MR-SP's anchor
        adapter = FixedLengthAdapter(model, tokenizer)
        pixels = np.random.default_rng(0).integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)
        video = adapter.preprocess(pixels)
        video.pixel_values = video.pixel_values.to(device)
        num_visual = int(video.grid_thw.prod()) // adapter.merge_size**2
        prompt = adapter.build_prompt(QUESTION, num_visual)
        return cls(adapter, video, prompt, group, max_new_tokens, torch.device(device))

    @property
    def model(self):
        return self.adapter.hf

    def encode_once(self):
        """The one encode MR-SP and longvid share (EmbeddingCache's miss path) and the prefix inputs."""
        with torch.no_grad():
            visual = self.adapter.encode(self.video)
        return self.adapter.prefix_inputs(self.prompt, visual)

    def hf_inputs(self, ids: torch.Tensor) -> dict:
        """Stock Hugging Face keyword arguments for token ids `[B, S]` with this video."""
        ids = ids.to(self.device)
        return dict(
            input_ids=ids,
            pixel_values_videos=self.video.pixel_values,
            video_grid_thw=self.video.grid_thw.to(self.device),
            second_per_grid_ts=torch.tensor([self.video.seconds_per_grid], device=self.device),
            mm_token_type_ids=(ids == self.adapter.video_token_id).int() * 2,
        )


def naive_step(bench: Bench, phase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, m = bench.prompt.input_ids, bench.max_new_tokens
    with phase("rollout"):
        out = bench.model.generate(
            **bench.hf_inputs(ids[None]), attention_mask=torch.ones_like(ids[None], device=bench.device),
            do_sample=True, num_return_sequences=bench.group, max_new_tokens=m, min_new_tokens=m,
            temperature=1.0, top_k=0, top_p=1.0, pad_token_id=bench.adapter.tokenizer.pad_token_id,
        )
    responses = out[:, len(ids):]

    def logprobs():
        rows = []
        for r in responses:
            full = torch.cat([ids.to(bench.device), r])[None]
            logits = bench.model(**bench.hf_inputs(full), logits_to_keep=len(r) + 1).logits[0, :-1]
            rows.append(torch.log_softmax(logits.float(), -1).gather(-1, r[:, None]).squeeze(-1))
        return torch.stack(rows)

    with phase("policy"):
        logp = logprobs()
    with phase("reference"), torch.no_grad():
        ref = logprobs()
    return logp, ref, responses


@torch.no_grad()
def independent_rollout(adapter, embeds, positions, group: int, max_new_tokens: int) -> torch.Tensor:
    """G prefills of the same prefix (one batch of G copies), then batched multinomial decoding:
    what `generate(num_return_sequences=G)` does, on embeddings instead of pixels."""
    hidden, cache = adapter.hidden_states(
        embeds.expand(group, -1, -1), positions[:, None].expand(-1, group, -1), use_cache=True
    )
    steps = adapter.continuation_positions(positions, max_new_tokens)
    tokens = []
    for step in range(max_new_tokens):
        token = torch.multinomial(torch.softmax(adapter.logits(hidden[:, -1]).float(), -1), 1)
        tokens.append(token)
        if step + 1 < max_new_tokens:
            pos = steps[:, step].view(3, 1, 1).expand(-1, group, 1)
            hidden, cache = adapter.hidden_states(
                adapter.embed_tokens(token), pos, cache=cache, use_cache=True
            )
    return torch.cat(tokens, dim=1)


def batched_logprobs(adapter, embeds, positions, responses: list[torch.Tensor]) -> torch.Tensor:
    """The G sequences [prefix | r_g] as one right-padded batch: causal + key-padding mask."""
    g, width, prefix_len = len(responses), max(len(r) for r in responses), embeds.shape[0]
    targets = torch.nn.utils.rnn.pad_sequence(responses, batch_first=True)  # [G, L], 0-padded
    lengths = torch.tensor([len(r) for r in responses], device=embeds.device)
    valid = torch.arange(width, device=embeds.device)[None] < lengths[:, None]  # [G, L]
    seq = torch.cat([embeds.expand(g, -1, -1), adapter.embed_tokens(targets).to(embeds.dtype)], dim=1)
    pos = torch.cat([positions, adapter.continuation_positions(positions, width)], dim=1)
    total = prefix_len + width
    keys = torch.cat([valid.new_ones(g, prefix_len), valid], dim=1)  # [G, T]
    causal = torch.ones(total, total, dtype=torch.bool, device=embeds.device).tril()
    mask = (causal[None] & keys[:, None, :])[:, None]  # [G, 1, T, T]
    hidden, _ = adapter.hidden_states(seq, pos[:, None].expand(-1, g, -1), attention_mask=mask)
    logp = token_logprobs(adapter, hidden[:, prefix_len - 1 : -1], targets)
    return logp.masked_fill(~valid, 0.0)


def mrsp_step(bench: Bench, phase, batched: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    adapter = bench.adapter
    with phase("encode"):
        embeds, positions = bench.encode_once()
    with phase("rollout"):
        responses = independent_rollout(adapter, embeds, positions, bench.group, bench.max_new_tokens)
    logprobs = batched_logprobs if batched else separate_logprobs
    with phase("policy"):
        logp = logprobs(adapter, embeds, positions, list(responses))
    with phase("reference"), torch.no_grad():
        ref = logprobs(adapter, embeds, positions, list(responses))
    return logp, ref, responses


def longvid_step(bench: Bench, phase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    adapter = bench.adapter
    with phase("encode"):
        embeds, positions = bench.encode_once()
    with phase("rollout"):
        responses = sample(adapter, embeds, positions, bench.group, SamplingConfig(bench.max_new_tokens)).tokens
    with phase("policy"):
        packed = pack(adapter, embeds, positions, list(responses))
        logp = packed_logprobs(adapter, packed)
    with phase("reference"), torch.no_grad():
        ref = packed_logprobs(adapter, packed)
    return logp, ref, responses


STEPS = {
    "naive": naive_step,
    "mrsp": partial(mrsp_step, batched=False),
    "mrsp_batched": partial(mrsp_step, batched=True),
    "longvid": longvid_step,
}


# -- harness: timing, memory, vision-call counting --------------------------------------------------


class Phases:
    """Accumulated wall time per named phase (CUDA synchronised at every boundary)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.times[name] += time.perf_counter() - start


class VisionCounter:
    """Counts vision-tower calls, the patches they encode and the time they take, via forward hooks."""

    def __init__(self, visual: torch.nn.Module, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.reset()
        visual.register_forward_pre_hook(self._enter, with_kwargs=True)
        visual.register_forward_hook(self._exit)

    def reset(self) -> None:
        self.calls = self.patches = 0
        self.seconds = 0.0

    def _enter(self, module, args, kwargs):
        pixels = args[0] if args else kwargs["hidden_states"]
        self.calls += 1
        self.patches += pixels.shape[0]
        self.sync()
        self._start = time.perf_counter()

    def _exit(self, module, args, output):
        self.sync()
        self.seconds += time.perf_counter() - self._start


class PeakMemory:
    """Peak memory held beyond the moment of `reset()` (see the module docstring for the method)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda_max_memory_allocated" if device.type == "cuda" else "vmhwm_after_clear_refs"

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so the baseline is what is live
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            self.method = "ru_maxrss_minus_baseline"
        self.base = _status_bytes("VmRSS")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "ru_maxrss_minus_baseline":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            peak = _status_bytes("VmHWM")
        return (peak - self.base) / 2**20


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (reported in kB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def run_worker(args) -> dict:
    """Build the bench for one frame count and time one mode in this process."""
    torch.manual_seed(args.seed)
    bench = Bench.build(args.frames[0], args.size, args.group, args.max_new_tokens, args.vision_depth, args.device)
    step = STEPS[args.worker]
    counter = VisionCounter(bench.model.model.visual, bench.device)
    rewards = torch.randn(args.group, generator=torch.Generator().manual_seed(args.seed))
    advantages = group_advantages(rewards, args.group)
    memory = PeakMemory(bench.device)
    memory.reset()
    runs = []
    for i in range(1 + args.repeats):  # the first is the warm-up
        counter.reset()
        phase = Phases(bench.device)
        with phase("step"):
            logp, ref, responses = step(bench, phase)
            assert responses.shape == (args.group, args.max_new_tokens), responses.shape
            with phase("backward"):
                mask = torch.ones_like(logp, dtype=torch.bool)
                loss, _ = grpo_loss(logp, None, ref, advantages.to(logp), mask, beta=BETA)
                loss.backward()
            bench.model.zero_grad(set_to_none=True)
            del logp, ref, loss
        log.info("%s frames=%d run %d: %.2fs %s", args.worker, args.frames[0], i, phase.times["step"],
                 {k: round(v, 2) for k, v in phase.times.items() if k != "step"})
        if i:
            runs.append(dict(phase.times, vision=counter.seconds))
    video_patches = int(bench.video.grid_thw.prod())
    return {
        "mode": args.worker,
        "frames": args.frames[0],
        "tokens": len(bench.prompt),
        "visual_tokens": int(bench.prompt.visual_mask.sum()),
        "step_time_s": statistics.median(r["step"] for r in runs),
        "step_time_min_s": min(r["step"] for r in runs),
        "split_s": {p: statistics.median(r.get(p, 0.0) for r in runs) for p in PHASES},
        "peak_mem_mb": memory.peak_mb(),
        "memory_method": memory.method,
        "vision_s": statistics.median(r["vision"] for r in runs),
        "vision_calls": counter.calls,
        "vision_videos": counter.patches / video_patches,
    }


def run_rollout_worker(args) -> dict:
    """Rollout of B prompts (different videos, lengths frames, frames - 2, ...): all B x G sequences
    in one decode loop (`sample_batch`) vs one `sample` call per prompt. Same seeds, same tokens."""
    torch.manual_seed(args.seed)
    bench = Bench.build(args.frames[0], args.size, args.group, args.max_new_tokens, args.vision_depth, args.device)
    adapter, cfg = bench.adapter, SamplingConfig(bench.max_new_tokens)
    prefixes = []
    for b in range(args.rollout_prompts):
        frames = max(2, args.frames[0] - 2 * b)
        pixels = np.random.default_rng(100 + b).integers(0, 256, size=(frames, args.size, args.size, 3), dtype=np.uint8)
        video = adapter.preprocess(pixels)
        video.pixel_values = video.pixel_values.to(bench.device)
        with torch.no_grad():
            visual = adapter.encode(video)
        prefixes.append(adapter.prefix_inputs(adapter.build_prompt(QUESTION, visual), visual))

    def generators():
        return [torch.Generator(device=bench.device).manual_seed(b) for b in range(len(prefixes))]

    def one_at_a_time():
        return [sample(adapter, e, p, bench.group, cfg, generator=g) for (e, p), g in zip(prefixes, generators())]

    def batched():
        return sample_batch(adapter, prefixes, bench.group, cfg, generators=generators())

    times: dict[str, list[float]] = {"one_at_a_time": [], "batched": []}
    outputs = {}
    for i in range(1 + args.repeats):  # the first is the warm-up
        for name, fn in (("one_at_a_time", one_at_a_time), ("batched", batched)):
            phase = Phases(bench.device)
            with phase(name):
                outputs[name] = fn()
            if i:
                times[name].append(phase.times[name])
    same = all(torch.equal(a.tokens, b.tokens) for a, b in zip(outputs["one_at_a_time"], outputs["batched"]))
    seq, bat = statistics.median(times["one_at_a_time"]), statistics.median(times["batched"])
    return {
        "prompts": len(prefixes),
        "prompt_tokens": [e.shape[0] for e, _ in prefixes],
        "group": bench.group,
        "max_new_tokens": bench.max_new_tokens,
        "one_at_a_time_s": seq,
        "batched_s": bat,
        "speedup_batched_vs_one_at_a_time": ratio(seq, bat),
        "same_tokens": same,
    }


def spawn(args, mode: str, frames: int) -> dict:
    """Run one (mode, frames) in a fresh interpreter; its stderr passes through."""
    cmd = [
        sys.executable, __file__, "--worker", mode, "--frames", str(frames), "--size", str(args.size),
        "--group", str(args.group), "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats),
        "--vision-depth", str(args.vision_depth), "--device", args.device, "--seed", str(args.seed),
        "--threads", str(args.threads), "--rollout-prompts", str(args.rollout_prompts),
    ]
    log.info("running %s at %d frames", mode, frames)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s at %d frames: timed out after %ds", mode, frames, args.timeout)
        return {"error": f"timed out after {args.timeout}s"}
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(a, b):
    return round(a / b, 3) if a is not None and b is not None and b > 0 else None


def summarise(frames: int, runs: dict[str, dict]) -> dict:
    ok = {m: r for m, r in runs.items() if "error" not in r}
    get = lambda key: {m: (round(r[key], 3) if key in r else None) for m, r in ok.items()}  # noqa: E731
    time_s, mem = get("step_time_s"), get("peak_mem_mb")
    any_run = next(iter(ok.values()), {})
    return {
        "frames": frames,
        "tokens": any_run.get("tokens"),
        "visual_tokens": any_run.get("visual_tokens"),
        "step_time_s": time_s,
        "step_time_min_s": get("step_time_min_s"),
        "split_s": {m: {p: round(v, 3) for p, v in r["split_s"].items()} for m, r in ok.items()},
        "peak_mem_mb": mem,
        "vision_s": get("vision_s"),
        "vision_calls": {m: r["vision_calls"] for m, r in ok.items()},
        "vision_videos": {m: round(r["vision_videos"], 2) for m, r in ok.items()},
        "speedup": {
            "mrsp_vs_naive": ratio(time_s.get("naive"), time_s.get("mrsp")),
            "mrsp_batched_vs_naive": ratio(time_s.get("naive"), time_s.get("mrsp_batched")),
            "longvid_vs_naive": ratio(time_s.get("naive"), time_s.get("longvid")),
            "longvid_vs_mrsp": ratio(time_s.get("mrsp"), time_s.get("longvid")),
            "longvid_vs_mrsp_batched": ratio(time_s.get("mrsp_batched"), time_s.get("longvid")),
        },
        "mem_ratio_longvid_vs_mrsp_batched": ratio(mem.get("longvid"), mem.get("mrsp_batched")),
        "mem_ratio_longvid_vs_mrsp": ratio(mem.get("longvid"), mem.get("mrsp")),
        "errors": {m: r["error"] for m, r in runs.items() if "error" in r},
    }


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        for ax, key in ((ax_t, "step_time_s"), (ax_m, "peak_mem_mb")):
            pts = [(r["frames"], r[key][mode]) for r in results if r[key].get(mode) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=mode)
    for ax, label in ((ax_t, "GRPO step time (s)"), (ax_m, "peak memory beyond weights (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("One GRPO step (encode + rollout + policy + reference + backward)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="64,128,256,512", help="comma-separated frame counts")
    parser.add_argument("--group", type=int, default=8, help="G responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="M: every response has exactly M tokens")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up (median kept)")
    parser.add_argument("--size", type=int, default=56, help="frame side in pixels (56: 2 LLM tokens per frame)")
    parser.add_argument("--vision-depth", type=int, default=0, help="0: match Qwen2.5-VL-7B's vision/LLM cost ratio")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (1: steadiest when shared)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per (mode, frames) subprocess")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: frames 64,128, one repeat")
    parser.add_argument("--plot", help="write a PNG of step time and memory vs frames here")
    parser.add_argument("--rollout-prompts", type=int, default=4, help="B for the batched-rollout row (0: skip it)")
    parser.add_argument("--worker", choices=(*MODES, ROLLOUT_WORKER), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = "64,128", 1
    args.frames = [int(f) for f in args.frames.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    args.vision_depth = args.vision_depth or matching_vision_depth()
    return args


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_rollout_worker(args) if args.worker == ROLLOUT_WORKER else run_worker(args)))
        return
    results, method = [], None
    for frames in args.frames:
        runs = {mode: spawn(args, mode, frames) for mode in args.modes}
        method = method or next((r["memory_method"] for r in runs.values() if "memory_method" in r), None)
        results.append(summarise(frames, runs))
    rollout = spawn(args, ROLLOUT_WORKER, args.frames[0]) if args.rollout_prompts > 0 else None
    vision = dict(VISION_BENCH, depth=args.vision_depth)
    report = {
        "results": results,
        "batched_rollout": dict(rollout, frames=args.frames[0]) if rollout else None,
        "config": {
            "device": args.device,
            "dtype": "float32",
            "torch_threads": torch.get_num_threads(),
            "group": args.group,
            "max_new_tokens": args.max_new_tokens,
            "response_length": "fixed: HF min_new_tokens=max_new_tokens; longvid/mrsp samplers with no stop id",
            "repeats": args.repeats,
            "timing": "wall clock; median of repeats after one warm-up; fresh process per (frames, mode)",
            "frame_size": f"{args.size}x{args.size} random uint8 (np.random)",
            "tokens_per_frame": (args.size // 28) ** 2 / 2,
            "llm": LLM_BENCH,
            "vision": dict(vision, heads=2, patch=14, temporal_patch=2, merge=2),
            "reference": "policy weights under no_grad (same compute as a frozen copy)",
            "loss": f"longvid.rl.grpo.grpo_loss, loss_type=grpo, beta={BETA}, random advantages; no optimizer step",
            "naive_logits": "logits_to_keep = response length + 1 (as TRL)",
            "cost_ratio_definition": "vision matmul FLOPs per merged LLM token / LLM matmul FLOPs per token "
            "(attention scores excluded)",
        },
        "cost_ratio_7b": round(cost_ratio(VISION_7B, LLM_7B), 4),
        "cost_ratio_bench": round(cost_ratio(vision, LLM_BENCH), 4),
        "memory_method": {
            "vmhwm_after_clear_refs": "fresh subprocess per (frames, mode); after model+inputs load, malloc_trim "
            "and reset the kernel peak-RSS mark (/proc/self/clear_refs=5); peak = VmHWM after warm-up+timed steps "
            "- VmRSS at reset",
            "ru_maxrss_minus_baseline": "fresh subprocess per mode; ru_maxrss after the steps - VmRSS after load",
            "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated after the steps - memory_allocated at reset",
        }.get(method, method),
    }
    print(json.dumps(report, indent=1))
    if args.plot:
        plot(results, args.plot)
        log.info("wrote %s", args.plot)


if __name__ == "__main__":
    main()
