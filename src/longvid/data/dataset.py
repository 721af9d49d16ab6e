"""Load jsonl datasets of `Sample` rows, validated row by row, and serve their frames."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import DataError, VideoError
from ..video.decode import Frames, check_sampling, decode, sample_frames, verify
from ..video.sources import source_for, unregistered_hint
from .schema import Sample

if TYPE_CHECKING:
    from ..config import VideoConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadRow:
    """A rejected row: where it is and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def resolve_video(video: str, root: Path) -> Path:
    """The row's video file, resolved (symlinks too) and checked to lie inside `root` and exist."""
    given = Path(video)
    full = given if given.is_absolute() else root / given
    real = full.resolve()
    if not real.is_relative_to(root.resolve()):
        raise ValueError(f"field 'video': path {video!r} escapes the data root {root}")
    if not real.is_file():
        raise ValueError(f"field 'video': file not found: {full}{unregistered_hint(video)}")
    return real


def video_identity(video: str | os.PathLike, pixels: np.ndarray | None = None) -> str:
    """What makes a video's content unique: file path, size and mtime; a generated video's spec
    itself; or a hash of in-memory pixels."""
    text = str(video)
    if pixels is not None:
        digest = hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).hexdigest()
        return f"pixels:{pixels.shape}:{digest}"
    if source_for(text) is not None:
        return text
    path = Path(text)
    stat = path.stat()
    return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _parse_row(raw: bytes, root: Path, seen: dict[str, int]) -> Sample:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from e
    sample = Sample.from_row(row)
    if sample.id in seen:
        raise ValueError(f"field 'id': duplicate id {sample.id!r} (first at line {seen[sample.id]})")
    source = source_for(sample.video)
    if source is not None:
        try:
            source.check(sample.video)
        except ValueError as e:
            raise ValueError(f"field 'video': {e}") from e
    else:
        resolve_video(sample.video, root)
    return sample


def _read_jsonl(path: Path, root: Path, skip_bad: bool, bad: list[BadRow]) -> Iterator[tuple[int, Sample]]:
    """Yield (line number, sample) for good rows; raise DataError on a bad one unless skip_bad."""
    seen: dict[str, int] = {}
    with path.open("rb") as fh:
        for line, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                sample = _parse_row(raw, root, seen)
            except (ValueError, TypeError) as e:
                if not skip_bad:
                    raise DataError(f"{path}:{line}: {e}") from e
                bad.append(BadRow(str(path), line, str(e)))
                continue
            seen[sample.id] = line
            yield line, sample


def _open_jsonl(path: str | os.PathLike, root: str | os.PathLike | None) -> tuple[Path, Path]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    return path, Path(root) if root is not None else path.parent


def _warn_bad(path: Path, bad: list[BadRow], total: int) -> None:
    if bad:
        log.warning("%s: skipped %d bad row(s) of %d; first: %s", path, len(bad), total, bad[0])


def load_jsonl(
    path: str | os.PathLike, *, root: str | os.PathLike | None = None, skip_bad: bool = False
) -> tuple[list[Sample], list[BadRow]]:
    """Read and validate every row of a jsonl file; video paths must lie inside `root`.

    `root` defaults to the file's folder. A bad row (invalid JSON, missing or mistyped field, answer
    not among the options, duplicate id, video escaping the root or missing, malformed generated-video spec)
    raises DataError "file:line: reason"; with skip_bad=True it is skipped, returned as a BadRow
    and counted in a warning. Blank lines are ignored.
    """
    path, root = _open_jsonl(path, root)
    bad: list[BadRow] = []
    samples = [sample for _, sample in _read_jsonl(path, root, skip_bad, bad)]
    _warn_bad(path, bad, len(samples) + len(bad))
    return samples, bad


