"""Cut a video into clip files of about `clip_seconds` each, recording each clip's true start and end.

Two ways to cut, chosen per video:

- copy (default): the compressed packets are copied into the clip without re-encoding, which is
  fast and lossless but can only start a clip on a keyframe. Each boundary is therefore SNAPPED to
  the first keyframe at or after the requested time, and a clip holds every packet from its start
  keyframe (in decoding order) up to the next boundary keyframe. The recorded `start`/`end` are the
  copied frames' true presentation times (first frame's time; last frame's time plus its
  duration), relative to the stream's start, so they are exact for what the clip contains, not for
  what was asked. All clips are copied in one demuxing pass. (In an open-GOP stream the frames
  that follow a keyframe in decoding order but reference the GOP before it cannot be decoded
  from the clip; x264 and most encoders write closed GOPs by default.)
- reencode: frames whose time lies in `[start, end)` of the requested window are decoded and
  written as a new mp4 at the source frame rate; boundaries are exact to the frame. Used when the
  keyframes are too sparse for copying (a snapped clip would exceed `max_clip_seconds`) or when
  asked for. It holds one clip's frames in memory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from ..errors import VideoError
from .decode import _open, encode_mp4, probe

log = logging.getLogger(__name__)

CutMode = Literal["auto", "copy", "reencode"]


@dataclass(frozen=True)
class Clip:
    index: int
    path: str
    start: float  # true presentation time of the clip's first frame in the source, seconds
    end: float  # true end (last frame's time + its duration), seconds
    requested_start: float
    requested_end: float
    cut: str  # "copy" or "reencode"

    def to_dict(self) -> dict:
        return asdict(self)


def keyframe_times(path: str | os.PathLike) -> tuple[list[float], float]:
    """Presentation times (seconds from the stream start) of the keyframes, and the stream's end
    time, read by demuxing packets (nothing is decoded)."""
    with _open(path) as (container, stream):
        tb = stream.time_base
        origin = stream.start_time or 0
        keys, end = [], 0.0
        try:
            for packet in container.demux(stream):
                if packet.pts is None or not packet.size:
                    continue
                t = float((packet.pts - origin) * tb)
                end = max(end, t + float((packet.duration or 0) * tb))
                if packet.is_keyframe:
                    keys.append(t)
        except av.FFmpegError as e:
            raise VideoError(f"{path}: corrupt data while reading packets ({e})") from e
    return sorted(keys), end


def plan_windows(duration: float, clip_seconds: float) -> list[tuple[float, float]]:
    """Requested windows `[k * clip_seconds, (k + 1) * clip_seconds)` covering the video; a last
    window shorter than a quarter clip is merged into the one before it."""
    if not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    if not duration > 0:
        raise ValueError(f"the video has no duration ({duration})")
    bounds = list(np.arange(0.0, duration, clip_seconds)) + [duration]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < clip_seconds / 4:
        del bounds[-2]
    return [(float(a), float(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def snap_to_keyframes(windows: list[tuple[float, float]], keyframes: list[float]) -> list[tuple[float, float]]:
    """(keyframe, requested start) of each clip: every window's start moved to the first keyframe
    at or after it (the first clip starts at the first keyframe); windows that collapse onto the
    same keyframe are merged into one clip."""
    if not keyframes:
        return []
    keys = np.asarray(keyframes)
    starts: list[tuple[float, float]] = []
    for start, _ in windows:
        i = int(np.searchsorted(keys, start - 1e-6))
        if i < len(keys) and (not starts or keys[i] > starts[-1][0]):
            starts.append((float(keys[i]), start))
    if starts:
        starts[0] = (float(keys[0]), starts[0][1])
    return starts


class _ClipWriter:
    """One clip being written by packet copy, to a temp file renamed into place when finished."""

    def __init__(self, dst: Path, template: av.VideoStream, first_pts: int, first_time: float):
        self.dst, self.tmp = dst, dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        self.out = av.open(str(self.tmp), "w", format="mp4")
        self.stream = self.out.add_stream_from_template(template)
        self.offset, self.start, self.end = first_pts, first_time, first_time

    def mux(self, packet: av.Packet, time: float, time_base) -> None:
        self.end = max(self.end, time + float((packet.duration or 0) * time_base))
        packet.pts -= self.offset  # the clip's timestamps restart at zero
        if packet.dts is not None:
            packet.dts -= self.offset
        packet.stream = self.stream
        self.out.mux(packet)

    def finish(self) -> tuple[str, float, float]:
        self.out.close()
        os.replace(self.tmp, self.dst)
        return str(self.dst), self.start, self.end

    def abort(self) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)


def _copy_clips(src: Path, out: Path, starts: list[float]) -> list[tuple[str, float, float]]:
    """One demuxing pass: each clip takes the packets from its start keyframe (in decoding order)
    up to the next clip's start keyframe. Returns (path, true start, true end) per clip."""
    done: list[tuple[str, float, float]] = []
    writer: _ClipWriter | None = None
    with _open(src) as (container, stream):
        tb, origin = stream.time_base, stream.start_time or 0
        try:
            for packet in container.demux(stream):
                if packet.pts is None or not packet.size:
                    continue
                t = float((packet.pts - origin) * tb)
                if packet.is_keyframe and len(done) + (writer is not None) < len(starts):
                    if abs(t - starts[len(done) + (writer is not None)]) < 1e-6:
                        if writer is not None:
                            done.append(writer.finish())
                        writer = _ClipWriter(out / f"clip-{len(done):04d}.mp4", stream, packet.pts, t)
                if writer is not None:
                    writer.mux(packet, t, tb)
            if writer is not None:
                done.append(writer.finish())
                writer = None
        except av.FFmpegError as e:
            raise VideoError(f"{src}: corrupt data while copying clips ({e})") from e
        finally:
            if writer is not None:
                writer.abort()
    if len(done) != len(starts):
        raise VideoError(f"{src}: found {len(done)} of the {len(starts)} keyframes it should start clips at")
    return done


