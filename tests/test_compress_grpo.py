"""GRPO over a compressed prefix: the packed pass equals G separate compressed forwards (log-probs
and gradients, float64), rollout log-probs over the windowed-prefill cache equal the packed pass,
and the compressed packed pass under sequence parallelism (Ulysses, ring; 2 and 4 ranks) equals one process."""

import numpy as np
import pytest
import torch

from dist_utils import run_ranks
from helpers import exact_float64_norms, separate_compressed_logprobs
from longvid.config import ModelConfig
from longvid.model import compress, load_adapter
from longvid.model.sampling import SamplingConfig
from longvid.rl.packing import pack

WINDOW = 6
RATIOS = [3, 2, 6, 1]  # windows of 6, 6, 6, 2 visual tokens; the last one kept uncompressed


def _setup(seed: int = 4):
    adapter = load_adapter(ModelConfig(seed=seed, dtype="float64"))
    summary = compress.SummaryTokens.from_adapter(adapter, ratios=(2, 3, 6), window=WINDOW).attach(adapter)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in summary.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    frames = np.random.default_rng(1).integers(0, 256, size=(10, 56, 56, 3), dtype=np.uint8)
    video = adapter.preprocess(frames, np.arange(10) * 0.5)
    responses = [torch.randint(10, 1000, (n,), generator=g) for n in (5, 1, 7, 3)]
    return adapter, summary, video, responses


def _layout(adapter, summary, visual):
    prompt = adapter.build_prompt("Which colour comes first?", visual)
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    return compress.layout_for(adapter, summary, embeds, positions, prompt.visual_mask, RATIOS)


def _grads(*modules):
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters() if p.grad is not None}


def _run(adapter, summary, video, responses, packed: bool):
    adapter.hf.zero_grad(set_to_none=True)
    summary.zero_grad(set_to_none=True)
    layout = _layout(adapter, summary, adapter.encode(video))
    if packed:
        logp = compress.packed_logprobs(adapter, layout, pack(adapter, layout.embeds, layout.positions, responses))
    else:
        logp = separate_compressed_logprobs(adapter, layout, responses)
    weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
    (logp * weights).sum().backward()
    return logp.detach(), _grads(adapter.hf, summary)


def test_packed_compressed_pass_equals_separate_forward_and_backward():
    adapter, summary, video, responses = _setup()
    with exact_float64_norms():
        logp_sep, grads_sep = _run(adapter, summary, video, responses, packed=False)
        logp_pack, grads_pack = _run(adapter, summary, video, responses, packed=True)
    torch.testing.assert_close(logp_pack, logp_sep, atol=1e-10, rtol=0)
    assert grads_sep.keys() == grads_pack.keys() and any(k.startswith("1.") for k in grads_sep)
    for name in grads_sep:
        torch.testing.assert_close(grads_pack[name], grads_sep[name], atol=1e-10, rtol=1e-9, msg=name)


def test_rollout_over_windowed_cache_matches_packed_pass():
    adapter, summary, video, _ = _setup()
    with torch.no_grad():
        layout = _layout(adapter, summary, adapter.encode(video))
        out = compress.sample(
            adapter, layout, 3, SamplingConfig(max_new_tokens=6, temperature=1.0), generator=torch.Generator().manual_seed(0)
        )
        responses = [out.tokens[g, : int(n)] for g, n in enumerate(out.lengths)]
        logp = compress.packed_logprobs(adapter, layout, pack(adapter, layout.embeds, layout.positions, responses))
    # Rollout log-probs are float32 (sampling computes them so); the paths agree to that precision.
    torch.testing.assert_close(out.logprobs[out.mask()].double(), logp[:, : out.tokens.shape[1]][out.mask()], atol=2e-5, rtol=0)


def _sp_pass(rank, world, mode):
    from longvid.parallel.apply import SequenceParallel
    from longvid.parallel.mesh import Mesh, init_mesh

    mesh = init_mesh(sp=world) if world > 1 else Mesh.single()
    adapter, summary, video, responses = _setup()
    sp = SequenceParallel(adapter, mesh, mode=mode, layout="zigzag")
    with exact_float64_norms():
        layout = _layout(adapter, summary, sp.encode(video))
        logp = compress.packed_logprobs(adapter, layout, pack(adapter, layout.embeds, layout.positions, responses), sp=sp)
        weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
        (logp * weights).sum().backward()
    sp.all_reduce_grads(list(adapter.hf.parameters()) + list(summary.parameters()))
    grads = {n: [float(v.grad.sum()), float(v.grad.norm())] for n, v in _named(adapter, summary) if v.grad is not None}
    return logp.detach().tolist(), grads


def _named(adapter, summary):
    yield from adapter.hf.named_parameters()
    yield from (("summary." + n, p) for n, p in summary.named_parameters())


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_compressed_packed_pass_is_exact_under_sp(mode, world):
    """The composed (shared prefix AND visual summary) mask under 2 and 4 sequence-parallel ranks:
    at 4 a rank's shard can hold no summary token at all, so its summary parameters get no
    gradient: the replicated reduction must still make the same collectives on every rank."""
    ref_logp, ref_grads = _sp_pass(0, 1, mode)
    assert any(n.startswith("summary.") for n in ref_grads)
    for logp, grads in run_ranks(_sp_pass, world, mode, timeout=300):
        torch.testing.assert_close(torch.tensor(logp), torch.tensor(ref_logp), atol=1e-10, rtol=0)
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(torch.tensor(grads[name]), torch.tensor(ref_grads[name]), atol=1e-9, rtol=1e-9, msg=name)


def test_likelihood_scoring_over_windowed_cache_matches_packed_pass():
    adapter, summary, video, responses = _setup()
    with torch.no_grad(), exact_float64_norms():
        visual = adapter.encode(video)
        layout = _layout(adapter, summary, visual)
        scores = compress.continuation_logprobs(adapter, compress.windowed_prefill(adapter, layout), responses)
        packed = compress.packed_logprobs(adapter, layout, pack(adapter, layout.embeds, layout.positions, responses))
        torch.testing.assert_close(scores, packed.sum(-1), atol=1e-10, rtol=0)
        # Ratio 1 without summary tokens scores exactly as the uncompressed model.
        prompt = adapter.build_prompt("Which colour comes first?", visual)
        embeds, positions = adapter.prefix_inputs(prompt, visual)
        plain = compress.Compressor(None, 1).score(adapter, prompt, embeds, positions, responses)
        from longvid.rl.packing import separate_logprobs

        torch.testing.assert_close(plain, separate_logprobs(adapter, embeds, positions, responses).sum(-1), atol=1e-10, rtol=0)
    with pytest.raises(Exception, match="needs trained summary tokens"):
        compress.Compressor(None, 4)
