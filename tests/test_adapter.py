"""The adapter's own path (patchify, prompt, splice, positions) equals Hugging Face's forward."""

import numpy as np
import pytest
import torch

from longvid.model.qwen2_5_vl import Qwen25VLAdapter
from longvid.model.tiny import build_tiny_model


def _frames(t=8, h=56, w=84, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def adapter():
    model, tok = build_tiny_model(seed=1)
    return Qwen25VLAdapter(model.eval(), tok)


def _hf_logits(adapter, prompt, video):
    hf = adapter.hf
    return hf(
        input_ids=prompt.input_ids[None],
        pixel_values_videos=video.pixel_values,
        video_grid_thw=video.grid_thw,
        second_per_grid_ts=torch.tensor([video.seconds_per_grid]),
        mm_token_type_ids=(prompt.visual_mask[None] * 2).int(),
    ).logits[0]


@pytest.mark.parametrize("num_frames", [7, 16])
def test_adapter_logits_match_hf_forward(adapter, num_frames):
    frames = _frames(num_frames)
    timestamps = np.arange(num_frames) * 0.5
    with torch.no_grad():
        video = adapter.preprocess(frames, timestamps)
        visual = adapter.encode(video)
        prompt = adapter.build_prompt("Which colour appears first?", visual)
        embeds, pos = adapter.prefix_inputs(prompt, visual)
        hidden, _ = adapter.hidden_states(embeds[None], pos[:, None])
        ours = adapter.logits(hidden)[0]
        adapter.hf.model.rope_deltas = None
        theirs = _hf_logits(adapter, prompt, video)
    assert visual.num_tokens == (num_frames + 1) // 2 * 2 * 3  # 56x84 → 2x3 merged tokens per patch
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_positions_are_3d_for_video_and_continue_after_prompt(adapter):
    visual = adapter.encode(adapter.preprocess(_frames(8), np.arange(8) * 1.0))
    prompt = adapter.build_prompt("q", visual)
    pos = adapter.positions(prompt, visual)
    vis = pos[:, prompt.visual_mask]
    assert not torch.equal(vis[0], vis[1])  # temporal and height rows differ inside the video span
    text = pos[:, ~prompt.visual_mask]
    assert torch.equal(text[0], text[1]) and torch.equal(text[1], text[2])
    cont = adapter.continuation_positions(pos, 3)
    assert cont[:, 0].tolist() == [int(pos[0, -1]) + 1] * 3


def test_response_positions_equal_hf_forward_over_prompt_and_response(adapter):
    """A long video's temporal positions run past the text; the response must still continue
    where Hugging Face's own forward over prompt + response puts it."""
    frames = _frames(64, 56, 56)
    video = adapter.preprocess(frames, np.arange(64) * 2.0)
    with torch.no_grad():
        visual = adapter.encode(video)
    prompt = adapter.build_prompt("q", visual)
    response = adapter.response_ids("<think>x</think><answer>B</answer>")
    full_ids = torch.cat([prompt.input_ids, response])
    types = torch.cat([prompt.visual_mask, torch.zeros(len(response), dtype=torch.bool)])
    hf_pos, _ = adapter.hf.model.get_rope_index(
        full_ids[None], mm_token_type_ids=(types[None] * 2).int(), video_grid_thw=visual.grid_thw,
        second_per_grid_ts=torch.tensor([visual.seconds_per_grid]),
    )
    ours = adapter.positions(prompt, visual)
    assert int(ours.max()) > int(ours[0, -1])  # the trap: the video's positions exceed the text's
    assert torch.equal(adapter.continuation_positions(ours, len(response)), hf_pos[:, 0, len(prompt):])


def test_chunked_encoding_is_exact(adapter):
    video = adapter.preprocess(_frames(12), None)
    with torch.no_grad():
        whole = adapter.encode(video).embeds
        chunked = adapter.encode(video, chunk_patches=2).embeds
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=0)


def test_patchify_matches_hf_image_processor_for_a_still(adapter):
    """A still image is a video of two identical frames in Qwen's processors."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from PIL import Image

    frame = _frames(1, 56, 84)[0]
    proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 84)
    ref = proc(images=[Image.fromarray(frame)], return_tensors="pt")
    ours = adapter.preprocess(np.stack([frame, frame]), None)
    assert ref["image_grid_thw"].tolist() == ours.grid_thw.tolist()
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values"].float(), atol=1e-5, rtol=0)


def test_save_and_reload_gives_identical_outputs(adapter, tmp_path):
    adapter.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    again = Qwen25VLAdapter.from_pretrained(tmp_path / "ckpt")
    frames = _frames(6)
    outs = []
    for a in (adapter, again):
        with torch.no_grad():
            visual = a.encode(a.preprocess(frames, None))
            prompt = a.build_prompt("What happens?", visual)
            embeds, pos = a.prefix_inputs(prompt, visual)
            outs.append(a.logits(a.hidden_states(embeds[None], pos[:, None])[0]))
    assert torch.equal(outs[0], outs[1])


def test_prompt_rejects_wrong_visual_count(adapter):
    visual = adapter.encode(adapter.preprocess(_frames(4), None))
    prompt = adapter.build_prompt("q", visual.num_tokens + 2)
    with pytest.raises(ValueError, match="video slots"):
        adapter.prefix_inputs(prompt, visual)


def test_from_pretrained_rejects_non_model_folder(tmp_path):
    from longvid.errors import ConfigError

    with pytest.raises(ConfigError, match="config.json"):
        Qwen25VLAdapter.from_pretrained(tmp_path)
