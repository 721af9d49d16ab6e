"""Visual summary tokens: windowed prefill with KV eviction equals one masked forward (float64),
ratio 1 is today's path, summary parameters round-trip through safetensors, bad input is refused."""

import random

import numpy as np
import pytest
import torch

from helpers import exact_float64_norms
from longvid import masks
from longvid.config import ModelConfig
from longvid.errors import ConfigError
from longvid.inputs import with_response
from longvid.model import load_adapter
from longvid.model.compress import (
    KEPT,
    NO_WINDOW,
    RAW,
    SUMMARY,
    CompressConfig,
    SummaryTokens,
    cache_bytes,
    interleave,
    layout_for,
    masked_hidden_states,
    windowed_prefill,
)
from longvid.model.qwen2_5_vl import Qwen25VLAdapter

WINDOW = 8


def _perturb(summary: SummaryTokens, seed: int = 0) -> None:
    """Summary weights unlike the base ones, so wrong routing shows in the numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in summary.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(ModelConfig(seed=3, dtype="float64"))


@pytest.fixture(scope="module")
def summary(adapter):
    s = SummaryTokens.from_adapter(adapter, ratios=(2, 3, 4, 8), window=WINDOW).attach(adapter)
    _perturb(s)
    yield s
    s.detach_hooks()


def _prefix(adapter, num_frames: int, seed: int = 0):
    frames = np.random.default_rng(seed).integers(0, 256, size=(num_frames, 56, 56, 3), dtype=np.uint8)
    visual = adapter.encode(adapter.preprocess(frames, np.arange(num_frames) * 0.5))
    prompt = adapter.build_prompt("What colour is the flash?", visual)
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    return prompt, visual, embeds, positions


def _tail_logits_both_ways(adapter, layout):
    with exact_float64_norms(), torch.no_grad():
        one_pass = masked_hidden_states(adapter, layout)
        pre = windowed_prefill(adapter, layout)
    tail = layout.windows[-1][1]
    return adapter.logits(one_pass[tail:]), adapter.logits(pre.last_hidden), pre


@pytest.mark.parametrize(
    "num_frames, ratios",
    [(16, 2), (16, 4), (9, 3), (13, 8), (15, [4, 2, 8, 1]), (16, [1, 8, 2, 4])],
    ids=["r2", "r4", "odd-frames-r3", "partial-window-r8", "mixed-with-kept-window", "mixed-kept-first"],
)
def test_windowed_prefill_equals_one_masked_forward(adapter, summary, num_frames, ratios):
    prompt, visual, embeds, positions = _prefix(adapter, num_frames)
    layout = interleave(embeds, positions, prompt.visual_mask, summary.embedding, ratios, WINDOW)
    one_pass_logits, windowed_logits, pre = _tail_logits_both_ways(adapter, layout)
    torch.testing.assert_close(windowed_logits, one_pass_logits, atol=1e-9, rtol=0)
    # The cache holds exactly the prefix text, kept windows, summaries and the text after the video.
    kept = (layout.kind != RAW).nonzero().flatten()
    assert torch.equal(pre.kept, kept)
    assert pre.cache.get_seq_length() == len(kept) < len(layout)
    # And the summaries really use their own projections: without routing the numbers change.
    with exact_float64_norms(), torch.no_grad():
        summary.detach_hooks()
        try:
            unrouted = adapter.logits(masked_hidden_states(adapter, layout)[layout.windows[-1][1]:])
        finally:
            summary.attach(adapter)
    assert (unrouted - one_pass_logits).abs().max() > 1e-6


def test_layout_counts_positions_and_labels(adapter, summary):
    prompt, visual, embeds, positions = _prefix(adapter, 9)  # 20 visual tokens: windows 8, 8, 4
    response = adapter.response_ids("<answer>B</answer>")
    full, full_pos, labels = with_response(adapter, prompt, visual, response)
    visual_mask = torch.cat([prompt.visual_mask, torch.zeros(len(response), dtype=torch.bool)])
    layout = interleave(full, full_pos, visual_mask, summary.embedding, [3, 8, 4], WINDOW, labels)
    # ceil(8/3) + ceil(8/8) + ceil(4/4) summaries.
    assert int(layout.is_summary.sum()) == 3 + 1 + 1
    assert len(layout) == len(full) + 5
    # Summary slots follow every r-th visual token and the partial group's last one.
    first = int(prompt.visual_mask.nonzero()[0])
    win0 = layout.kind[first : first + 8 + 3].tolist()
    assert win0 == [RAW] * 3 + [SUMMARY] + [RAW] * 3 + [SUMMARY] + [RAW] * 2 + [SUMMARY]
    # A summary's position is the position of the visual token before it; others keep theirs.
    for i in layout.is_summary.nonzero().flatten().tolist():
        assert torch.equal(layout.positions[:, i], layout.positions[:, i - 1])
    real = layout.source >= 0
    assert torch.equal(layout.positions[:, real], full_pos[:, layout.source[real]])
    assert torch.equal(layout.embeds[real], full[layout.source[real]])
    assert torch.equal(layout.embeds[layout.is_summary], summary.embedding.detach().expand(5, -1))
    # Labels: -100 on visual and summary tokens, the response's targets kept in order.
    assert torch.all(layout.labels[layout.kind != KEPT] == -100)
    assert layout.labels[layout.labels >= 0].tolist() == labels[labels >= 0].tolist()
    assert layout.windows[0][0] == first and layout.window_id[: first].eq(NO_WINDOW).all()


def test_mask_semantics():
    # text(2) | window 0: v v S | window 1: v v S | text(2)
    kind = torch.tensor([KEPT, KEPT, RAW, RAW, SUMMARY, RAW, RAW, SUMMARY, KEPT, KEPT])
    window_id = torch.tensor([-1, -1, 0, 0, 0, 1, 1, 1, -1, -1])
    dense = masks.dense_mask(masks.visual_summary(kind, window_id), 10, 10)
    assert dense[5].tolist() == [True, True, False, False, True, True, False, False, False, False]
    assert dense[8].tolist() == [True, True, False, False, True, False, False, True, True, False]
    assert dense[4, 2] and dense[4, 3] and not dense[7, 2]
    # Composes with shared-prefix packing: a second response sees the prefix, not the first one.
    segments = torch.tensor([0] * 9 + [1, 2])
    kind_p = torch.cat([kind[:9], torch.tensor([KEPT, KEPT])])
    win_p = torch.cat([window_id[:9], torch.tensor([-1, -1])])
    packed = masks.dense_mask(masks.and_masks(masks.shared_prefix(segments), masks.visual_summary(kind_p, win_p)), 11, 11)
    assert packed[10].tolist() == [True, True, False, False, True, False, False, True, True, False, True]


def test_ratio_one_is_todays_path_exactly(adapter, summary):
    prompt, visual, embeds, positions = _prefix(adapter, 12)
    layout = layout_for(adapter, summary, embeds, positions, prompt.visual_mask, 1)
    assert torch.equal(layout.embeds, embeds) and torch.equal(layout.positions, positions)
    assert not layout.is_summary.any()
    with torch.no_grad():
        today, _ = adapter.hidden_states(embeds[None], positions.unsqueeze(-2))
        ours = masked_hidden_states(adapter, layout)
        pre = windowed_prefill(adapter, layout)
    assert torch.equal(ours, today[0])
    torch.testing.assert_close(pre.last_hidden, today[0, layout.windows[-1][1] :], atol=1e-10, rtol=0)


def test_summary_params_save_reload_identical(adapter, summary, tmp_path):
    prompt, visual, embeds, positions = _prefix(adapter, 10)
    layout = layout_for(adapter, summary, embeds, positions, prompt.visual_mask, 4)
    with torch.no_grad():
        before = masked_hidden_states(adapter, layout)
    adapter.save_pretrained(tmp_path)
    summary.save(tmp_path)
    # The base checkpoint is untouched by the summary parameters: it loads as a plain model.
    reloaded = Qwen25VLAdapter.from_pretrained(tmp_path, dtype=torch.float64)
    assert set(reloaded.hf.state_dict()) == set(adapter.hf.state_dict())
    loaded = SummaryTokens.load(tmp_path, reloaded).attach(reloaded)
    try:
        assert loaded.ratios == summary.ratios and loaded.window == summary.window
        layout2 = layout_for(reloaded, loaded, *reloaded.prefix_inputs(prompt, visual), prompt.visual_mask, 4)
        with torch.no_grad():
            after = masked_hidden_states(reloaded, layout2)
    finally:
        loaded.detach_hooks()
    assert torch.equal(after, before)


def test_bad_input_is_refused_with_clear_errors(adapter, summary, tmp_path):
    prompt, visual, embeds, positions = _prefix(adapter, 4)
    args = (adapter, summary, embeds, positions, prompt.visual_mask)
    with pytest.raises(ConfigError, match="positive integer"):
        layout_for(*args, 0)
    with pytest.raises(ConfigError, match="not trained"):
        layout_for(*args, 16)
    with pytest.raises(ConfigError, match="larger than the window"):
        interleave(embeds, positions, prompt.visual_mask, summary.embedding, 16, 8)
    with pytest.raises(ConfigError, match="larger than the window"):
        CompressConfig(ratios=(2, 32), window=16)
    with pytest.raises(ValueError, match="ratios for"):
        interleave(embeds, positions, prompt.visual_mask, summary.embedding, [2, 2, 2], 8)
    with pytest.raises(ValueError, match="no visual tokens"):
        interleave(embeds, positions, torch.zeros_like(prompt.visual_mask), summary.embedding, 2, 8)
    with pytest.raises(ConfigError, match="no summary-token parameters"):
        SummaryTokens.load(tmp_path, adapter)
    with pytest.raises(ValueError, match="routing mask has shape"):
        from longvid.model.compress import routing

        with routing(torch.ones(1, 3, dtype=torch.bool)), torch.no_grad():
            adapter.hidden_states(embeds[None], positions.unsqueeze(-2))
    # A video shorter than one window is one partial window (8 visual tokens < window 8? here 8).
    short = layout_for(*args, 4)
    assert len(short.windows) == 1 and int(short.is_summary.sum()) == 2


def test_training_step_reaches_summary_parameters(adapter, summary):
    prompt, visual, embeds, positions = _prefix(adapter, 16)
    response = adapter.response_ids("<answer>B</answer>")
    full, full_pos, labels = with_response(adapter, prompt, visual, response)
    visual_mask = torch.cat([prompt.visual_mask, torch.zeros(len(response), dtype=torch.bool)])
    ratios = summary.draw_ratios(int(visual_mask.sum()), random.Random(0))
    assert len(ratios) == 4 and set(ratios) <= set(summary.ratios)
    layout = layout_for(adapter, summary, full, full_pos, visual_mask, ratios, labels)
    summary.zero_grad(set_to_none=True)
    hidden = masked_hidden_states(adapter, layout)
    keep = layout.labels >= 0
    torch.nn.functional.cross_entropy(adapter.logits(hidden[keep]), layout.labels[keep]).backward()
    assert summary.embedding.grad is not None and summary.embedding.grad.abs().sum() > 0
    for i, layer in enumerate(summary.layers):
        for name in ("q_proj", "k_proj", "v_proj"):
            grad = layer[name].weight.grad.abs().sum()
            # The last layer's summary queries only make summary outputs, which no loss reads.
            assert (grad == 0) if (name == "q_proj" and i == len(summary.layers) - 1) else (grad > 0), (i, name)
    adapter.hf.zero_grad(set_to_none=True)


def test_cache_bytes_shrink_with_ratio(adapter, summary):
    prompt, visual, embeds, positions = _prefix(adapter, 32)
    sizes = {}
    for r in (1, 2, 8):
        layout = layout_for(adapter, summary, embeds, positions, prompt.visual_mask, r)
        sizes[r] = cache_bytes(windowed_prefill(adapter, layout).cache)
    text = len(prompt) - int(prompt.visual_mask.sum())
    per_token = sizes[1] // len(prompt)
    assert sizes[2] == per_token * (text + 32) and sizes[8] == per_token * (text + 8)
