"""Every supported family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) behind the adapter protocol equals the
installed Hugging Face model: logits, reload, greedy generation, the packed GRPO pass and SP=2."""

import contextlib
import inspect
import json
import types

import numpy as np
import pytest
import torch

from dist_utils import run_ranks
from helpers import assert_matches_hf_generate
from longvid.config import ModelConfig
from longvid.errors import ConfigError
from longvid.model import family_adapter, load_adapter
from longvid.model.adapter import VLMAdapter
from longvid.model.sampling import SamplingConfig, sample
from longvid.model.tiny import FAMILIES, build_tiny_adapter
from longvid.rl.packing import pack, packed_logprobs, separate_logprobs

# Frames whose sides are multiples of patch * merge, so no resize blurs the comparison.
FRAME_SIZE = {"qwen2_vl": (56, 84), "qwen2_5_vl": (56, 84), "qwen3_vl": (64, 96)}
RMS_NORMS = {
    "qwen2_vl": ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLRMSNorm"),
    "qwen2_5_vl": ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLRMSNorm"),
    "qwen3_vl": ("transformers.models.qwen3_vl.modeling_qwen3_vl", "Qwen3VLTextRMSNorm"),
}


def _frames(family, t, seed=0):
    h, w = FRAME_SIZE[family]
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


@contextlib.contextmanager
def exact_norms(family):
    """The family's RMSNorm in the input dtype (Hugging Face's computes in float32 even for float64)."""
    import importlib

    module, name = RMS_NORMS[family]
    cls = getattr(importlib.import_module(module), name)
    original = cls.forward

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    cls.forward = forward
    try:
        yield
    finally:
        cls.forward = original


def _hf_video_kwargs(adapter, prompt, videos):
    kwargs = dict(
        pixel_values_videos=torch.cat([v.pixel_values for v in videos]),
        video_grid_thw=torch.cat([v.grid_thw for v in videos]),
        mm_token_type_ids=(prompt.visual_mask[None] * 2).int(),
    )
    if "second_per_grid_ts" in inspect.signature(adapter.hf.model.get_rope_index).parameters:
        kwargs["second_per_grid_ts"] = torch.tensor([v.seconds_per_grid for v in videos])
    return kwargs


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def adapter(family):
    a = build_tiny_adapter(family, seed=1)
    a.model.eval()
    return a


def test_every_protocol_member_is_implemented(adapter):
    members = [n for n, _ in inspect.getmembers(VLMAdapter) if not n.startswith("_")]
    members += [n for n in VLMAdapter.__annotations__]
    missing = [n for n in members if not hasattr(adapter, n)]
    assert not missing and "deepstack_layers" in members


def test_every_adapter_use_in_the_tree_is_declared():
    """grep the tree: each `adapter.X` outside model/ must be a protocol member."""
    import pathlib
    import re

    declared = {n for n, _ in inspect.getmembers(VLMAdapter)} | set(VLMAdapter.__annotations__)
    src = pathlib.Path(__file__).parents[1] / "src" / "longvid"
    used = set()
    for path in src.rglob("*.py"):
        if path.parent.name == "model" and path.name.startswith("qwen"):
            continue
        used |= set(re.findall(r"\badapter\.([A-Za-z_]\w*)", path.read_text()))
    assert used and used <= declared, used - declared


