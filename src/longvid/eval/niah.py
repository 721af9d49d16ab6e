"""Video needle-in-a-haystack (LongVA V-NIAH, Video-XL, LongVILA): a grid of haystack length
(frames) x needle depth, accuracy per cell, with and without visual-summary compression.

A haystack is a long video sampled to N frames: our synthetic grey haystack (`synth.needle_haystack`:
the `needle` task, which also places its coloured flash) or a local video. A needle is a short run of
frames (an image repeated, or a clip) inserted at depth d (0 = start, 1 = end) with a
multiple-choice question only it answers. Each cell is scored over `trials` needles, by the
likelihood of each option's SFT-format answer with empty reasoning (`<think></think><answer>X</answer>`
after the prompt; works for any model, chance for an untrained one) or by greedy generation and
letter extraction (as `eval/mcq.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..answers import judge
from ..data.schema import Sample
from ..errors import ConfigError, DataError
from ..inputs import question_text, target_text
from ..model.adapter import VLMAdapter
from ..model.compress import Compressor
from ..model.sampling import SamplingConfig
from ..video.decode import Frames, decode

log = logging.getLogger(__name__)

SCORINGS = ("likelihood", "generate")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class Needle:
    """Frames to insert `[L, H, W, 3]` uint8 and the question only they answer."""

    frames: np.ndarray
    question: str
    options: tuple[str, ...]
    answer: str  # option letter


Item = tuple[Sample, Frames]
MakeItem = Callable[[int, float, int], Item]  # (num_frames, depth, trial) -> sample and frames


def insert_needle(haystack: np.ndarray, needle: np.ndarray, depth: float) -> np.ndarray:
    """`haystack` with `needle`'s frames replacing the frames at `depth`; same length."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"needle depth must be in [0, 1], got {depth}")
    if len(needle) > len(haystack):
        raise ValueError(f"a needle of {len(needle)} frames does not fit a haystack of {len(haystack)}")
    if needle.shape[1:] != haystack.shape[1:]:
        raise ValueError(f"needle frames are {needle.shape[1:]} but haystack frames are {haystack.shape[1:]}")
    start = round(depth * (len(haystack) - len(needle)))
    out = haystack.copy()
    out[start : start + len(needle)] = needle
    return out


def video_item(haystack: str | Path, needles: Sequence[Needle], size: int = 56) -> MakeItem:
    """A local video as the haystack; trial t uses needle t mod len(needles)."""
    if not needles:
        raise ConfigError("a video haystack needs at least one needle")
    cached: dict[int, Frames] = {}

    def make(num_frames: int, depth: float, trial: int) -> Item:
        if num_frames not in cached:
            cached[num_frames] = decode(haystack, num_frames=num_frames, size=(size, size))
        hay = cached[num_frames]
        needle = needles[trial % len(needles)]
        pixels = insert_needle(hay.pixels, needle.frames, depth)
        sample = Sample(
            id=f"niah-{num_frames}-{depth}-{trial}",
            video=str(haystack),
            question=needle.question,
            answer=needle.answer,
            category="needle",
            options=needle.options,
        )
        return sample, Frames(pixels, hay.timestamps, hay.source)

    return make


def load_needles(path: str | Path, size: int = 56, length: int = 2) -> list[Needle]:
    """Needles from a jsonl: `{"image": path (relative to the file), "question", "options", "answer"}`;
    the image is resized to the haystack's frames and repeated `length` frames."""
    from PIL import Image

    path = Path(path)
    root = path.parent.resolve()
    needles = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
            image = (root / row["image"]).resolve()
            question, options, answer = row["question"], tuple(row["options"]), row["answer"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{where}: bad needle row ({e!r}); expected image, question, options, answer") from None
        if not image.is_relative_to(root):
            raise DataError(f"{where}: image {row['image']!r} is outside {root}")
        letters = "ABCDEFGH"[: len(options)]
        if len(options) < 2 or answer not in letters:
            raise DataError(f"{where}: answer {answer!r} is not one of the option letters {letters!r}")
        try:
            pixels = np.asarray(Image.open(image).convert("RGB").resize((size, size)), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{where}: cannot read image {image}: {e}") from None
        needles.append(Needle(np.repeat(pixels[None], length, axis=0), question, options, answer))
    if not needles:
        raise DataError(f"{path}: no needles")
    return needles


@dataclasses.dataclass
class Grid:
    """Accuracy per (depth, frames) cell for one compression ratio."""

    ratio: int
    frames: list[int]
    depths: list[float]
    correct: list[list[int]]  # [depth][frames]
    trials: int
    chance: float
    records: list[dict] = dataclasses.field(default_factory=list)

    @property
    def accuracy(self) -> list[list[float]]:
        return [[c / self.trials for c in row] for row in self.correct]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy))

    def summary(self) -> dict:
        return {
            "ratio": self.ratio,
            "frames": self.frames,
            "depths": self.depths,
            "trials": self.trials,
            "accuracy": self.accuracy,
            "mean_accuracy": self.mean,
            "chance": self.chance,
        }


