"""Synthetic tasks: determinism, answers read back from the pixels by simple rules, balance, specs, files."""

import json
import re
import time
from collections import Counter

import numpy as np
import pytest

from longvid.data.schema import Sample
from longvid.errors import DataError
from longvid.video.decode import decode, encode_mp4
from longvid.synth import ALL_TASKS, CATEGORIES, make_sample, parse_spec, render_spec, write_dataset

PHASES = ["beginning", "early middle", "late middle", "end"]
QUADRANTS = ["top-left", "top-right", "bottom-left", "bottom-right"]


def colour_codes(rgb: np.ndarray) -> np.ndarray:
    """Name every RGB triple by plain channel thresholds: 0 none, 1 red, 2 green, 3 blue, 4 yellow."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    codes = np.zeros(rgb.shape[:-1], int)
    codes[(r > 170) & (g < 110) & (b < 110)] = 1
    codes[(g > 130) & (r < 110) & (b < 130)] = 2
    codes[(b > 170) & (r < 110) & (g < 140)] = 3
    codes[(r > 170) & (g > 150) & (b < 110)] = 4
    return codes


NAMES = [None, "red", "green", "blue", "yellow"]


def colour_of(pixels: np.ndarray) -> str | None:
    """The colour of a region's mean."""
    return NAMES[int(colour_codes(pixels.reshape(-1, 3).mean(axis=0)))]


def quadrants(frame: np.ndarray) -> list[np.ndarray]:
    h, w = frame.shape[0] // 2, frame.shape[1] // 2
    return [frame[:h, :w], frame[:h, w:], frame[h:, :w], frame[h:, w:]]


def asked_colour(question: str) -> str:
    return re.search(r"\b(red|green|blue|yellow)\b", question).group(1)


def answer_from_pixels(sample: Sample, frames: np.ndarray) -> str:
    """What the video says the answer is, read with pixel rules that know the task, not the generator."""
    task, n = sample.category, len(frames)
    if task == "temporal":
        hits = np.flatnonzero([colour_of(f) == asked_colour(sample.question) for f in frames])
        assert len(hits) >= 2
        return PHASES[int(4 * hits.mean() / n)]
    if task == "goal":
        code = NAMES.index(asked_colour(sample.question))
        first, last = (np.argwhere(colour_codes(frames[i]) == code).mean(axis=0) for i in (0, -1))
        dy, dx = last - first
        heading = ("top" if dy < 0 else "bottom") + "-" + ("left" if dx < 0 else "right")
        mass = [np.sum(colour_codes(q) == code) for q in quadrants(frames[-1])]
        assert QUADRANTS[int(np.argmax(mass))] == heading  # it is already furthest into that quadrant
        return heading
    if task == "spatial":
        at_end = [
            i for i, q in enumerate(quadrants(frames[-1])) if colour_of(q) == asked_colour(sample.question)
        ]
        assert len(at_end) == 1
        return QUADRANTS[at_end[0]]
    if task == "plot":
        return colour_of(frames[0] if "first" in sample.question else frames[-1])
    if task == "needle":
        found = {colour_of(f) for f in frames} - {None}
        assert len(found) == 1
        return found.pop()
    raise AssertionError(task)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_same_seed_same_sample_other_seed_differs(task):
    a, frames_a = make_sample(task, 11, 32)
    b, frames_b = make_sample(task, 11, 32)
    assert a == b and a.to_row() == b.to_row()
    np.testing.assert_array_equal(frames_a, frames_b)
    _, frames_c = make_sample(task, 12, 32)
    assert not np.array_equal(frames_a, frames_c)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_answer_matches_the_pixels(task):
    for seed in range(16):
        sample, frames = make_sample(task, seed, 48)
        assert frames.shape == (48, 56, 56, 3) and frames.dtype == np.uint8
        assert sample.category == task and sample.id == f"{task}-{seed}"
        assert answer_from_pixels(sample, frames) == sample.answer_text
        assert sample.reasoning.endswith(f"So the answer is {sample.answer}.")


@pytest.mark.parametrize("task", ALL_TASKS)
def test_answer_survives_libx264(tmp_path, task):
    for seed in range(4):
        sample, frames = make_sample(task, seed, 32)
        decoded = decode(encode_mp4(tmp_path / f"{seed}.mp4", frames, 2.0)).pixels
        assert answer_from_pixels(sample, decoded) == sample.answer_text


def test_events_span_whole_frame_pairs():
    """Each token sees a pair of frames (2k, 2k+1): both must show the same scene."""
    for task in ALL_TASKS:
        _, frames = make_sample(task, 5, 64)
        means = frames.reshape(32, 2, -1).astype(float).mean(axis=2)
        assert np.abs(means[:, 0] - means[:, 1]).max() < 3


@pytest.mark.parametrize("task", ALL_TASKS)
def test_answer_letters_are_balanced(task):
    counts = Counter(make_sample(task, seed, 16)[0].answer for seed in range(200))
    assert set(counts) == set("ABCD")
    assert all(30 <= c <= 70 for c in counts.values()), counts  # 50 expected, sd ~6