class VideoDataset(Dataset):
    """Samples with their frames, decoded (or rendered, for generated-video specs) on access.

    Every video is sampled the same way: `num_frames` uniform frames, or `fps` capped at
    `max_frames`, resized to `size=(H, W)` when given; or all four from `video` (a VideoConfig,
    whose int size means a square). With cache=True each sample's frames are kept in memory after
    the first load, so a video is decoded once per process. Items are (Sample, Frames). A video that
    fails to load raises VideoError naming the row's file:line; with skip_bad=True the item is
    None instead (drop it in the collate function), the row is added to `bad` (per worker process)
    and a warning logged: nothing is ever replaced by another sample. Call `validate_videos()`
    before training to find bad videos up front.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        root: str | os.PathLike,
        origins: Sequence[tuple[str, int]] | None = None,
        video: VideoConfig | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        size: tuple[int, int] | None = None,
        skip_bad: bool = False,
        cache: bool = False,
    ) -> None:
        if video is not None:
            if (num_frames, fps, max_frames, size) != (None, None, None, None):
                raise ValueError("pass the sampling settings through `video` or as arguments, not both")
            num_frames, fps, max_frames = video.num_frames, video.fps, video.max_frames
            size = (video.size, video.size) if isinstance(video.size, int) else video.size
        check_sampling(num_frames, fps, max_frames, size)
        if origins is not None and len(origins) != len(samples):
            raise ValueError(f"{len(origins)} origins for {len(samples)} samples")
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise ValueError("sample ids must be unique")
        self.samples = list(samples)
        self.root = Path(root)
        self.sampling = {"num_frames": num_frames, "fps": fps, "max_frames": max_frames, "size": size}
        self.skip_bad = skip_bad
        self.bad: list[BadRow] = []
        self._cache: dict[str, Frames] | None = {} if cache else None
        # (file, line) of each row, for error messages; samples built in memory get ("<samples>", index).
        self._origin = dict(zip(ids, origins or [("<samples>", i + 1) for i in range(len(ids))], strict=True))

    @classmethod
    def from_jsonl(
        cls,
        path: str | os.PathLike,
        *,
        root: str | os.PathLike | None = None,
        skip_bad: bool = False,
        **sampling: object,
    ) -> VideoDataset:
        """Load rows as `load_jsonl` does (bad rows are kept in `bad`) and remember each row's file:line."""
        path, root = _open_jsonl(path, root)
        bad: list[BadRow] = []
        rows = list(_read_jsonl(path, root, skip_bad, bad))
        _warn_bad(path, bad, len(rows) + len(bad))
        dataset = cls(
            [s for _, s in rows],
            root=root,
            origins=[(str(path), line) for line, _ in rows],
            skip_bad=skip_bad,
            **sampling,
        )
        dataset.bad.extend(bad)
        return dataset

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    def __getitem__(self, index: int) -> tuple[Sample, Frames] | None:
        sample = self.samples[index]
        try:
            return sample, self.load_frames(sample)
        except VideoError as e:
            if not self.skip_bad:
                raise
            self.bad.append(self._bad_row(sample, e))
            log.warning("skipping unreadable video (%d bad so far): %s", len(self.bad), e)
            return None

    def load_frames(self, sample: Sample) -> Frames:
        """Decode (or render) one sample's video with the dataset's sampling; VideoError names file:line."""
        if self._cache is not None and sample.id in self._cache:
            return self._cache[sample.id]
        try:
            source = source_for(sample.video)
            if source is not None:
                frames = sample_frames(source.render(sample.video), **self.sampling)
            else:
                frames = decode(resolve_video(sample.video, self.root), **self.sampling)
        except (VideoError, ValueError) as e:
            file, line = self._origin[sample.id]
            raise VideoError(f"{file}:{line}: {e}") from e
        if self._cache is not None:
            self._cache[sample.id] = frames
        return frames

    def video_key(self, sample: Sample) -> str:
        """The content identity of a row's video without decoding it (spec, or file path/size/mtime)."""
        if source_for(sample.video) is not None:
            return sample.video
        return video_identity(resolve_video(sample.video, self.root))

    def with_sampling(self, video: VideoConfig, samples: Sequence[Sample] | None = None) -> VideoDataset:
        """The same rows (or the given subset of them), sampled as `video` says."""
        samples = self.samples if samples is None else list(samples)
        return VideoDataset(
            samples, root=self.root, origins=[self._origin[s.id] for s in samples], video=video, skip_bad=self.skip_bad
        )

    def origin(self, sample: Sample) -> str:
        """Where the row came from, as `file:line`."""
        file, line = self._origin[sample.id]
        return f"{file}:{line}"

    def validate_videos(self, *, full: bool = False, progress: bool = True) -> list[BadRow]:
        """Check every video up front: read its header and every packet (`verify`: catches
        truncated files, faststart ones too, without decoding), or with full=True load it as
        training will. Videos with fewer frames than `num_frames` are counted in one log line.

        Bad videos raise VideoError listing them, or with skip_bad are dropped from the dataset,
        added to `bad` and returned.
        """
        found: list[BadRow] = []
        keep: list[Sample] = []
        short = 0
        wanted = self.sampling["num_frames"]
        for sample in tqdm(self.samples, desc="checking videos", disable=not progress):
            try:
                if full:
                    self.load_frames(sample)
                elif (source := source_for(sample.video)) is not None:
                    source.check(sample.video)
                else:
                    info = verify(resolve_video(sample.video, self.root))
                    short += wanted is not None and info.num_frames < wanted
            except (VideoError, ValueError) as e:
                found.append(self._bad_row(sample, e))
            else:
                keep.append(sample)
        if short:
            log.warning(
                "%d of %d videos have fewer than num_frames=%d frames: each gives all the frames it has",
                short, len(self.samples), wanted,
            )
        if found and not self.skip_bad:
            listed = "\n".join(str(b) for b in found[:5])
            raise VideoError(f"{len(found)} of {len(self.samples)} videos are unreadable:\n{listed}")
        if found:
            log.warning(
                "dropped %d of %d samples with unreadable videos; first: %s", len(found), len(self), found[0]
            )
            self.samples = keep
            self.bad.extend(found)
        return found

    def _bad_row(self, sample: Sample, error: Exception) -> BadRow:
        file, line = self._origin[sample.id]
        return BadRow(file, line, str(error).removeprefix(f"{file}:{line}: "))
