"""Clip cutting: stream copy snaps to keyframes and records the true times; re-encoding is exact."""

import numpy as np
import pytest

from longvid.errors import VideoError
from longvid.video.clips import cut_clips, keyframe_times, plan_windows, snap_to_keyframes
from longvid.video.decode import encode_mp4
from reason_utils import frame_values, write_gop_video


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory):
    # 40 frames at 4 fps = 10 s, a keyframe every 8 frames (0, 2, 4, 6, 8 s).
    return write_gop_video(tmp_path_factory.mktemp("v") / "gop.mp4", 40, 4, 8)


def test_keyframes_are_read_without_decoding(gop_video):
    keys, end = keyframe_times(gop_video)
    assert keys == [0.0, 2.0, 4.0, 6.0, 8.0] and end == 10.0


def test_windows_and_snapping():
    assert plan_windows(10.0, 3.0) == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, 10.0)]
    assert plan_windows(10.5, 5.0) == [(0.0, 5.0), (5.0, 10.5)]  # a 0.5 s tail joins the last clip
    windows = plan_windows(10.0, 3.0)
    assert snap_to_keyframes(windows, [0.0, 2.0, 4.0, 6.0, 8.0]) == [(0.0, 0.0), (4.0, 3.0), (6.0, 6.0)]
    with pytest.raises(ValueError, match="clip_seconds"):
        plan_windows(10.0, 0)


def test_copy_cut_snaps_to_keyframes_and_records_true_times(gop_video, tmp_path):
    clips = cut_clips(gop_video, tmp_path, 3.0, mode="copy")
    assert [(c.start, c.end, c.cut) for c in clips] == [(0.0, 4.0, "copy"), (4.0, 6.0, "copy"), (6.0, 10.0, "copy")]
    assert [(c.requested_start, c.requested_end) for c in clips] == [(0.0, 3.0), (3.0, 6.0), (6.0, 10.0)]
    # Each clip holds exactly the source frames of its recorded window, with no frame lost or doubled.
    seen = []
    for clip in clips:
        values, times = frame_values(clip.path)
        assert values == list(range(round(clip.start * 4), round(clip.end * 4)))
        assert times[0] == 0.0  # clip timestamps restart at zero
        seen += values
    assert seen == list(range(40))


def test_reencode_cut_is_exact_to_the_frame(gop_video, tmp_path):
    clips = cut_clips(gop_video, tmp_path, 3.0, mode="reencode")
    assert [(c.start, c.end) for c in clips] == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, 10.0)]
    for clip in clips:
        values, _ = frame_values(clip.path)
        assert values == list(range(round(clip.start * 4), round(clip.end * 4)))


def test_auto_reencodes_when_keyframes_are_too_sparse(tmp_path):
    frames = np.repeat(np.arange(24, dtype=np.uint8)[:, None, None, None] * 2, 32, 1).repeat(32, 2).repeat(3, 3)
    src = encode_mp4(tmp_path / "one_gop.mp4", frames, 2.0)  # x264's default GOP: one keyframe here
    assert keyframe_times(src)[0] == [0.0]
    clips = cut_clips(src, tmp_path / "clips", 4.0)
    assert [c.cut for c in clips] == ["reencode"] * 3
    assert [(c.start, c.end) for c in clips] == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0)]


def test_unreadable_video_names_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoError, match="bad.mp4"):
        cut_clips(bad, tmp_path / "clips")
