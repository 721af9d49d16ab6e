"""Argument types and shared flags of the `longvid` command: each bad value is a parse error naming the flag."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..errors import ConfigError


def _int_at_least(low: int, high: int | None = None):
    """argparse type: an integer in low..high; the error names the value and the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"in {low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _finite_at_least(low: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _seed_list(text: str) -> list[int]:
    """argparse type for `demo --seeds`: distinct comma-separated non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def _frame_counts(text: str) -> list[int]:
    """argparse type for --frames-scaling: comma-separated positive frame counts."""
    counts = []
    for part in text.split(","):
        try:
            counts.append(_int_at_least(1, MAX_FRAMES)(part.strip()))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} in {text!r}: {e}") from None
    return counts


MAX_FRAMES = 100_000  # video.decode.MAX_FRAMES, without importing PyAV to parse arguments


POSITIVE = _int_at_least(1)


FRAMES = _int_at_least(1, MAX_FRAMES)


SIZE = _int_at_least(28, 4096)


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Shortcut flags become `key=value` overrides, applied before explicit `--set` ones."""
    out = [f"{key}={getattr(args, attr)}" for attr, key in mapping.items() if getattr(args, attr, None) is not None]
    return out + list(args.set or [])


PARALLEL_FLAGS = {
    "sp": "parallel.sp", "ulysses": "parallel.ulysses", "ring": "parallel.ring",
    "device": "model.device", "dtype": "model.dtype",
}


def _writable_folder(path: str, flag: str) -> Path:
    """Create `path` (and parents) and prove a file can be written in it, or ConfigError naming `flag`."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".longvid-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{flag}: cannot write to {folder} ({e.strerror or e})") from None
    return folder


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/N (e.g. 0/4), got {text!r}") from None
    return index, count


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _compress_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compress-ratio", type=int, default=1,
                   help="visual summary tokens: one summary per N visual tokens (1 = off; needs summary tokens beside --model)")


def _device_flags(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default,
                   help="where to compute: auto = this process's GPU (cuda:LOCAL_RANK) if any, else the CPU")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16", "float64"), default=default,
                   help="model precision: auto = bfloat16 on a GPU, float32 on the CPU")


def _parallel_flags(p: argparse.ArgumentParser) -> None:
    _device_flags(p)
    p.add_argument("--sp", type=POSITIVE, help="sequence-parallel ranks per sample (under torchrun)")
    p.add_argument("--ulysses", type=POSITIVE, help="Ulysses (all-to-all) part of --sp; the rest is ring")
    p.add_argument("--ring", type=POSITIVE, help="ring part of --sp; the rest is Ulysses")


def _run_folder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir from its latest checkpoint, with its stored config.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run out_dir holds (deletes its checkpoints, logs and config)")


def _inference_video_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=FRAMES, help="frames per video (default: as the checkpoint was trained, else 32)")
    p.add_argument("--size", type=SIZE, help="frame side in pixels (default: as the checkpoint was trained, else 56)")


def _synth_size(text: str) -> int:
    value = _int_at_least(16, 1024)(text)
    if value % 4:
        raise argparse.ArgumentTypeError(f"must be a multiple of 4, got {value}")
    return value


# Listed here so `--help` needs no import of the evaluation code; tests check it matches.
BENCHMARK_NAMES = ("videomme", "mlvu", "longvideobench", "vnbench", "longvideo_reason")
