"""GPU check: a Qwen2.5-VL-shaped model (random init from a 3B or 7B config, no download) through
prefill, training forward/backward, an SFT step and a GRPO step, with FSDP under torchrun.

Prints ONE JSON object: step times, tokens/s, peak memory, model FLOPs utilisation (MFU) of the
prefill and of the training forward/backward against the chip's dense bf16 peak (stated in the
output; H100/H200 detected by name), and the equivalence of the FlexAttention and dense paths on
the shared-prefix (GRPO packing) mask, forward and backward.

    python bench/gpu.py --size 3b                       # one GPU (a mesh of one: no FSDP)
    torchrun --nproc-per-node 8 bench/gpu.py --size 7b  # FSDP over 8 GPUs

FLOPs are counted analytically (`forward_flops`): 2 per multiply-add of every language-model
matmul (attention projections, MLP, LM head) plus attention scores and values (causal: each query
sees on average half the sequence). Training counts 3x the forward (backward = 2x), without the
recomputation of activation checkpointing (the usual MFU convention). Refuses to run without CUDA,
except as `--cpu-check`: the same passes and trainer steps on the tiny model in float32 on CPU
(no MFU, no memory figures, no FlexAttention backward — not implemented on CPU), so the script's
code is proven before a GPU's time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the in-memory flash fixtures

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}

# Shapes of the public Qwen2.5-VL checkpoints' config.json (text and vision towers).
SHAPES = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
TINY = "tiny"  # --cpu-check's model: the tiny Qwen2.5-VL config of longvid.model.tiny
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, temporal_patch_size=2,
              spatial_merge_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)


def peak_flops(device_name: str) -> tuple[float, str]:
    """(peak bf16 FLOP/s, the table entry used) for a CUDA device name; longest match wins."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key] * 1e12, key
    raise SystemExit(f"bench/gpu.py: no bf16 peak known for {device_name!r}; add it to PEAK_BF16_TFLOPS")