@pytest.mark.parametrize("num_frames", [7, 12])
def test_logits_equal_hf_forward(adapter, family, num_frames):
    with torch.no_grad():
        video = adapter.preprocess(_frames(family, num_frames), np.arange(num_frames) * 0.5)
        visual = adapter.encode(video)
        prompt = adapter.build_prompt("Which colour appears first?", visual)
        embeds, pos = adapter.prefix_inputs(prompt, visual)
        hidden, _ = adapter.hidden_states(embeds[None], pos.unsqueeze(-2), deepstack=visual.deepstack)
        ours = adapter.logits(hidden)[0]
        adapter.hf.model.rope_deltas = None
        theirs = adapter.hf(input_ids=prompt.input_ids[None], **_hf_video_kwargs(adapter, prompt, [video])).logits[0]
    h, w = FRAME_SIZE[family]
    factor = adapter.patch_size * adapter.merge_size
    assert visual.num_tokens == (num_frames + 1) // 2 * (h // factor) * (w // factor)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if adapter.deepstack_layers:  # DeepStack is really used: without it the logits move
        assert visual.deepstack is not None and len(visual.deepstack) == adapter.deepstack_layers
        with torch.no_grad():
            zeros = [torch.zeros_like(d) for d in visual.deepstack]
            plain = adapter.logits(adapter.hidden_states(embeds[None], pos.unsqueeze(-2), deepstack=zeros)[0])[0]
        assert (plain - theirs).abs().max() > 1e-3
        with pytest.raises(ValueError, match="DeepStack"):
            adapter.hidden_states(embeds[None], pos.unsqueeze(-2))


