"""Small in-memory fixtures shared by tests: frames and samples without touching the disk."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from longvid.data.schema import Sample
from longvid.video.decode import Frames

COLOURS = np.array([[220, 30, 30], [30, 200, 30], [30, 60, 230], [230, 220, 30]], np.uint8)
PHASES = ("beginning", "early middle", "late middle", "end")


def flash_sample(i: int, num_frames: int = 16, size: int = 56) -> tuple[Sample, Frames]:
    """A red flash in one quarter of a noisy grey video; the answer is that quarter."""
    rng = np.random.default_rng(i)
    quarter = int(rng.integers(4))
    pixels = np.full((num_frames, size, size, 3), 90, np.uint8) + rng.integers(0, 20, (num_frames, size, size, 3), dtype=np.uint8)
    seg = num_frames // 4
    start = quarter * seg
    pixels[start : start + 2] = COLOURS[0]
    sample = Sample(
        id=f"flash-{i}",
        video=f"videos/flash-{i}.mp4",
        question="When does the red flash happen?",
        answer="ABCD"[quarter],
        category="temporal",
        options=PHASES,
        reasoning=f"The red flash happens in the {PHASES[quarter]} of the video.",
    )
    return sample, Frames(pixels=pixels, timestamps=np.arange(num_frames) * 0.5, source=sample.video)


def flash_set(n: int, offset: int = 0, **kw):
    pairs = [flash_sample(offset + i, **kw) for i in range(n)]
    frames = {s.id: f for s, f in pairs}
    return [s for s, _ in pairs], lambda s: frames[s.id]


def _full_precision_rmsnorm(self, x):
    variance = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def exact_float64_norms():
    """Hugging Face's RMSNorm computes in float32 even for float64 inputs, so two float64 paths
    that differ by 1e-16 can round apart by 1e-8. Equivalence tests run the norm in the input dtype
    to see the exactness of *our* code."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    original = qwen.Qwen2_5_VLRMSNorm.forward
    qwen.Qwen2_5_VLRMSNorm.forward = _full_precision_rmsnorm
    try:
        yield
    finally:
        qwen.Qwen2_5_VLRMSNorm.forward = original


def crash_after(load_frames, calls: int):
    """`load_frames` that raises KeyboardInterrupt (a killed job) on every call after the first `calls`."""
    made = [0]

    def crashing(sample):
        made[0] += 1
        if made[0] > calls:
            raise KeyboardInterrupt
        return load_frames(sample)

    return crashing


def separate_compressed_logprobs(adapter, layout, responses: list[torch.Tensor]) -> torch.Tensor:
    """The reference for packed passes over a compressed prefix: one masked forward over
    `[compressed prefix | r_g]` per response; log-probs `[G, longest]`, zero-padded."""
    from longvid.model import compress

    rows = []
    for r in responses:
        embeds = torch.cat([layout.embeds, adapter.embed_tokens(r)])
        positions = torch.cat([layout.positions, adapter.continuation_positions(layout.positions, len(r))], dim=-1)
        padded = layout.padded(len(embeds))
        full = compress.Layout(embeds, positions, padded.kind, padded.window_id, padded.source, layout.windows)
        hidden = compress.masked_hidden_states(adapter, full)
        rows.append(torch.log_softmax(adapter.logits(hidden[len(layout) - 1 : -1]), -1).gather(-1, r[:, None])[:, 0])
    out = torch.zeros(len(responses), max(len(r) for r in responses), dtype=rows[0].dtype)
    for g, row in enumerate(rows):
        out[g, : len(row)] = row
    return out


def assert_matches_hf_generate(ours, ref, prompt_len: int) -> None:
    """Our greedy sample (`Samples`, row 0) equals Hugging Face `generate`'s (`output_logits=True`):
    the same tokens, and not only the argmax — each generated token's log-prob, positions included."""
    n = int(ours.lengths[0])
    assert n >= 1
    assert ours.tokens[0, :n].tolist() == ref.sequences[0, prompt_len : prompt_len + n].tolist()
    hf_logp = torch.stack([torch.log_softmax(step[0].float(), -1) for step in ref.logits[:n]])
    expected = hf_logp.gather(-1, ours.tokens[0, :n, None]).squeeze(-1)
    torch.testing.assert_close(ours.logprobs[0, :n], expected, atol=1e-5, rtol=0)
