"""Loading jsonl rows: every malformed row named by file:line and field; videos served or refused."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import longvid.data.dataset as dataset_module
from longvid.data.dataset import BadRow, VideoDataset, load_jsonl
from longvid.errors import DataError, VideoError
from longvid.video.decode import decode, encode_mp4
from longvid.synth import make_sample

GOOD = {
    "id": "a",
    "video": "videos/a.mp4",
    "question": "What?",
    "options": ["x", "y"],
    "answer": "B",
    "category": "plot",
}


def row(**changes) -> dict:
    return {k: v for k, v in {**GOOD, **changes}.items() if v is not None}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    """A data root with one real video (videos/a.mp4) and a video outside it (../outside.mp4)."""
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    # Top half: flat red ramp over time (frame i has red 20 * i); bottom half: noise, so frame data
    # dominates the file and garbling its middle hits frames, not the index.
    pixels = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 0
    pixels[:, :16, :, 0] = np.arange(12)[:, None, None] * 20
    encode_mp4(data / "videos" / "a.mp4", pixels, 4.0, codec="mpeg4")
    encode_mp4(tmp_path / "outside.mp4", pixels, 4.0, codec="mpeg4")
    return data


def test_good_dataset_loads(root):
    spec_row = make_sample("needle", 2, 16)[0].to_row()
    absolute = row(id="b", video=str(root / "videos" / "a.mp4"), options=None, answer="free text")
    path = write_jsonl(root / "data.jsonl", [row(), "", absolute, spec_row, row(id=7, extra_column=3)])
    samples, bad = load_jsonl(path)
    assert bad == []
    assert [s.id for s in samples] == ["a", "b", spec_row["id"], "7"]
    assert (
        samples[0].answer_text == "y" and samples[1].options == () and samples[3].extra == {"extra_column": 3}
    )


BAD_ROWS = [
    ('{"id": "z", "video": ', "invalid JSON"),
    ("[1, 2]", "JSON object"),
    (row(id="z", question=None), "question"),
    (row(id="z", question=5), "question"),
    (row(id="z", options="x, y"), "options"),
    (row(id="z", options=["x", 3]), "options"),
    (row(id="z", answer="E"), "answer"),
    (row(), "'id': duplicate"),
    (row(id="z", video="videos/missing.mp4"), "'video': file not found"),
    (row(id="z", video="../outside.mp4"), "'video'.*escapes"),
    (row(id="z", video="videos/../../outside.mp4"), "'video'.*escapes"),
    (row(id="z", video="synth:needle?seed=1&frames=16"), "'video'.*size"),
]


@pytest.mark.parametrize("bad, reason", BAD_ROWS)
def test_bad_row_names_file_line_and_field(root, bad, reason):
    path = write_jsonl(root / "data.jsonl", [row(), bad, row(id="c")])
    with pytest.raises(DataError, match=reason) as info:
        load_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: ")


def test_absolute_path_outside_root_is_rejected(root):
    path = write_jsonl(root / "data.jsonl", [row(video=str(root.parent / "outside.mp4"))])
    with pytest.raises(DataError, match=f"{path}:1: field 'video'.*escapes"):
        load_jsonl(path)


def test_symlink_pointing_outside_root_is_rejected(root):
    (root / "videos" / "sneaky.mp4").symlink_to(root.parent / "outside.mp4")
    (root / "videos" / "fine.mp4").symlink_to(root / "videos" / "a.mp4")
    path = write_jsonl(
        root / "data.jsonl", [row(id="ok", video="videos/fine.mp4"), row(video="videos/sneaky.mp4")]
    )
    with pytest.raises(DataError, match=f"{path}:2: field 'video'.*escapes"):
        load_jsonl(path)


def test_root_can_be_given(root):
    path = write_jsonl(root.parent / "elsewhere.jsonl", [row()])
    with pytest.raises(DataError, match="file not found"):
        load_jsonl(path)
    assert [s.id for s in load_jsonl(path, root=root)[0]] == ["a"]


def test_skip_bad_counts_and_logs(root, caplog):
    lines = [row()]
    for i, (bad, _) in enumerate(BAD_ROWS):
        lines += [bad, row(id=f"g{i}")]
    path = write_jsonl(root / "data.jsonl", lines)
    with caplog.at_level(logging.WARNING):
        samples, bad = load_jsonl(path, skip_bad=True)
    assert [s.id for s in samples] == ["a"] + [f"g{i}" for i in range(len(BAD_ROWS))]
    assert [b.line for b in bad] == [2 * i + 2 for i in range(len(BAD_ROWS))]
    assert all(isinstance(b, BadRow) and b.file == str(path) for b in bad)
    assert str(bad[0]).startswith(f"{path}:2: invalid JSON")
    assert f"skipped {len(BAD_ROWS)} bad row(s)" in caplog.text


def test_missing_dataset_file(tmp_path):
    with pytest.raises(DataError, match="nothing.jsonl"):
        load_jsonl(tmp_path / "nothing.jsonl")


# ---- VideoDataset ----


def test_dataset_serves_decoded_and_synthetic_frames(root):
    spec_sample, spec_frames = make_sample("plot", 4, 32)
    path = write_jsonl(root / "data.jsonl", [row(), spec_sample.to_row()])
    dataset = VideoDataset.from_jsonl(path, num_frames=4, size=(16, 16))
    assert len(dataset) == 2
    sample, frames = dataset[0]
    assert sample.id == "a" and frames.pixels.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(
        frames.timestamps, np.array([1, 4, 7, 10]) / 4.0, atol=1e-3
    )  # bin centres of 12
    red = frames.pixels[:, :6, :, 0].mean(axis=(1, 2))
    np.testing.assert_allclose(red, [20, 80, 140, 200], atol=6)
    sample, frames = dataset[1]
    assert sample == spec_sample and frames.pixels.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(frames.timestamps, np.array([4, 12, 20, 28]) / 2.0)  # rendered at 2 fps
    by_fps = VideoDataset.from_jsonl(path, fps=1.0, max_frames=3)
    assert [len(by_fps[i][1]) for i in range(2)] == [3, 3]  # 3 s at 1 fps; 16 s capped at 3


def test_video_config_and_cache(root, monkeypatch):
    path = write_jsonl(root / "data.jsonl", [row()])
    samples, _ = load_jsonl(path)
    config = SimpleNamespace(num_frames=3, fps=None, max_frames=512, size=16)  # a VideoConfig's fields
    dataset = VideoDataset(samples, root=root, video=config, cache=True)
    calls = []
    monkeypatch.setattr(dataset_module, "decode", lambda *a, **k: calls.append(k) or decode(*a, **k))
    first = dataset.load_frames(samples[0])
    assert first.pixels.shape == (3, 16, 16, 3) and dataset.load_frames(samples[0]) is first
    assert calls == [{"num_frames": 3, "fps": None, "max_frames": 512, "size": (16, 16)}]
    uncached = VideoDataset(samples, root=root, video=config)
    uncached.load_frames(samples[0])
    uncached.load_frames(samples[0])
    assert len(calls) == 3
    with pytest.raises(ValueError, match="not both"):
        VideoDataset(samples, root=root, video=config, num_frames=3)


def test_impossible_sampling_is_refused(root):
    with pytest.raises(ValueError, match="not both"):
        VideoDataset([], root=root, num_frames=4, fps=1.0)


@pytest.fixture
def broken(root) -> Path:
    """data.jsonl: a good row, then a text file named .mp4, then a garbled real video."""
    (root / "videos" / "text.mp4").write_text("not a video\n" * 50)
    data = bytearray((root / "videos" / "a.mp4").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(range(256))
    (root / "videos" / "garbled.mp4").write_bytes(bytes(data))
    rows = [row(), row(id="t", video="videos/text.mp4"), row(id="g", video="videos/garbled.mp4")]
    return write_jsonl(root / "data.jsonl", rows)


def test_unreadable_video_names_the_row(broken):
    dataset = VideoDataset.from_jsonl(broken, num_frames=4)
    assert dataset[0][1].pixels.shape[0] == 4
    with pytest.raises(VideoError, match=f"{broken}:2: .*text.mp4"):
        dataset[1]
    with pytest.raises(VideoError, match=f"{broken}:3: .*garbled.mp4.*corrupt"):
        dataset.load_frames(dataset.samples[2])


def test_unreadable_video_skipped_is_counted_not_replaced(broken, caplog):
    dataset = VideoDataset.from_jsonl(broken, num_frames=4, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(3)]
    assert items[0][0].id == "a" and items[1] is None and items[2] is None
    assert [(b.file, b.line) for b in dataset.bad] == [(str(broken), 2), (str(broken), 3)]
    assert "text.mp4" in dataset.bad[0].reason and "2 bad so far" in caplog.text
    assert dataset.num_bad == 2


def test_validate_videos(broken):
    with pytest.raises(VideoError, match=f"1 of 3 videos.*\n{broken}:2: .*text.mp4"):
        VideoDataset.from_jsonl(broken).validate_videos(progress=False)
    dataset = VideoDataset.from_jsonl(broken, num_frames=4, skip_bad=True)
    assert [b.line for b in dataset.validate_videos(progress=False)] == [2]  # headers only
    assert [s.id for s in dataset.samples] == ["a", "g"]
    assert [b.line for b in dataset.validate_videos(full=True, progress=False)] == [3]  # decodes every frame
    assert [s.id for s in dataset.samples] == ["a"] and [b.line for b in dataset.bad] == [2, 3]


def test_validate_videos_catches_a_truncated_faststart_file(root):
    from test_decode import faststart_mp4

    path = faststart_mp4(root / "videos" / "fast.mp4")
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    data = write_jsonl(root / "fast.jsonl", [row(), row(id="f", video="videos/fast.mp4")])
    # Before: the header check passed it, then training stopped on it mid-run, even with skip_bad.
    with pytest.raises(VideoError, match=f"1 of 2 videos.*\n{data}:2: .*fast.mp4: truncated"):
        VideoDataset.from_jsonl(data, num_frames=4).validate_videos(progress=False)
    dataset = VideoDataset.from_jsonl(data, num_frames=4, skip_bad=True)
    assert [b.line for b in dataset.validate_videos(progress=False)] == [2]
    assert [s.id for s in dataset.samples] == ["a"]