def test_two_videos_in_one_prompt_equal_hf_forward(adapter, family):
    with torch.no_grad():
        videos = [adapter.preprocess(_frames(family, n, seed=n), np.arange(n) * 0.4) for n in (4, 6)]
        visuals = [adapter.encode(v) for v in videos]
        prompt = adapter.build_prompt("Which video is brighter?", visuals)
        embeds, pos = adapter.prefix_inputs(prompt, visuals)
        deepstack = None if visuals[0].deepstack is None else [torch.cat(d) for d in zip(*(v.deepstack for v in visuals))]
        ours = adapter.logits(adapter.hidden_states(embeds[None], pos.unsqueeze(-2), deepstack=deepstack)[0])[0]
        adapter.hf.model.rope_deltas = None
        theirs = adapter.hf(input_ids=prompt.input_ids[None], **_hf_video_kwargs(adapter, prompt, videos)).logits[0]
    assert int(prompt.visual_mask.sum()) == sum(v.num_tokens for v in visuals)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_patchify_matches_hf_image_processor_for_a_still(adapter, family):
    """A still image is a video of two identical frames in Qwen's processors."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    frame = _frames(family, 1)[0]
    h, w = FRAME_SIZE[family]
    proc = Qwen2VLImageProcessorPil(
        min_pixels=h * w, max_pixels=h * w, patch_size=adapter.patch_size, merge_size=adapter.merge_size,
        temporal_patch_size=adapter.temporal_patch_size, image_mean=list(adapter.image_mean),
        image_std=list(adapter.image_std),
    )
    ref = proc(images=[Image.fromarray(frame)], return_tensors="pt")
    ours = adapter.preprocess(np.stack([frame, frame]), None)
    assert ref["image_grid_thw"].tolist() == ours.grid_thw.tolist()
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values"].float(), atol=1e-5, rtol=0)


def test_chunked_encoding_is_exact(adapter, family):
    video = adapter.preprocess(_frames(family, 12), None)
    with torch.no_grad():
        whole, chunked = adapter.encode(video), adapter.encode(video, chunk_patches=2)
    torch.testing.assert_close(whole.embeds, chunked.embeds, atol=1e-6, rtol=0)
    for a, b in zip(whole.deepstack or [], chunked.deepstack or [], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_save_and_reload_through_load_adapter_is_identical(adapter, family, tmp_path):
    adapter.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_type"] == family
    again = load_adapter(ModelConfig(path=str(tmp_path / "ckpt")))
    assert type(again) is type(adapter)
    frames = _frames(family, 6)
    outs = []
    for a in (adapter, again):
        with torch.no_grad():
            visual = a.encode(a.preprocess(frames, None))
            prompt = a.build_prompt("What happens?", visual)
            embeds, pos = a.prefix_inputs(prompt, visual)
            outs.append(a.logits(a.hidden_states(embeds[None], pos.unsqueeze(-2), deepstack=visual.deepstack)[0]))
    assert torch.equal(outs[0], outs[1])


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ConfigError, match="'llava' is not supported; supported: qwen2_vl, qwen2_5_vl, qwen3_vl"):
        load_adapter(ModelConfig(path=str(tmp_path)))
    with pytest.raises(ConfigError, match="supported"):
        family_adapter("qwen4_vl")


def test_greedy_sampling_equals_hf_generate(adapter, family):
    frames = _frames(family, 10, seed=3)
    video = adapter.preprocess(frames, np.arange(10) * 0.5)
    with torch.no_grad():
        visual = adapter.encode(video)
    prompt = adapter.build_prompt("Where does the block go?", visual)
    embeds, pos = adapter.prefix_inputs(prompt, visual)
    ours = sample(adapter, embeds, pos, 1, SamplingConfig(max_new_tokens=12, temperature=0), deepstack=visual.deepstack)
    adapter.hf.model.rope_deltas = None
    ref = adapter.hf.generate(
        input_ids=prompt.input_ids[None],
        **_hf_video_kwargs(adapter, prompt, [video]),
        max_new_tokens=12,
        min_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert_matches_hf_generate(ours, ref, len(prompt))


def _grads(adapter):
    return {n: p.grad.clone() for n, p in adapter.hf.named_parameters() if p.grad is not None}


def _group_pass(adapter, family, responses, packed: bool, sp=None):
    adapter.hf.zero_grad(set_to_none=True)
    video = adapter.preprocess(_frames(family, 8, seed=1), np.arange(8) * 0.5)
    visual = adapter.encode(video) if sp is None else sp.encode(video)  # with gradients: the tower is trained too
    prompt = adapter.build_prompt("Which colour comes first?", visual)
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    if packed:
        group = pack(adapter, embeds, positions, responses, deepstack=visual.deepstack)
        logp = packed_logprobs(adapter, group, sp=sp)
    else:
        logp = separate_logprobs(adapter, embeds, positions, responses, deepstack=visual.deepstack)
    weights = torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)
    (logp * weights).sum().backward()
    if sp is not None:
        sp.all_reduce_grads(adapter.hf.parameters())
    return logp.detach(), _grads(adapter)


def _responses():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, 1000, (n,), generator=g) for n in (5, 1, 9, 3)]


def test_packed_group_equals_separate_forwards_float64(family):
    adapter = build_tiny_adapter(family, seed=4, dtype=torch.float64)
    with exact_norms(family):
        logp_sep, grads_sep = _group_pass(adapter, family, _responses(), packed=False)
        logp_pack, grads_pack = _group_pass(adapter, family, _responses(), packed=True)
    torch.testing.assert_close(logp_pack, logp_sep, atol=1e-10, rtol=0)
    assert grads_sep.keys() == grads_pack.keys() and len(grads_sep) > 20
    vision = {n for n in grads_sep if ".visual." in n}
    assert vision  # the vision tower (and for Qwen3-VL its DeepStack mergers) got gradients
    if family == "qwen3_vl":
        assert any("deepstack_merger_list" in n for n in vision)
    for name in grads_sep:
        torch.testing.assert_close(grads_pack[name], grads_sep[name], atol=1e-10, rtol=1e-9, msg=name)


def _sp_worker(rank, world, family, mode):
    from longvid.parallel.apply import SequenceParallel
    from longvid.parallel.mesh import Mesh, init_mesh

    mesh = init_mesh(sp=world) if world > 1 else Mesh.single()
    adapter = build_tiny_adapter(family, seed=4, dtype=torch.float64)
    sp = SequenceParallel(adapter, mesh, mode=mode, layout="zigzag")
    with exact_norms(family):
        logp, grads = _group_pass(adapter, family, _responses(), packed=True, sp=sp)
    summary = {n: g.flatten()[:64].tolist() + [float(g.sum()), float(g.norm())] for n, g in grads.items()}
    return logp.tolist(), summary


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_sequence_parallel_two_ranks_equal_one_process(family, mode):
    ref_logp, ref_grads = _sp_worker(0, 1, family, mode)
    for logp, grads in run_ranks(_sp_worker, 2, family, mode, timeout=300):
        torch.testing.assert_close(torch.tensor(logp), torch.tensor(ref_logp), atol=1e-10, rtol=0)
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(
                torch.tensor(grads[name]), torch.tensor(ref_grads[name]), atol=1e-9, rtol=1e-9, msg=name
            )


def test_qwen3_prompt_writes_timestamps_as_hf_processor_does():
    """The prompt text of a video equals `Qwen3VLProcessor.replace_video_token`'s for the same frames."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    adapter = build_tiny_adapter("qwen3_vl", seed=0)
    fps, indices = 2.0, np.array([0, 3, 7, 12, 16, 21, 25])  # 7 sampled frames: the last patch is padded
    video = adapter.preprocess(_frames("qwen3_vl", len(indices)), indices / fps)
    with torch.no_grad():
        visual = adapter.encode(video)
    processor = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
        vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>", video_token="<|video_pad|>",
    )
    processor._calculate_timestamps = types.MethodType(Qwen3VLProcessor._calculate_timestamps, processor)
    metadata = types.SimpleNamespace(fps=fps, frames_indices=indices)
    inputs = {"video_grid_thw": video.grid_thw, "video_metadata": [metadata]}
    expected = Qwen3VLProcessor.replace_video_token(processor, inputs, 0)
    text, counts = adapter.video_spans(visual)
    ours = "".join(piece + "<|video_pad|>" * n for piece, n in zip(text.split("<|video_pad|>"), counts + [0]))
    assert ours == expected and "<12.5 seconds><|vision_start|>" in ours  # the padded patch: (25 + 25) / 2 / fps
    prompt = adapter.build_prompt("q", visual)
    decoded = adapter.tokenizer.decode(prompt.input_ids)
    assert expected in decoded and decoded.count("<|vision_start|>") == 4  # no doubled wrapper


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_cli_sft_eval_grpo_pick_the_family_from_the_checkpoint(family, tmp_path, capsys):
    from longvid.cli import main

    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--num", "2", "--frames", "8"]) == 0
    data = data / "data.jsonl"
    ckpt = tmp_path / "base"
    build_tiny_adapter(family, seed=0).save_pretrained(ckpt)
    quiet = ["--set", "video.num_frames=4", "--set", "progress=false"]
    sft = tmp_path / "sft"
    assert main(["sft", "--train", str(data), "--out-dir", str(sft), "--steps", "1", "--set", f"model.path={ckpt}", *quiet]) == 0
    tuned = sft / "checkpoints" / "step-000001" / "model"
    assert json.loads((tuned / "config.json").read_text())["model_type"] == family
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--model", str(tuned), "--out", str(out), "--frames", "4", "--max-new-tokens", "4"]) == 0
    assert json.loads((out / "eval.json").read_text())["num_samples"] == 2
    grpo = tmp_path / "grpo"
    assert main(["grpo", "--train", str(data), "--model", str(tuned), "--out-dir", str(grpo), "--steps", "1",
                 "--set", "group_size=2", "--set", "batch_size=1", "--set", "max_new_tokens=4", *quiet]) == 0
    assert (grpo / "checkpoints" / "latest" / "state.pt").is_file()