@torch.no_grad()
def answer(adapter: VLMAdapter, compressor: Compressor, sample: Sample, frames: Frames, scoring: str, max_new_tokens: int = 64) -> str | None:
    """The option letter the model picks for one needle question."""
    visual = adapter.encode(adapter.preprocess(frames.pixels, frames.timestamps))
    prompt = adapter.build_prompt(question_text(sample), visual)
    embeds, positions = adapter.prefix_inputs(prompt, visual)
    if scoring == "likelihood":
        blank = dataclasses.replace(sample, reasoning=None)
        candidates = [adapter.response_ids(target_text(dataclasses.replace(blank, answer=x))) for x in sample.letters]
        scores = compressor.score(adapter, prompt, embeds, positions, candidates)
        return sample.letters[int(scores.argmax())]
    out = compressor.sample(adapter, prompt, embeds, positions, 1, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0))
    return judge(adapter.decode(out.tokens[0, : int(out.lengths[0])]), sample.answer, sample.options).predicted


def run_grid(
    adapter: VLMAdapter,
    compressor: Compressor,
    make_item: MakeItem,
    frames: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    *,
    trials: int = 4,
    scoring: str = "likelihood",
    progress: bool = False,
) -> Grid:
    """Score `trials` needles in every (depth, frames) cell."""
    if scoring not in SCORINGS:
        raise ConfigError(f"unknown NIAH scoring {scoring!r}; expected one of {SCORINGS}")
    if trials <= 0 or not frames or not depths:
        raise ConfigError("NIAH needs trials > 0 and at least one frame count and one depth")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"NIAH depth must be in [0, 1], got {d}")
    adapter.model.eval()
    correct = [[0] * len(frames) for _ in depths]
    records, chance = [], []
    for i, depth in enumerate(depths):
        for j, n in enumerate(frames):
            for t in range(trials):
                sample, item_frames = make_item(n, depth, t)
                picked = answer(adapter, compressor, sample, item_frames, scoring)
                ok = picked == sample.answer
                correct[i][j] += ok
                chance.append(1 / len(sample.options))
                records.append({"frames": n, "depth": depth, "trial": t, "answer": sample.answer, "predicted": picked, "correct": ok})
            if progress:
                log.info("ratio %d depth %.2f frames %d: %d/%d", compressor.ratio, depth, n, correct[i][j], trials)
    return Grid(compressor.ratio, list(frames), list(depths), correct, trials, float(np.mean(chance)), records)


def markdown_table(grids: Sequence[Grid]) -> str:
    lines = []
    for g in grids:
        lines.append(f"**ratio {g.ratio}** ({'no compression' if g.ratio == 1 else f'{g.ratio}x'}): "
                     f"mean {100 * g.mean:.1f}% (chance {100 * g.chance:.1f}%), {g.trials} needles per cell\n")
        lines.append("| depth \\ frames | " + " | ".join(str(n) for n in g.frames) + " |")
        lines.append("|---" * (len(g.frames) + 1) + "|")
        for d, row in zip(g.depths, g.accuracy):
            lines.append(f"| {d:.2f} | " + " | ".join(f"{100 * a:.0f}" for a in row) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_heatmaps(grids: Sequence[Grid], path: str | Path) -> Path:
    """LongVA/Video-XL-style heatmaps: depth on y, frames on x, red (0%) to green (100%); one panel per ratio."""
    from matplotlib.figure import Figure

    from .plots import save_figure

    width = 1.5 + (1.2 + 0.7 * len(grids[0].frames)) * len(grids)
    fig = Figure(figsize=(width, 1.8 + 0.45 * len(grids[0].depths)), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)
    fig.suptitle("Video needle-in-a-haystack: accuracy (%) by haystack length and needle depth")
    for k, (ax, g) in enumerate(zip(axes[0], grids)):
        acc = 100 * np.array(g.accuracy)
        im = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(g.frames)), [str(n) for n in g.frames])
        ax.set_yticks(range(len(g.depths)), [f"{100 * d:.0f}%" for d in g.depths])
        ax.set_xlabel("frames")
        if k == 0:
            ax.set_ylabel("needle depth")
        ax.set_title("no compression" if g.ratio == 1 else f"{g.ratio}x compression")
        for (y, x), v in np.ndenumerate(acc):
            ax.text(x, y, f"{v:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=list(axes[0]), label="accuracy (%)")
    return save_figure(fig, path)


def write_report(grids: Sequence[Grid], out_dir: str | Path, name: str = "niah") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    paths["json"].write_text(json.dumps({"grids": [g.summary() for g in grids], "records": {g.ratio: g.records for g in grids}}, indent=1))
    paths["md"].write_text(f"# Video needle-in-a-haystack\n\n![heatmap]({paths['png'].name})\n\n" + markdown_table(grids))
    plot_heatmaps(grids, paths["png"])
    return paths
