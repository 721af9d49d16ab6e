"""An unmodified Hugging Face Qwen2.5-VL runs sequence-parallel and equals the single process (float64).

LLM stage: logits, loss and every parameter gradient of a forward + backward on `inputs_embeds` and
3-D (M-RoPE) position ids. Encoder stage: the vision tower run on temporal-patch shares and
all-gathered equals one encode of the whole video, forward and backward.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.vision_utils import get_vision_cu_seqlens

from dist_utils import run_ranks
from longvid import masks
from longvid.errors import ConfigError
from longvid.parallel import (
    Mesh,
    ShardedMask,
    all_reduce_grads,
    gather_embeddings,
    init_mesh,
    register_sp_attention,
    shard_sequence,
    sharded_loss,
    shift_labels,
    split_frames,
    unshard,
)

HIDDEN, VOCAB = 64, 300
PREFIX, RESPONSES = 25, (7, 6, 7)  # text + video + question, then 3 packed responses
S = PREFIX + sum(RESPONSES)  # 45: every layout pads
SEGMENTS = torch.tensor([0] * PREFIX + [i + 1 for i, n in enumerate(RESPONSES) for _ in range(n)])
MASKS = {"causal": masks.causal, "shared_prefix": masks.shared_prefix(SEGMENTS)}
GRID = (5, 8, 4)  # temporal patches x patch rows x patch cols of one video
CASES = {
    2: [(dict(sp=2), mode, "contiguous", mask) for mode in ("ulysses", "ring") for mask in MASKS],
    4: [
        (dict(sp=4, ulysses=2, ring=2), mode, "zigzag", mask)
        for mode in ("ulysses", "ring", "hybrid")
        for mask in MASKS
    ],
}


def _model():
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=VOCAB,
            initializer_range=0.1,  # peaked attention: a misplaced key would show
            bos_token_id=0,
            eos_token_id=1,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            num_heads=2,
            intermediate_size=64,
            out_hidden_size=HIDDEN,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
    )
    return Qwen2_5_VLForConditionalGeneration(config).to(torch.float64)


def _inputs():
    """Embeddings, 3-D positions (text, a t x h x w video block, text; responses restart) and labels."""
    g = torch.Generator().manual_seed(3)
    embeds = torch.randn(1, S, HIDDEN, generator=g, dtype=torch.float64)
    t, h, w = torch.meshgrid(torch.arange(3), torch.arange(2), torch.arange(3), indexing="ij")
    video = torch.stack([t.flatten(), h.flatten(), w.flatten()]) + 5
    text = torch.arange(5).expand(3, -1)
    question = torch.arange(PREFIX - 23).expand(3, -1) + int(video.max()) + 1
    prefix = torch.cat([text, video, question], dim=1)
    start = int(prefix.max()) + 1
    responses = [torch.arange(n).expand(3, -1) + start for n in RESPONSES]
    positions = torch.cat([prefix, *responses], dim=1)[:, None]  # [3, 1, S]
    labels = torch.randint(0, VOCAB, (1, S), generator=g)
    labels[:, :PREFIX] = -100
    return embeds, positions, labels


def _reference(model, mask_name):
    """Stock transformers: sdpa, its own causal mask, or our pattern as a dense 4-D mask."""
    embeds, positions, labels = _inputs()
    embeds.requires_grad_()
    model.zero_grad()
    model.set_attn_implementation({"text_config": "sdpa"})
    mask = None if mask_name == "causal" else masks.dense_mask(MASKS[mask_name], S, S)[None, None]
    logits = model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=False).logits
    loss = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.item(), grads, embeds.grad


def _llm_case(model, mesh, mode, layout, mask_name):
    ref_logits, ref_loss, ref_grads, ref_embeds_grad = _reference(model, mask_name)
    embeds, positions, labels = _inputs()
    embeds.requires_grad_()
    model.zero_grad()
    model.set_attn_implementation({"text_config": register_sp_attention(mesh, mode)})
    x, _ = shard_sequence(embeds, 1, mesh, layout)
    pos, _ = shard_sequence(positions, 2, mesh, layout)
    targets, _ = shard_sequence(shift_labels(labels), 1, mesh, layout, pad_value=-100)
    mask = ShardedMask.from_layout(MASKS[mask_name], S, mesh, layout)
    logits = model(inputs_embeds=x, position_ids=pos, sharded_mask=mask, use_cache=False).logits
    loss = sharded_loss(logits, targets, mesh)
    loss.backward()
    all_reduce_grads(list(model.parameters()) + [embeds], mesh)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    return {
        "logits": (unshard(logits.detach(), 1, mesh, S, layout) - ref_logits).abs().max().item(),
        "loss": abs(loss.item() - ref_loss),
        "grads": max((grads[n] - ref_grads[n]).abs().max().item() for n in grads),
        "embeds_grad": (embeds.grad - ref_embeds_grad).abs().max().item(),
        "num_grads": len(grads),
    }


def _vision_case(model, mesh):
    """Frame-sharded encoding + gather vs one encode; each rank backpropagates its sequence shard."""
    visual = model.model.visual
    t, h, w = GRID
    rows = h * w  # one temporal patch of a (t, h, w) grid is h * w rows of pixel_values_videos
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(t * rows, 3 * 2 * 14 * 14, generator=g, dtype=torch.float64)
    weight = torch.randn(t * rows // 4, HIDDEN, generator=g, dtype=torch.float64)

    visual.zero_grad()
    full = visual(pixels, grid_thw=torch.tensor([GRID])).pooler_output
    (full * weight).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in visual.named_parameters()}
    per_patch = visual(pixels, grid_thw=torch.tensor([[1, h, w]] * t)).pooler_output

    visual.zero_grad()
    start, stop = split_frames(t, mesh.sp_size)[mesh.sp_rank]
    mine = visual(pixels[start * rows : stop * rows], grid_thw=torch.tensor([[stop - start, h, w]])).pooler_output
    gathered = gather_embeddings(mine, mesh)
    part, _ = shard_sequence(gathered * weight, 0, mesh, "zigzag")
    part.sum().backward()
    all_reduce_grads(visual.parameters(), mesh)
    return {
        "per_patch": (per_patch - full).abs().max().item(),
        "forward": (gathered - full).abs().max().item(),
        "grads": max((p.grad - ref_grads[n]).abs().max().item() for n, p in visual.named_parameters()),
        "shares": stop - start,
    }


def _worker(rank, world, cases):
    model = _model()
    meshes, out = {}, {}
    for mesh_kwargs, mode, layout, mask_name in cases:
        key = tuple(sorted(mesh_kwargs.items()))
        if key not in meshes:  # every rank builds the meshes in the same order
            meshes[key] = init_mesh(**mesh_kwargs)
        out[(mode, layout, mask_name)] = _llm_case(model, meshes[key], mode, layout, mask_name)
    out["vision"] = _vision_case(model, init_mesh(sp=world))
    return out


@pytest.fixture(scope="module")
def worlds():
    return {world: run_ranks(_worker, world, CASES[world], timeout=150) for world in (2, 4)}


@pytest.mark.parametrize("world", [2, 4])
def test_llm_forward_backward_equals_single_process(worlds, world):
    for rank, results in enumerate(worlds[world]):
        for case in CASES[world]:
            r = results[case[1:]]
            assert r["num_grads"] > 20, (rank, case)  # every LLM weight, not just a few
            assert max(r["logits"], r["loss"], r["grads"], r["embeds_grad"]) < 1e-10, (rank, case, r)


@pytest.mark.parametrize("world", [2, 4])
def test_frame_sharded_vision_equals_one_encode(worlds, world):
    shares = []
    for results in worlds[world]:
        r = results["vision"]
        assert r["per_patch"] < 1e-12  # attention never crosses a temporal patch
        assert r["forward"] < 1e-12 and r["grads"] < 1e-10, r
        shares.append(r["shares"])
    assert shares == ([3, 2] if world == 2 else [2, 1, 1, 1])  # uneven shares


def test_full_attention_blocks_attend_within_one_temporal_patch():
    # Why the split is exact: Qwen2.5-VL's "full" attention segments are one temporal patch each.
    cu = get_vision_cu_seqlens(torch.tensor([GRID]))
    assert cu.tolist() == [i * GRID[1] * GRID[2] for i in range(GRID[0] + 1)]


def test_registered_attention_on_a_mesh_of_one_equals_sdpa():
    model = _model()
    embeds, positions, _ = _inputs()
    with torch.no_grad():
        ref = model(inputs_embeds=embeds, position_ids=positions, use_cache=False).logits
        mesh = Mesh.single()
        model.set_attn_implementation({"text_config": register_sp_attention(mesh, "ring")})
        assert model.model.visual.config._attn_implementation == "sdpa"  # the vision tower is untouched
        mask = ShardedMask.from_layout(masks.causal, S, mesh)
        ours = model(inputs_embeds=embeds, position_ids=positions, sharded_mask=mask, use_cache=False).logits
        with pytest.raises(ConfigError, match="sharded_mask"):
            model(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