def test_packed_sft_equals_one_sample_per_forward_float64(family, tmp_path):
    """SFT's `pack_tokens`: several samples in one forward under a document mask give the same loss
    and gradients (tower and DeepStack included) as one forward per sample."""
    from helpers import flash_sample
    from longvid.inputs import target_text
    from longvid.sft.trainer import SFTConfig, SFTTrainer

    size = FRAME_SIZE[family][0]
    pairs = [flash_sample(i, num_frames=8 if i % 2 else 4, size=size) for i in range(3)]  # unequal lengths
    frames = {s.id: f for s, f in pairs}
    samples = [s for s, _ in pairs]
    results = {}
    for pack_tokens in (0, 10_000):
        adapter = build_tiny_adapter(family, seed=4, dtype=torch.float64)
        cfg = SFTConfig(train=__file__, out_dir=str(tmp_path / f"p{pack_tokens}"), pack_tokens=pack_tokens, progress=False)
        trainer = SFTTrainer(adapter, cfg, samples, lambda s: frames[s.id])
        targets = [adapter.response_ids(target_text(s)) for s in samples]
        total = sum(len(t) for t in targets)
        mine = list(enumerate(zip(samples, targets)))
        with exact_norms(family):
            losses = trainer._packed_losses(mine, total) if pack_tokens else trainer._losses(mine, total)
            passes = 0
            loss_sum = 0.0
            for loss, _ in losses:
                loss.backward()
                loss_sum += loss.item()
                passes += 1
        results[pack_tokens] = passes, loss_sum, _grads(adapter)
    (passes_one, loss_one, grads_one), (passes_packed, loss_packed, grads_packed) = results[0], results[10_000]
    assert (passes_one, passes_packed) == (3, 1)
    assert loss_packed == pytest.approx(loss_one, rel=1e-12)
    assert grads_one.keys() == grads_packed.keys() and any(".visual." in n for n in grads_one)
    if family == "qwen3_vl":
        assert any("deepstack_merger_list" in n for n in grads_one)
    for name in grads_one:
        torch.testing.assert_close(grads_packed[name], grads_one[name], atol=1e-10, rtol=1e-9, msg=name)


