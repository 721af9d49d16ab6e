"""Shared-prefix packing equals G separate forwards: log-probs and every parameter's gradient."""

import numpy as np
import pytest
import torch

from helpers import exact_float64_norms
from longvid import masks
from longvid.config import ModelConfig
from longvid.model import load_adapter
from longvid.rl.packing import pack, packed_logprobs, separate_logprobs


@pytest.fixture(scope="module")
def setup():
    adapter = load_adapter(ModelConfig(seed=4, dtype="float64"))
    frames = np.random.default_rng(1).integers(0, 256, size=(8, 56, 56, 3), dtype=np.uint8)
    video = adapter.preprocess(frames, np.arange(8) * 0.5)
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(10, 1000, (n,), generator=g) for n in (5, 1, 9, 3)]
    return adapter, video, responses


def _grads(adapter):
    return {n: p.grad.clone() for n, p in adapter.hf.named_parameters() if p.grad is not None}


def _run(adapter, video, responses, packed: bool):
    adapter.hf.zero_grad(set_to_none=True)
    visual = adapter.encode(video)  # with gradients: the vision tower is trained here too
    prompt = adapter.build_prompt("Which colour comes first?", visual)
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    if packed:
        logp = packed_logprobs(adapter, pack(adapter, embeds, positions, responses))
    else:
        logp = separate_logprobs(adapter, embeds, positions, responses)
    weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
    (logp * weights).sum().backward()
    return logp.detach(), _grads(adapter)


def test_packed_equals_separate_forward_and_backward(setup):
    adapter, video, responses = setup
    with exact_float64_norms():
        logp_sep, grads_sep = _run(adapter, video, responses, packed=False)
        logp_pack, grads_pack = _run(adapter, video, responses, packed=True)
    torch.testing.assert_close(logp_pack, logp_sep, atol=1e-10, rtol=0)
    assert grads_sep.keys() == grads_pack.keys() and len(grads_sep) > 20
    for name in grads_sep:
        torch.testing.assert_close(grads_pack[name], grads_sep[name], atol=1e-10, rtol=1e-9, msg=name)


def test_padding_slots_are_zero_and_layout_is_right(setup):
    adapter, video, responses = setup
    with torch.no_grad():
        visual = adapter.encode(video)
        prompt = adapter.build_prompt("q", visual)
        embeds, positions = adapter.prefix_inputs(prompt, visual)
        packed = pack(adapter, embeds, positions, responses)
        logp = packed_logprobs(adapter, packed)
    assert len(packed) == len(prompt) + sum(len(r) for r in responses)
    assert packed.mask.sum(1).tolist() == [len(r) for r in responses]
    assert torch.all(logp[~packed.mask] == 0) and torch.all(logp[packed.mask] < 0)
    # Every response starts at the same position, right after the prefix.
    starts = [int((packed.segment_ids == g + 1).nonzero()[0]) for g in range(len(responses))]
    assert len({int(packed.positions[0, s]) for s in starts}) == 1
    dense = masks.dense_mask(packed.mask_fn, len(packed), len(packed))
    assert not dense[starts[1], starts[0]] and dense[starts[1], len(prompt) - 1]


def test_pack_rejects_empty_responses(setup):
    adapter, video, _ = setup
    with pytest.raises(ValueError, match="at least one"):
        pack(adapter, torch.zeros(3, 128, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.long), [torch.tensor([], dtype=torch.long)])