def test_forced_answer_and_shuffled_options():
    for letter in "ABCD":
        sample, frames = make_sample("spatial", 3, 16, answer=letter)
        assert sample.answer == letter and answer_from_pixels(sample, frames) == sample.answer_text
    plain, frames = make_sample("plot", 9, 32)
    shuffled, shuffled_frames = make_sample("plot", 9, 32, shuffle_options=True)
    np.testing.assert_array_equal(frames, shuffled_frames)
    assert sorted(shuffled.options) == sorted(plain.options) and shuffled.answer_text == plain.answer_text
    assert shuffled.reasoning.endswith(f"So the answer is {shuffled.answer}.")
    letters = Counter(
        make_sample("plot", s, 16, shuffle_options=True)[0].options.index("red") for s in range(40)
    )
    assert len(letters) > 1  # shuffling really moves options


@pytest.mark.parametrize("num_frames", [16, 17, 300, 2048])
def test_lengths(num_frames):
    for task in ALL_TASKS:
        sample, frames = make_sample(task, 1, num_frames)
        assert frames.shape == (num_frames, 56, 56, 3)
        assert answer_from_pixels(sample, frames) == sample.answer_text


def test_two_thousand_frames_are_fast():
    start = time.perf_counter()
    for task in ALL_TASKS:
        make_sample(task, 0, 2000)
    assert (time.perf_counter() - start) / len(ALL_TASKS) < 1.0


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.7, 1.0])
def test_needle_sits_at_its_depth(depth):
    sample, frames = make_sample("needle", 4, 200, depth=depth)
    assert "depth=" in sample.video
    hits = np.flatnonzero([colour_of(f) is not None for f in frames])
    assert len(hits) == 2 and hits[0] % 2 == 0
    assert abs(hits[0] / (200 - 2) - depth) < 0.02


def test_spec_round_trip():
    sample, frames = make_sample("needle", 21, 40, size=32, depth=0.25, length=4)
    assert parse_spec(sample.video) == ("needle", 21, 40, 32, {"depth": 0.25, "length": 4})
    rendered = render_spec(sample.video)
    np.testing.assert_array_equal(rendered.pixels, frames)
    assert rendered.source == sample.video
    np.testing.assert_allclose(np.diff(rendered.timestamps), 0.5)


@pytest.mark.parametrize(
    "spec",
    [
        "videos/a.mp4",
        "synth:dance?seed=1&frames=16&size=56",
        "synth:plot?frames=16&size=56",
        "synth:plot?seed=1&frames=4&size=56",
        "synth:plot?seed=1&frames=16&size=57",
        "synth:plot?seed=x&frames=16&size=56",
        "synth:plot?seed=1&frames=16&size=56&colour=red",
        "synth:needle?seed=1&frames=16&size=56&depth=2",
        "synth:plot?seed=1&frames=16&size=56&seed=2",
    ],
)
def test_invalid_specs(spec):
    with pytest.raises(DataError, match="invalid synthetic video spec"):
        render_spec(spec)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_dataset_with_files(tmp_path):
    path = write_dataset(tmp_path / "a", 16, num_frames=16, seed=3, progress=False)
    rows = read_rows(path)
    assert len(rows) == 16 and len({r["id"] for r in rows}) == 16
    assert Counter(r["category"] for r in rows) == {t: 4 for t in CATEGORIES}
    for task in CATEGORIES:
        assert sorted(r["answer"] for r in rows if r["category"] == task) == list("ABCD")
    for row in rows:
        sample = Sample.from_row(row)
        frames = decode(path.parent / sample.video)
        assert len(frames) == 16 and sample.video.startswith("videos/")
        assert answer_from_pixels(sample, frames.pixels) == sample.answer_text
        np.testing.assert_array_equal(render_spec(row["synth"]).pixels.shape, frames.pixels.shape)
    again = write_dataset(tmp_path / "b", 16, num_frames=16, seed=3, progress=False)
    assert read_rows(again) == rows
    assert not list((tmp_path / "a").glob(".*"))  # no temp files left behind


def test_write_dataset_with_specs(tmp_path):
    path = write_dataset(
        tmp_path, 10, num_frames=16, seed=0, tasks=("needle", "goal"), as_files=False, progress=False
    )
    rows = read_rows(path)
    assert not (tmp_path / "videos").exists()
    for row in rows:
        sample = Sample.from_row(row)
        assert answer_from_pixels(sample, render_spec(sample.video).pixels) == sample.answer_text
    other = read_rows(
        write_dataset(tmp_path / "b", 10, num_frames=16, seed=1, as_files=False, progress=False)
    )
    assert not {r["id"] for r in rows} & {r["id"] for r in other}


def test_spatial_block_sits_in_the_outer_corner_of_the_answer_quadrant():
    """At block=0.5 the block covers the frame-corner patch of its quadrant, so a token's content
    (which of its 2x2 patches is coloured) differs per quadrant; block=1 fills the quadrant."""
    for seed in range(8):
        sample, frames = make_sample("spatial", seed, 16, hops=1, distractors=0, block=0.5)
        code = NAMES.index(asked_colour(sample.question))
        coloured = colour_codes(frames[-1]) == code
        corner = QUADRANTS.index(sample.answer_text)
        row, col = divmod(corner, 2)
        patch = coloured[row * 42 : row * 42 + 14, col * 42 : col * 42 + 14]  # the frame-corner 14x14 patch
        assert patch.all() and coloured.sum() == 14 * 14
        full, full_frames = make_sample("spatial", seed, 16, hops=1, distractors=0)
        assert full.answer == sample.answer and answer_from_pixels(full, full_frames) == full.answer_text
    with pytest.raises(ValueError, match="block must be in"):
        make_sample("spatial", 0, 16, block=0.1)