def test_grpo_packed_groups_equal_one_group_per_forward_float64(family, tmp_path):
    """GRPO's `pack_tokens`: a step's groups (prompts of unequal lengths) in one policy and one
    reference forward give the same losses, KL and weights after two steps of two iterations, the
    vision tower training (DeepStack included), as one forward per group."""
    from helpers import flash_sample
    from longvid.rl.trainer import GRPOConfig, GRPOTrainer
    from longvid.training import OptimConfig

    size = FRAME_SIZE[family][0]
    pairs = [flash_sample(i, num_frames=8 if i % 2 else 4, size=size) for i in range(3)]
    frames = {s.id: f for s, f in pairs}
    runs = {}
    for pack_tokens in (0, 10_000):
        cfg = GRPOConfig(train=__file__, out_dir=str(tmp_path / f"p{pack_tokens}"), steps=2, batch_size=3, group_size=3,
                         max_new_tokens=5, num_iterations=2, beta=0.04, train_vision=True, pack_tokens=pack_tokens,
                         rewards={"reward_fns:shorter_is_better": 1.0}, optim=OptimConfig(lr=1e-2, warmup_steps=0),
                         progress=False, log_every=0)
        trainer = GRPOTrainer(build_tiny_adapter(family, seed=4, dtype=torch.float64), cfg, [s for s, _ in pairs], lambda s: frames[s.id])
        with exact_norms(family):
            history = trainer.train()
        runs[pack_tokens] = history, {n: p.detach().clone() for n, p in trainer.adapter.hf.named_parameters()}
    (one, weights_one), (packed, weights_packed) = runs[0], runs[10_000]
    assert [h["passes"] for h in one] == [3, 3] and [h["passes"] for h in packed] == [1, 1]
    for a, b in zip(one, packed):
        for key in ("loss", "kl", "drift", "reward", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    assert one[-1]["kl"] > 0
    initial = build_tiny_adapter(family, seed=4, dtype=torch.float64).hf.state_dict()
    moved = [n for n in weights_one if not torch.equal(weights_one[n], initial[n])]
    assert any(".visual." in n for n in moved)
    for name in weights_one:
        torch.testing.assert_close(weights_packed[name], weights_one[name], atol=1e-10, rtol=1e-9, msg=name)