def model_config(size: str, tokenizer):
    """A Qwen2.5-VL config of the public `size` shapes whose special-token ids match `tokenizer`
    (the embedded tiny tokenizer; the vocabulary keeps the real size)."""
    from transformers import Qwen2_5_VLConfig

    from longvid.model.tiny import SPECIAL_TOKENS

    if size not in SHAPES:
        raise SystemExit(f"--size must be one of {', '.join(SHAPES)}, got {size!r}")
    text = dict(SHAPES[size])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if max(ids.values()) >= text["vocab_size"]:
        raise ValueError("tokenizer ids do not fit the vocabulary")
    tie = text.pop("tie_word_embeddings")
    return Qwen2_5_VLConfig(
        text_config=dict(
            **text, max_position_embeddings=128000, rope_theta=1000000.0,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=tie,
        ),
        vision_config=dict(**VISION, out_hidden_size=text["hidden_size"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )


def matmul_params(config) -> int:
    """Weights of the language model's matmuls per token: every decoder layer's projections and the LM head."""
    t = config.text_config
    head_dim = t.hidden_size // t.num_attention_heads
    attention = 2 * t.hidden_size * t.num_attention_heads * head_dim + 2 * t.hidden_size * t.num_key_value_heads * head_dim
    mlp = 3 * t.hidden_size * t.intermediate_size
    return t.num_hidden_layers * (attention + mlp) + t.hidden_size * t.vocab_size


def forward_flops(config, seq_len: int, *, causal: bool = True) -> float:
    """Forward FLOPs of the language model over one `seq_len` sequence (matmuls + attention)."""
    t = config.text_config
    width = t.num_attention_heads * (t.hidden_size // t.num_attention_heads)
    seen = seq_len / 2 if causal else seq_len  # keys each query attends to, on average
    attention = 2 * 2 * t.num_hidden_layers * width * seen  # QK^T and PV per query token
    return seq_len * (2 * matmul_params(config) + attention)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of `fn` over `repeats` runs after one warm-up, synchronised."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _peak(fn, device: torch.device) -> tuple[float, int | None]:
    """Wall time of one `fn` and the peak bytes allocated on the GPU during it (None on CPU)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    return flops / seconds / peak if peak else None


def _gib(num_bytes: int | None) -> float | None:
    return None if num_bytes is None else num_bytes / 2**30


def build_adapter(size: str, device: torch.device):
    """Random init of `size` (a public shape in bf16, or `tiny` in float32 for --cpu-check)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from longvid.model.qwen2_5_vl import Qwen25VLAdapter
    from longvid.model.tiny import load_tokenizer, tiny_config

    tokenizer = load_tokenizer()
    config = tiny_config(tokenizer) if size == TINY else model_config(size, tokenizer)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    if size != TINY:
        torch.set_default_dtype(torch.bfloat16)  # allocate in bf16 from the start (no fp32 copy)
    try:
        with device:
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return Qwen25VLAdapter(model, tokenizer)


def prefill_mfu(adapter, seq_len: int, peak: float, repeats: int) -> dict:
    embeds = torch.randn(1, seq_len, adapter.hidden_size, device=adapter.device, dtype=adapter.dtype)
    positions = torch.arange(seq_len, device=adapter.device).expand(3, 1, -1)

    @torch.no_grad()
    def run():
        hidden, _ = adapter.hidden_states(embeds, positions)
        adapter.logits(hidden[:, -1:])

    seconds = _time(run, repeats, adapter.device)
    flops = forward_flops(adapter.hf.config, seq_len)
    return {"tokens": seq_len, "seconds": seconds, "tokens_per_s": seq_len / seconds, "mfu": _mfu(flops, seconds, peak)}


def train_mfu(adapter, seq_len: int, peak: float, repeats: int) -> dict:
    from longvid.model.common import token_logprobs

    embeds = torch.randn(1, seq_len, adapter.hidden_size, device=adapter.device, dtype=adapter.dtype)
    positions = torch.arange(seq_len, device=adapter.device).expand(3, 1, -1)
    targets = torch.randint(0, 1000, (seq_len,), device=adapter.device)
    adapter.model.train()

    def run():
        hidden, _ = adapter.hidden_states(embeds, positions)
        (-token_logprobs(adapter, hidden[0], targets).mean()).backward()
        adapter.model.zero_grad(set_to_none=True)

    seconds = _time(run, repeats, adapter.device)
    flops = 3 * forward_flops(adapter.hf.config, seq_len)
    return {"tokens": seq_len, "seconds": seconds, "tokens_per_s": seq_len / seconds, "mfu": _mfu(flops, seconds, peak)}


def flex_vs_dense(device: torch.device, seq_len: int = 4096, heads: int = 8, kv_heads: int = 2, dim: int = 128) -> dict:
    """FlexAttention (compiled, BlockMask) vs SDPA with the dense mask on a shared-prefix packing:
    max |difference| of outputs and of dQ, dK, dV, in float32 (and bf16)."""
    import torch.nn.functional as F

    from longvid.masks import dense_mask, shared_prefix
    from longvid.parallel.attention import _flex_attention_forward, attention_for

    prefix = seq_len // 2
    lengths = [(seq_len - prefix) // 4] * 4
    seg = torch.cat([torch.zeros(prefix, dtype=torch.long)] + [torch.full((n,), g + 1) for g, n in enumerate(lengths)])
    seg = torch.cat([seg, torch.full((seq_len - len(seg),), 4)]).to(device)
    mask_fn = shared_prefix(seg)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, h, seq_len, dim, device=device, dtype=dtype, generator=g).requires_grad_()
                   for h in (heads, kv_heads, kv_heads))
        name, block = attention_for(mask_fn, seq_len, device)
        flex, _ = _flex_attention_forward(None, q, k, v, block, scaling=dim**-0.5)
        grads_flex = torch.autograd.grad(flex.float().square().sum(), (q, k, v))
        dense = F.scaled_dot_product_attention(
            q, k, v, attn_mask=dense_mask(mask_fn, seq_len, seq_len, device=device), scale=dim**-0.5, enable_gqa=True
        ).transpose(1, 2)
        grads_dense = torch.autograd.grad(dense.float().square().sum(), (q, k, v))
        out[str(dtype).removeprefix("torch.")] = {
            "implementation": name,
            "forward_max_abs": float((flex.float() - dense.float()).abs().max()),
            "backward_max_abs": max(float((a.float() - b.float()).abs().max()) for a, b in zip(grads_flex, grads_dense)),
        }
    return out


def _timed_steps(trainer, steps: int, device: torch.device) -> dict:
    """The last of `steps` training steps' record, with its wall time and peak GPU memory."""
    for _ in range(steps):
        record = {}
        record["seconds"], record["peak_bytes"] = _peak(lambda: record.update(trainer.train_step()), device)
    return record


def sft_step(adapter, mesh, num_frames: int, size: int, out_dir: str, steps: int) -> dict:
    from helpers import flash_set
    from longvid.config import ParallelConfig, VideoConfig
    from longvid.sft.trainer import SFTConfig, SFTTrainer
    from longvid.training import OptimConfig

    samples, frames = flash_set(2 * mesh.dp_size, num_frames=num_frames, size=size)
    cfg = SFTConfig(
        train=__file__, out_dir=f"{out_dir}/sft", steps=steps, grad_accum=1, progress=False, log_every=0,
        video=VideoConfig(num_frames=num_frames, size=size), optim=OptimConfig(lr=1e-6, warmup_steps=0),
        parallel=ParallelConfig(sp=1, activation_checkpointing=True), freeze_vision=True,
    )
    last = _timed_steps(SFTTrainer(adapter, cfg, samples, frames, mesh=mesh), steps, mesh.device)
    return {"step_s": last["seconds"], "tokens_per_s": last["tokens_per_s"], "peak_gib": _gib(last["peak_bytes"]),
            "loss": last["loss"]}


def grpo_step(adapter, mesh, num_frames: int, size: int, out_dir: str, steps: int) -> dict:
    """GRPO through the public trainer API (beta 0: no reference copy)."""
    from helpers import flash_set
    from longvid.config import ParallelConfig, VideoConfig
    from longvid.rl.trainer import GRPOConfig, GRPOTrainer

    samples, frames = flash_set(2 * mesh.dp_size, num_frames=num_frames, size=size)
    cfg = GRPOConfig(
        train=__file__, out_dir=f"{out_dir}/grpo", steps=steps, batch_size=1, group_size=4, max_new_tokens=32,
        progress=False, log_every=0, video=VideoConfig(num_frames=num_frames, size=size),
        parallel=ParallelConfig(sp=1, activation_checkpointing=True),
    )
    last = _timed_steps(GRPOTrainer(adapter, cfg, samples, frames, mesh=mesh), steps, mesh.device)
    return {"step_s": last["seconds"], "peak_gib": _gib(last["peak_bytes"]),
            **{k: v for k, v in last.items() if k.startswith("time/")}}


# (flag, default on a GPU, default for --cpu-check)
SIZES = (("--prefill-tokens", 16384, 256), ("--train-tokens", 8192, 128), ("--frames", 64, 4), ("--frame-size", 224, 56),
         ("--steps", 2, 1), ("--repeats", 3, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="3b", choices=sorted(SHAPES))
    for flag, gpu, cpu in SIZES:
        parser.add_argument(flag, type=int, help=f"default {gpu} (--cpu-check: {cpu})")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: prefill,train,flex,sft,grpo")
    parser.add_argument("--cpu-check", action="store_true",
                        help="run every part but flex on the tiny model on CPU (small sizes): proves the script, measures nothing")
    args = parser.parse_args()
    for flag, gpu, cpu in SIZES:
        name = flag.removeprefix("--").replace("-", "_")
        if getattr(args, name) is None:
            setattr(args, name, cpu if args.cpu_check else gpu)
    if args.cpu_check:
        return run(args, size=TINY, device="cpu", peak=None, chip=None, skip={"flex"})
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (none is visible to torch); CPU figures come from bench/sp.py and "
              "bench/fsdp.py", file=sys.stderr)
        return 2
    peak, chip = peak_flops(torch.cuda.get_device_name())
    return run(args, size=args.size, device="cuda", peak=peak, chip=chip, skip=set())


def run(args, *, size: str, device: str, peak: float | None, chip: str | None, skip: set[str]) -> int:
    from longvid.parallel.mesh import init_mesh

    mesh = init_mesh(device=device)
    device = mesh.device
    skip |= set(filter(None, args.skip.split(",")))
    adapter = build_adapter(size, device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "gpus": mesh.world_size,
        "peak_bf16_tflops": peak and peak / 1e12, "peak_from": chip,
        "model": f"Qwen2.5-VL-{size} shapes, random init, {adapter.dtype}".replace("torch.", ""),
        "llm_matmul_params": matmul_params(adapter.hf.config),
    }
    if mesh.world_size == 1:
        # Whole-model passes measure kernels, not sharding: on one process, before any FSDP.
        if "prefill" not in skip:
            result["prefill"] = prefill_mfu(adapter, args.prefill_tokens, peak, args.repeats)
        if "train" not in skip:
            result["train_fwd_bwd"] = train_mfu(adapter, args.train_tokens, peak, args.repeats)
    if "flex" not in skip:
        result["flex_vs_dense"] = flex_vs_dense(device)
    with tempfile.TemporaryDirectory() as tmp:
        if "sft" not in skip:
            result["sft"] = sft_step(adapter, mesh, args.frames, args.frame_size, tmp, args.steps)
        if "grpo" not in skip:
            result["grpo"] = grpo_step(build_adapter(size, device), mesh, args.frames, args.frame_size, tmp, args.steps)
    if mesh.rank == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
