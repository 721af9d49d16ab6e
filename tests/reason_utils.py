"""Videos for the clip and reasoning-pipeline tests: frames whose brightness encodes their index."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

STEP = 6  # brightness per frame index


def write_gop_video(path: Path, num_frames: int, fps: int, gop: int, size: int = 32) -> Path:
    """An h264 mp4 with a keyframe every `gop` frames; frame i is a flat image of value STEP * i."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(num_frames):
            image = np.full((size, size, 3), (STEP * i) % 250, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def frame_values(path: Path) -> tuple[list[int], list[float]]:
    """Each decoded frame's index (from its brightness) and its presentation time."""
    values, times = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            values.append(int(round(frame.to_ndarray(format="rgb24").mean() / STEP)))
            times.append(float(frame.time))
    return values, times
