"""Decode local video files into `Frames` with PyAV (uniform-N or fps sampling); write mp4 files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..errors import VideoError

log = logging.getLogger(__name__)

MAX_PIXELS = 7680 * 4320  # 8K UHD per frame; a larger header is broken or hostile
MAX_FRAMES = 100_000  # frames one call may return
MAX_BYTES = 16 * 2**30  # decoded output; beyond this ask for fewer frames or a smaller size


@dataclass(frozen=True)
class Frames:
    """Decoded frames: `pixels` uint8 [T, H, W, 3] RGB, `timestamps` float64 [T] in seconds."""

    pixels: np.ndarray
    timestamps: np.ndarray
    source: str

    def __post_init__(self) -> None:
        p, t = self.pixels, self.timestamps
        if p.dtype != np.uint8 or p.ndim != 4 or p.shape[-1] != 3:
            raise ValueError(f"pixels must be uint8 [T, H, W, 3], got {p.dtype} {p.shape}")
        if t.dtype != np.float64 or t.shape != p.shape[:1]:
            raise ValueError(f"timestamps must be float64 [{p.shape[0]}], got {t.dtype} {t.shape}")

    def __len__(self) -> int:
        return self.pixels.shape[0]


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header (and, when the header is silent, its packet count) says."""

    path: str
    num_frames: int
    fps: float | None
    duration: float
    width: int
    height: int
    codec: str


