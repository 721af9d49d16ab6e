"""GRPO's packed policy pass under sequence parallelism (gloo) equals one process: log-probs and grads."""

import numpy as np
import pytest
import torch

from dist_utils import run_ranks
from helpers import exact_float64_norms
from longvid.config import ModelConfig
from longvid.model import load_adapter
from longvid.parallel.apply import SequenceParallel
from longvid.rl.packing import pack, packed_logprobs


def _packed_pass(rank, world, mode, layout):
    from longvid.parallel.mesh import Mesh, init_mesh

    mesh = init_mesh(sp=world) if world > 1 else Mesh.single()
    adapter = load_adapter(ModelConfig(seed=4, dtype="float64"))
    sp = SequenceParallel(adapter, mesh, mode=mode, layout=layout)
    frames = np.random.default_rng(1).integers(0, 256, size=(10, 56, 56, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(10, 1000, (n,), generator=g) for n in (5, 1, 7, 3)]
    with exact_float64_norms():
        visual = sp.encode(adapter.preprocess(frames, np.arange(10) * 0.5))  # frame-sharded, with gradients
        prompt = adapter.build_prompt("Which colour comes first?", visual)
        embeds, positions = adapter.prefix_inputs(prompt, visual)
        logp = packed_logprobs(adapter, pack(adapter, embeds, positions, responses), sp=sp)
        weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
        (logp * weights).sum().backward()
    sp.all_reduce_grads(adapter.hf.parameters())
    grads = {n: p.grad.flatten()[:64].tolist() + [float(p.grad.sum()), float(p.grad.norm())]
             for n, p in adapter.hf.named_parameters() if p.grad is not None}
    return logp.detach().tolist(), grads


@pytest.mark.parametrize("world,mode,layout", [(2, "ulysses", "zigzag"), (2, "ring", "zigzag"), (4, "hybrid", "zigzag")])
def test_packed_policy_pass_is_exact_under_sp(world, mode, layout):
    ref_logp, ref_grads = _packed_pass(0, 1, mode, layout)
    for logp, grads in run_ranks(_packed_pass, world, mode, layout, timeout=300):
        torch.testing.assert_close(torch.tensor(logp), torch.tensor(ref_logp), atol=1e-10, rtol=0)
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(torch.tensor(grads[name]), torch.tensor(ref_grads[name]), atol=1e-9, rtol=1e-9, msg=name)
