"""Generated videos: frames rendered from a text spec such as `synth:temporal?seed=3&frames=64`.

A row's `video` is a file path unless it starts with a registered prefix. Whoever makes such
videos registers a source here (`longvid.synth` registers `synth:` when imported), so `data/`
serves every kind of video without importing the rooms above it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .decode import Frames


@dataclass(frozen=True)
class VideoSource:
    """How to turn a spec into frames (`render`) and to validate one cheaply (`check`, ValueError)."""

    prefix: str
    render: Callable[[str], Frames]
    check: Callable[[str], None]


_SOURCES: dict[str, VideoSource] = {}
_PREFIX = re.compile(r"[a-z][a-z0-9_-]*:")


def register_source(prefix: str, render: Callable[[str], Frames], check: Callable[[str], None]) -> None:
    """Serve videos whose spec starts with `prefix` (e.g. "synth:"); registering again replaces it."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"a video source prefix is a lower-case word and a colon, like 'synth:', got {prefix!r}")
    _SOURCES[prefix] = VideoSource(prefix, render, check)


def source_for(video: str) -> VideoSource | None:
    """The registered source whose prefix `video` starts with, or None for a file path."""
    for prefix, source in _SOURCES.items():
        if video.startswith(prefix):
            return source
    return None


def is_generated(video: str) -> bool:
    """Whether `video` is a spec a registered source renders (its identity is the spec itself)."""
    return source_for(video) is not None


def unregistered_hint(video: str) -> str:
    """For a path that was not found: a note when it looks like the spec of an unregistered source."""
    m = _PREFIX.match(video)
    if m is None or video[m.end() : m.end() + 2] == "//":
        return ""
    known = ", ".join(_SOURCES) or "none"
    return (
        f" ({m.group()!r} looks like a generated-video spec but no source is registered for it; "
        f"registered: {known}; import the module that provides it, e.g. longvid.synth)"
    )