def frame_indices(
    total: int,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    native_fps: float | None = None,
) -> np.ndarray:
    """Which of `total` frames to keep, sorted (repeats only when num_frames > total).

    num_frames=N: the centres of N equal bins over the video. fps=F: one frame per 1/F seconds
    (never more than every frame), spread uniformly when capped at max_frames. Neither: every
    frame, capped at max_frames. Raises ValueError for impossible settings.
    """
    if total <= 0:
        raise ValueError("the video has no frames")
    if num_frames is not None and fps is not None:
        raise ValueError("pass num_frames or fps, not both")
    if num_frames is not None:
        if not isinstance(num_frames, (int, np.integer)) or not 0 < num_frames <= MAX_FRAMES:
            raise ValueError(f"num_frames must be an integer in 1..{MAX_FRAMES}, got {num_frames!r}")
        n = int(num_frames)
    else:
        if max_frames is not None and (
            not isinstance(max_frames, (int, np.integer)) or not 0 < max_frames <= MAX_FRAMES
        ):
            raise ValueError(f"max_frames must be an integer in 1..{MAX_FRAMES}, got {max_frames!r}")
        n = total
        if fps is None and max_frames is None and total > MAX_FRAMES:
            raise ValueError(
                f"the video has {total} frames, above {MAX_FRAMES}; pass num_frames, fps or max_frames"
            )
        if fps is not None:
            if not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
                raise ValueError(f"fps must be a positive number, got {fps!r}")
            if not native_fps:
                raise ValueError("the video's frame rate is unknown; sample with num_frames instead")
            n = min(total, max(1, round(total * fps / native_fps)))
        n = min(n, max_frames or MAX_FRAMES)
    return (2 * np.arange(n, dtype=np.int64) + 1) * total // (2 * n)  # floor((k + 1/2) * total / n)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one uint8 [H, W, 3] image to size=(H, W) with PIL's bilinear (antialiased) filter."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def check_sampling(
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> None:
    """Raise ValueError for impossible sampling settings, before any video is opened."""
    frame_indices(1, num_frames=num_frames, fps=fps, max_frames=max_frames, native_fps=1.0)
    if size is None:
        return
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be (height, width) with positive integers, got {size!r}")
    if size[0] * size[1] > MAX_PIXELS:
        raise ValueError(f"size {size[0]}x{size[1]} is above the limit of {MAX_PIXELS} pixels")


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: file not found")
    if p.is_dir():
        raise VideoError(f"{p}: is a directory, not a video file")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{p}: not a readable video ({e})") from e
    try:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise VideoError(f"{p}: no video stream (streams: {kinds})")
        yield container, container.streams.video[0]
    finally:
        container.close()


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read frame count, frame rate, duration and resolution without decoding any frame."""
    p = Path(path)
    with _open(p) as (container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise VideoError(f"{p}: the video stream has no frame size")
        if width * height > MAX_PIXELS:
            raise VideoError(f"{p}: frame size {width}x{height} is above the limit of {MAX_PIXELS} pixels")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        num_frames = stream.frames
        if num_frames <= 0:
            # Containers such as mkv keep no frame count: count packets (demuxing, no decoding).
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as e:
                raise VideoError(f"{p}: corrupt or truncated data while counting packets ({e})") from e
        if num_frames <= 0:
            raise VideoError(f"{p}: the video stream has no frames")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = num_frames / fps if fps else 0.0
        return VideoInfo(str(p), num_frames, fps, duration, width, height, stream.codec_context.name)


def verify(path: str | os.PathLike) -> VideoInfo:
    """`probe`, then read every packet of the video stream (demuxing, no decoding): a truncated
    file fails here, also one whose index sits at the front (mp4 `movflags=faststart`) and so
    promises frames the file no longer holds."""
    p = Path(path)
    info = probe(p)
    with _open(p) as (container, stream):
        try:
            packets = sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as e:
            raise VideoError(f"{p}: corrupt or truncated data while reading packets ({e})") from e
    if packets < info.num_frames:
        raise VideoError(f"{p}: truncated: the header promises {info.num_frames} frames, the file holds {packets}")
    return info


def capped_frames(num_frames: int | None, available: int, source: str) -> int | None:
    """num_frames, capped at the frames the video has: never more frames than there are (repeating
    frames would only cost memory). The cap is logged."""
    if num_frames is not None and num_frames > available:
        log.info("%s has %d frames, fewer than num_frames=%d: taking all %d", source, available, num_frames, available)
        return available
    return num_frames


def decode(
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    strict: bool = True,
) -> Frames:
    """Decode a local video in one pass, keeping only the sampled frames (see `frame_indices`).
    A video with fewer frames than `num_frames` gives all its frames (`capped_frames`).

    size=(H, W) resizes each kept frame. strict=True makes the decoder fail on damaged data
    instead of concealing it. Every failure raises VideoError naming the file and the reason.
    """
    p = Path(path)
    try:
        check_sampling(num_frames, fps, max_frames, size)
    except ValueError as e:
        raise VideoError(f"{p}: {e}") from e
    info = probe(p)
    num_frames = capped_frames(num_frames, info.num_frames, str(p))
    try:
        indices = frame_indices(
            info.num_frames, num_frames=num_frames, fps=fps, max_frames=max_frames, native_fps=info.fps
        )
    except ValueError as e:
        raise VideoError(f"{p}: {e}") from e
    out_h, out_w = size if size is not None else (info.height, info.width)
    wanted, inverse = np.unique(indices, return_inverse=True)
    if len(indices) * out_h * out_w * 3 > MAX_BYTES:
        raise VideoError(
            f"{p}: {len(indices)} frames of {out_h}x{out_w} exceed {MAX_BYTES / 2**30:.0f} GiB; "
            "ask for fewer frames or a smaller size"
        )

    pixels = np.empty((len(wanted), out_h, out_w, 3), np.uint8)
    timestamps = np.empty(len(wanted), np.float64)
    found = 0
    decoded = 0
    with _open(p) as (container, stream):
        stream.thread_type = "AUTO"
        if strict:
            # Make the decoder raise on damaged data; frames it still conceals are flagged corrupt.
            stream.codec_context.options = {"err_detect": "explode"}
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        try:
            for frame in container.decode(stream):
                i = decoded
                decoded += 1
                if strict and frame.is_corrupt:
                    raise VideoError(f"{p}: corrupt data in frame {i}")
                if i != wanted[found]:
                    continue
                image = frame.to_ndarray(format="rgb24")
                if size is None and image.shape[:2] != (out_h, out_w):
                    raise VideoError(
                        f"{p}: frame {i} is {image.shape[1]}x{image.shape[0]}, "
                        f"the header says {out_w}x{out_h}"
                    )
                pixels[found] = resize(image, (out_h, out_w))
                timestamps[found] = frame.time - start if frame.time is not None else i / (info.fps or 1.0)
                found += 1
                if found == len(wanted):
                    break  # the frames after the last wanted one are never decoded
        except av.FFmpegError as e:
            raise VideoError(f"{p}: corrupt or truncated data after {decoded} frames ({e})") from e
    if found < len(wanted):
        raise VideoError(
            f"{p}: truncated or corrupt: the header promises {info.num_frames} frames, "
            f"only {decoded} could be decoded"
        )
    if len(wanted) < len(indices):
        pixels, timestamps = pixels[inverse], timestamps[inverse]
    log.debug("decoded %d of %d frames from %s", len(indices), info.num_frames, p)
    return Frames(pixels, timestamps, str(p))


def sample_frames(
    frames: Frames,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
) -> Frames:
    """Apply `decode`'s sampling and resizing to frames already in memory (e.g. synthetic ones)."""
    ts = frames.timestamps
    native_fps = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else None
    try:
        check_sampling(num_frames, fps, max_frames, size)
        num_frames = capped_frames(num_frames, len(frames), frames.source)
        idx = frame_indices(
            len(frames), num_frames=num_frames, fps=fps, max_frames=max_frames, native_fps=native_fps
        )
    except ValueError as e:
        raise VideoError(f"{frames.source}: {e}") from e
    pixels = frames.pixels[idx]
    if size is not None and pixels.shape[1:3] != tuple(size):
        pixels = np.stack([resize(image, size) for image in pixels])
    return Frames(pixels, ts[idx], frames.source)


def encode_mp4(path: str | os.PathLike, pixels: np.ndarray, fps: float, codec: str = "libx264") -> Path:
    """Write uint8 [T, H, W, 3] frames as an mp4 (yuv420p) atomically: a temp file, then a rename."""
    path = Path(path)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3 or len(pixels) == 0:
        raise ValueError(f"pixels must be non-empty uint8 [T, H, W, 3], got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {width}x{height}")
    if codec not in ("libx264", "mpeg4"):
        raise ValueError(f"codec must be 'libx264' or 'mpeg4', got {codec!r}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for image in pixels:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
