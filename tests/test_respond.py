"""Batched answering: evaluation and the difficulty filter decode several questions at once and
get what one question at a time gets; a bad video in a batch is skipped alone."""

import pytest
import torch

from helpers import flash_set
from longvid.config import ModelConfig
from longvid.data.reason.filter import answer_many
from longvid.errors import VideoError
from longvid.eval.mcq import evaluate
from longvid.model import load_adapter
from longvid.model.sampling import SamplingConfig
from longvid.respond import respond, respond_samples


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(ModelConfig(seed=11, dtype="float64"))  # a seed whose greedy answers differ between videos


def test_batched_evaluation_equals_one_question_at_a_time(adapter):
    samples, frames = flash_set(7, num_frames=8)
    one = evaluate(adapter, samples, frames, max_new_tokens=12, progress=False, batch_size=1)
    batched = evaluate(adapter, samples, frames, max_new_tokens=12, progress=False, batch_size=3)
    assert [r.response for r in batched.records] == [r.response for r in one.records]
    assert len({r.response for r in one.records}) > 1  # the videos differ, so do the answers
    assert batched.accuracy == one.accuracy


def test_a_bad_video_inside_a_batch_is_skipped_and_the_rest_scored(adapter):
    samples, frames = flash_set(5, num_frames=8)

    def load(sample):
        if sample.id == samples[2].id:
            raise VideoError(f"{sample.video}: moov atom not found")
        return frames(sample)

    result = evaluate(adapter, samples, load, max_new_tokens=12, progress=False, batch_size=4, skip_bad=True)
    assert [r.id for r in result.records] == [s.id for i, s in enumerate(samples) if i != 2]
    assert result.skipped == [f"{samples[2].video}: moov atom not found"]
    alone = evaluate(adapter, samples[3:4], frames, max_new_tokens=12, progress=False, batch_size=1)
    assert result.records[2].response == alone.records[0].response
    with pytest.raises(VideoError, match="moov atom"):
        evaluate(adapter, samples, load, max_new_tokens=12, progress=False, batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        evaluate(adapter, samples, frames, progress=False, batch_size=0)


def test_filter_answers_do_not_depend_on_the_batch_size(adapter):
    from types import SimpleNamespace

    samples, frames = flash_set(5, num_frames=8)
    dataset = SimpleNamespace(samples=samples, load_frames=frames)
    config = SamplingConfig(max_new_tokens=12, temperature=1.0)
    one = answer_many(adapter, dataset, 3, config, seed=4, progress=False, batch_size=1)
    batched = answer_many(adapter, dataset, 3, config, seed=4, progress=False, batch_size=2)
    assert batched == one and len(one) == 5 and all(len(row) == 3 for row in one)


def test_respond_samples_draw_each_question_from_its_own_generator(adapter):
    samples, frames = flash_set(3, num_frames=8)
    config = SamplingConfig(max_new_tokens=12, temperature=1.0)
    seeds = (11, 12, 13)
    batched = respond_samples(adapter, samples, [frames(s) for s in samples], 4, config,
                              generators=[torch.Generator().manual_seed(k) for k in seeds])
    for s, k, got in zip(samples, seeds, batched):
        assert got == respond(adapter, s, frames(s), 4, config, generator=torch.Generator().manual_seed(k))
    assert len(set(batched[0])) > 1  # temperature 1: the four answers are not all alike
    with pytest.raises(ValueError, match="2 prompts for 3 videos"):
        respond_samples(adapter, samples[:2], [frames(s) for s in samples], 1, config)