def _reencode_clip(src: Path, dst: Path, start: float, end: float, fps: float) -> tuple[float, float]:
    """Decode the frames with time in `[start, end)` and write them as a new mp4."""
    images, times = [], []
    with _open(src) as (container, stream):
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if start > 0:
            container.seek(int((start + origin) / stream.time_base), stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                t = frame.time - origin
                if t < start - 1e-6:
                    continue
                if t >= end - 1e-6:
                    break
                images.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
        except av.FFmpegError as e:
            raise VideoError(f"{src}: corrupt data while cutting {start:.2f}-{end:.2f}s ({e})") from e
    if not images:
        raise VideoError(f"{src}: no frames between {start:.3f}s and {end:.3f}s")
    pixels = np.stack(images)
    h, w = pixels.shape[1:3]
    pixels = pixels[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sizes
    encode_mp4(dst, pixels, fps)
    return times[0], times[-1] + 1.0 / fps


def cut_clips(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    clip_seconds: float = 10.0,
    *,
    mode: CutMode = "auto",
    max_clip_seconds: float | None = None,
) -> list[Clip]:
    """Cut `src` into `out_dir/clip-0000.mp4`, ... and return the clips with their true times.

    mode="auto" copies when keyframe snapping keeps every clip within `max_clip_seconds`
    (default 2 x clip_seconds) and re-encodes otherwise; "copy" and "reencode" force one way.
    """
    src, out = Path(src), Path(out_dir)
    info = probe(src)
    keys, stream_end = keyframe_times(src)
    duration = max(info.duration, stream_end)
    windows = plan_windows(duration, clip_seconds)
    limit = max_clip_seconds or 2 * clip_seconds
    snapped = snap_to_keyframes(windows, keys)
    starts = [key for key, _ in snapped]
    bounds = starts + [duration]
    copyable = bool(starts) and max(b - a for a, b in zip(bounds[:-1], bounds[1:])) <= limit + 1e-6
    if mode == "copy" and not starts:
        raise VideoError(f"{src}: no keyframes found; cannot cut without re-encoding")
    use_copy = mode == "copy" or (mode == "auto" and copyable)
    if mode == "auto" and not copyable:
        log.info("%s: keyframes too sparse for %.1fs clips; re-encoding its clips", src, clip_seconds)
    out.mkdir(parents=True, exist_ok=True)
    clips = []
    if use_copy:
        for i, (path, true_start, true_end) in enumerate(_copy_clips(src, out, starts)):
            requested_end = snapped[i + 1][1] if i + 1 < len(snapped) else duration
            clips.append(Clip(i, path, true_start, true_end, snapped[i][1], requested_end, "copy"))
    else:
        fps = info.fps or 1.0
        for i, (begin, end) in enumerate(windows):
            dst = out / f"clip-{i:04d}.mp4"
            true_start, true_end = _reencode_clip(src, dst, begin, end, fps)
            clips.append(Clip(i, str(dst), true_start, true_end, begin, end, "reencode"))
    return clips
