"""Decoding real (tiny) mp4 files written here with PyAV, in two codecs, and every way it can fail."""

import logging
from pathlib import Path

import av
import numpy as np
import pytest

import longvid.video.decode as decode_module
from longvid.errors import VideoError
from longvid.video.decode import MAX_FRAMES, Frames, decode, encode_mp4, probe, sample_frames, verify

NUM, FPS, H, W = 120, 24, 32, 48
BASE, STEP = 10, 20  # frame i is drawn flat with R = BASE + STEP * (i % 12), G = BASE + STEP * (i // 12)


def indexed_frames(n: int) -> np.ndarray:
    i = np.arange(n)
    pixels = np.full((n, H, W, 3), 128, np.uint8)
    pixels[..., 0] = (BASE + STEP * (i % 12))[:, None, None]
    pixels[..., 1] = (BASE + STEP * (i // 12))[:, None, None]
    return pixels


def read_indices(pixels: np.ndarray) -> np.ndarray:
    """Recover each frame's index from its colour; codec error (a few levels) is far below STEP / 2."""
    mean = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
    digits = np.round((mean[:, :2] - BASE) / STEP).astype(int)
    return digits[:, 0] + 12 * digits[:, 1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        codec: encode_mp4(folder / f"{codec}.mp4", indexed_frames(NUM), FPS, codec)
        for codec in ("libx264", "mpeg4")
    }


CODECS = pytest.mark.parametrize("codec", ["libx264", "mpeg4"])


@CODECS
def test_probe(videos, codec):
    info = probe(videos[codec])
    assert (info.num_frames, info.width, info.height) == (NUM, W, H)
    assert info.fps == pytest.approx(FPS)
    assert info.duration == pytest.approx(NUM / FPS, abs=1 / FPS)
    assert info.codec == {"libx264": "h264", "mpeg4": "mpeg4"}[codec]


@CODECS
def test_decode_every_frame(videos, codec):
    frames = decode(videos[codec])
    assert frames.pixels.shape == (NUM, H, W, 3) and frames.pixels.dtype == np.uint8
    assert frames.source == str(videos[codec])
    np.testing.assert_array_equal(read_indices(frames.pixels), np.arange(NUM))
    ts = frames.timestamps
    assert ts.dtype == np.float64 and np.all(np.diff(ts) > 0)
    assert ts[0] == pytest.approx(0.0) and ts[-1] < NUM / FPS
    np.testing.assert_allclose(ts, np.arange(NUM) / FPS, atol=1e-3)


@CODECS
def test_uniform_sampling_picks_bin_centres(videos, codec):
    frames = decode(videos[codec], num_frames=8)
    got = read_indices(frames.pixels)
    # 8 bins of 15 frames; the centre of bin k is 15k + 7.5, rounded down.
    np.testing.assert_array_equal(got, [7, 22, 37, 52, 67, 82, 97, 112])
    np.testing.assert_allclose(frames.timestamps, got / FPS, atol=1e-3)


def test_more_frames_than_the_video_has_gives_every_frame_once_and_says_so(videos, caplog):
    # Before: 100000 frames asked of a short video were repeated until they filled 16 GB.
    with caplog.at_level(logging.INFO, logger="longvid.video.decode"):
        frames = decode(videos["libx264"], num_frames=100_000)
    np.testing.assert_array_equal(read_indices(frames.pixels), np.arange(NUM))
    assert f"has {NUM} frames, fewer than num_frames=100000: taking all {NUM}" in caplog.text
    spec = sample_frames(Frames(indexed_frames(6), np.arange(6.0), "mem"), num_frames=10)
    assert len(spec) == 6


def faststart_mp4(path: Path, n: int = 40) -> Path:
    """An mp4 whose index (moov) sits before the data, as `movflags=faststart` writes it."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for image in indexed_frames(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    assert path.read_bytes().find(b"moov") < path.read_bytes().find(b"mdat")
    return path


def test_verify_catches_a_truncated_faststart_file_that_probe_accepts(tmp_path):
    path = faststart_mp4(tmp_path / "fast.mp4")
    assert verify(path).num_frames == 40
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    assert probe(path).num_frames == 40  # the header at the front still promises every frame
    with pytest.raises(VideoError, match=r"fast.mp4: truncated: the header promises 40 frames, the file holds \d+"):
        verify(path)


@CODECS
def test_fps_sampling_with_and_without_cap(videos, codec):
    frames = decode(videos[codec], fps=2.0)  # 5 s at 2 fps: one frame every 12
    np.testing.assert_array_equal(read_indices(frames.pixels), np.arange(6, NUM, 12))
    np.testing.assert_allclose(np.diff(frames.timestamps), 0.5, atol=1e-3)
    capped = decode(videos[codec], fps=2.0, max_frames=4)  # capped: 4 bins of 30 frames
    np.testing.assert_array_equal(read_indices(capped.pixels), [15, 45, 75, 105])


def test_fps_above_the_native_rate_keeps_every_frame_once(videos):
    frames = decode(videos["mpeg4"], fps=100.0)
    np.testing.assert_array_equal(read_indices(frames.pixels), np.arange(NUM))


@CODECS
def test_resize(videos, codec):
    frames = decode(videos[codec], num_frames=5, size=(16, 24))
    assert frames.pixels.shape == (5, 16, 24, 3)
    np.testing.assert_array_equal(read_indices(frames.pixels), [12, 36, 60, 84, 108])


def test_encode_mp4_is_atomic_and_cleans_up(tmp_path, monkeypatch):
    encode_mp4(tmp_path / "ok.mp4", indexed_frames(4), FPS)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.mp4"]

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(decode_module.av.VideoFrame, "from_ndarray", fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        encode_mp4(tmp_path / "broken.mp4", indexed_frames(4), FPS)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.mp4"]
    with pytest.raises(ValueError, match="even"):
        encode_mp4(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8), FPS)


# ---- failures: each raises VideoError naming the file and the reason ----


def assert_fails(path: Path, reason: str, **kwargs) -> None:
    with pytest.raises(VideoError, match=reason) as info:
        decode(path, **kwargs)
    assert path.name in str(info.value)


def test_missing_file(tmp_path):
    assert_fails(tmp_path / "nowhere.mp4", "not found")


def test_directory(tmp_path):
    folder = tmp_path / "clips.mp4"
    folder.mkdir()
    assert_fails(folder, "directory")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n" * 20)
    assert_fails(path, "not a readable video")


def test_audio_only_file(tmp_path):
    path = tmp_path / "song.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert_fails(path, "no video stream.*audio")


def test_video_stream_with_zero_frames(tmp_path):
    path = tmp_path / "empty.avi"  # avi keeps a video stream that has no packets
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        container.start_encoding()
    assert len(av.open(str(path)).streams.video) == 1
    assert_fails(path, "no frames")


def test_truncated_file(tmp_path, videos):
    data = videos["libx264"].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.4)])
    assert_fails(path, "not a readable video")


def test_truncated_file_with_index_first(tmp_path):
    """With the index at the front the header still promises every frame; decoding must notice."""
    full = tmp_path / "faststart.mp4"
    with av.open(str(full), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for image in indexed_frames(NUM):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    data = full.read_bytes()
    path = tmp_path / "faststart_cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.6)])
    assert probe(path).num_frames == NUM
    assert_fails(path, "truncated")


@CODECS
def test_corrupt_middle(tmp_path, videos, codec):
    data = bytearray(videos[codec].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes()
    path = tmp_path / f"{codec}_garbled.mp4"
    path.write_bytes(bytes(data))
    assert_fails(path, "corrupt")


@CODECS
def test_small_corruptions_are_caught_when_strict(tmp_path, videos, codec):
    """16 garbage bytes, at 11 places: strict decoding refuses all; a lenient decoder hides some."""
    data = videos[codec].read_bytes()
    path = tmp_path / "speck.mp4"
    lenient_ok = 0
    for fraction in np.linspace(0.2, 0.7, 11):
        garbled = bytearray(data)
        at = int(len(data) * fraction)
        garbled[at : at + 16] = np.random.default_rng(1).integers(0, 256, 16, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(garbled))
        assert_fails(path, "corrupt")
        try:
            lenient_ok += len(decode(path, strict=False)) == NUM
        except VideoError:
            pass
    assert lenient_ok > 0


def test_frame_size_above_limit(videos, monkeypatch):
    monkeypatch.setattr(decode_module, "MAX_PIXELS", H * W - 1)
    assert_fails(videos["mpeg4"], "above the limit")


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -3}, "num_frames"),
        ({"num_frames": MAX_FRAMES + 1}, "num_frames"),
        ({"fps": 0.0}, "fps"),
        ({"fps": 2.0, "max_frames": 0}, "max_frames"),
        ({"num_frames": 4, "fps": 2.0}, "not both"),
        ({"size": (100_000, 100_000)}, "above the limit"),
        ({"size": (0, 16)}, "size"),
    ],
)
def test_impossible_settings(videos, kwargs, reason):
    assert_fails(videos["mpeg4"], reason, **kwargs)
