"""Shared-prefix sampling agrees with Hugging Face `generate` and is reproducible."""

import numpy as np
import pytest
import torch

from helpers import assert_matches_hf_generate
from longvid.model.qwen2_5_vl import Qwen25VLAdapter
from longvid.model.sampling import SamplingConfig, filter_logits, sample
from longvid.model.tiny import build_tiny_model


@pytest.fixture(scope="module")
def setup():
    model, tok = build_tiny_model(seed=3)
    adapter = Qwen25VLAdapter(model.eval(), tok)
    frames = np.random.default_rng(0).integers(0, 256, size=(10, 56, 56, 3), dtype=np.uint8)
    video = adapter.preprocess(frames, np.arange(10) * 0.5)
    with torch.no_grad():
        visual = adapter.encode(video)
    prompt = adapter.build_prompt("Where does the block go?", visual)
    return adapter, video, visual, prompt


def test_greedy_equals_hf_generate(setup):
    adapter, video, visual, prompt = setup
    embeds, pos = adapter.prefix_inputs(prompt, visual)
    ours = sample(adapter, embeds, pos, 1, SamplingConfig(max_new_tokens=12, temperature=0))
    adapter.hf.model.rope_deltas = None
    ref = adapter.hf.generate(
        input_ids=prompt.input_ids[None],
        pixel_values_videos=video.pixel_values,
        video_grid_thw=video.grid_thw,
        second_per_grid_ts=torch.tensor([video.seconds_per_grid]),
        mm_token_type_ids=(prompt.visual_mask[None] * 2).int(),
        max_new_tokens=12,
        min_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert_matches_hf_generate(ours, ref, len(prompt))


def test_group_samples_are_reproducible_and_match_unshared_prefill(setup):
    adapter, _, visual, prompt = setup
    embeds, pos = adapter.prefix_inputs(prompt, visual)
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=50)
    a = sample(adapter, embeds, pos, 4, cfg, generator=torch.Generator().manual_seed(7))
    b = sample(adapter, embeds, pos, 4, cfg, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens)
    # Each sample's recorded log-probs equal a fresh full forward of prefix + that sample.
    for g in range(4):
        n = int(a.lengths[g])
        toks = a.tokens[g, :n]
        full = torch.cat([embeds, adapter.embed_tokens(toks)])
        full_pos = torch.cat([pos, adapter.continuation_positions(pos, n)], dim=1)
        with torch.no_grad():
            hidden, _ = adapter.hidden_states(full[None], full_pos[:, None])
            logp = torch.log_softmax(adapter.logits(hidden[0, len(prompt) - 1 : -1]).float(), -1)
        expected = logp.gather(-1, toks[:, None]).squeeze(-1)
        torch.testing.assert_close(a.logprobs[g, :n], expected, atol=1e-5, rtol=0)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.75)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.5)).tolist() == [[False, True, True, True]]


def test_sampling_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)


def test_cached_sampling_equals_an_uncached_reference_loop(setup):
    """Same seed, same tokens: the KV-cached decoder vs recomputing the whole sequence every step."""
    adapter, _, visual, prompt = setup
    embeds, pos = adapter.prefix_inputs(prompt, visual)
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.8, top_k=20)
    cached = sample(adapter, embeds, pos, 3, cfg, generator=torch.Generator().manual_seed(11))

    generator = torch.Generator().manual_seed(11)
    seqs = [embeds] * 3
    tokens = []
    with torch.no_grad():
        for step in range(cfg.max_new_tokens):
            rows = []
            for g in range(3):
                full_pos = torch.cat([pos, adapter.continuation_positions(pos, step)], dim=1)
                hidden, _ = adapter.hidden_states(seqs[g][None], full_pos[:, None])
                rows.append(adapter.logits(hidden[0, -1]).float())
            scaled = torch.stack(rows) / cfg.temperature
            probs = torch.softmax(filter_logits(scaled, cfg.top_k, cfg.top_p), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            tokens.append(token)
            seqs = [torch.cat([seqs[g], adapter.embed_tokens(token[g : g + 1])]) for g in range(3)]
    reference = torch.stack(tokens, dim=1)
    for g in range(3):
        n = int(cached.lengths[g])
        assert cached.tokens[g, :n].tolist() == reference[g, :n].tolist()


def _prefixes(adapter, frame_counts):
    """Prefixes of different videos and different lengths (more frames, more visual tokens)."""
    out = []
    for i, n in enumerate(frame_counts):
        frames = np.random.default_rng(10 + i).integers(0, 256, size=(n, 56, 56, 3), dtype=np.uint8)
        with torch.no_grad():
            visual = adapter.encode(adapter.preprocess(frames, np.arange(n) * 0.5))
        out.append(adapter.prefix_inputs(adapter.build_prompt(f"Question {i}: what moves?", visual), visual))
    return out


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("cfg", [SamplingConfig(max_new_tokens=10, temperature=0),
                                 SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=40, top_p=0.95)],
                         ids=["greedy", "sampled"])
def test_batched_sampling_equals_one_prompt_at_a_time(dtype, tol, cfg):
    from longvid.model.sampling import sample_batch

    model, tok = build_tiny_model(seed=5, dtype=dtype)
    adapter = Qwen25VLAdapter(model.eval(), tok)
    prefixes = _prefixes(adapter, (6, 14, 10))
    assert len({e.shape[0] for e, _ in prefixes}) == 3  # three lengths: the batched path pads
    batched = sample_batch(adapter, prefixes, 4, cfg, generators=[torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    for (embeds, pos), seed, got in zip(prefixes, (1, 2, 3), batched, strict=True):
        one = sample(adapter, embeds, pos, 4, cfg, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got.tokens, one.tokens)
        assert torch.equal(got.lengths, one.lengths) and torch.equal(got.finished, one.finished)
        torch.testing.assert_close(got.logprobs, one.logprobs, atol=tol, rtol=0)
    if not cfg.greedy:  # sampling really is random here: the prompts' groups are not all alike
        assert any(not torch.equal(s.tokens[0], s.tokens[1]) for s in batched)


def test_batched_sampling_stops_each_prompt_on_its_own():
    """A prompt whose rows all stop early keeps its own width and stops drawing random numbers."""
    from longvid.model.sampling import sample_batch

    model, tok = build_tiny_model(seed=5)
    adapter = Qwen25VLAdapter(model.eval(), tok)
    prefixes = _prefixes(adapter, (6, 10))
    greedy = SamplingConfig(max_new_tokens=6, temperature=0)
    first = [int(sample(adapter, e, p, 1, greedy).tokens[0, 0]) for e, p in prefixes]

    class StopOnFirst(Qwen25VLAdapter):  # prompt 0's greedy first token is a stop token
        @property
        def eos_token_ids(self):
            return [first[0]]

    stopping = StopOnFirst(model, tok)
    out = sample_batch(stopping, prefixes, 2, greedy)
    assert out[0].tokens.shape == (2, 1) and out[0].lengths.tolist() == [1, 1] and out[0].finished.all()
    if first[1] != first[0]:
        assert out[1].tokens.shape[1] > 1
    sampled = SamplingConfig(max_new_tokens=6, temperature=1e-4)  # ~greedy, but draws random numbers
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    sample_batch(stopping, prefixes, 2, sampled, generators=gens)
    fresh = torch.Generator().manual_seed(0)
    torch.multinomial(torch.ones(2, model.lm_head.out_features), 1, generator=fresh)  # one draw: the only step of prompt 0
    assert torch.equal(gens[0].get_state(), fresh.get_state())
