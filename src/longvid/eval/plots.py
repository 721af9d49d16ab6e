"""PNG plots for reports: training curves, frames scaling, per-category accuracy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(series: dict[str, list[tuple[float, float]]], path: str | Path, *, title: str, ylabel: str) -> Path:
    """Line plot of named (x, y) series, e.g. loss or reward against step."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_frames_scaling(points: dict[str, list[tuple[int, float]]], path: str | Path, *, chance: float | None = None) -> Path:
    """Accuracy against the number of frames, one line per model stage."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in points.items():
        xs, ys = zip(*pts)
        ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("frames")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs frames")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_category_bars(results: dict[str, dict[str, float]], path: str | Path, *, chance: float | None = None) -> Path:
    """Grouped bars: per-category accuracy for each named stage (`{stage: {category: acc}}`)."""
    stages = list(results)
    cats = sorted({c for r in results.values() for c in r})
    width = 0.8 / max(1, len(stages))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, stage in enumerate(stages):
        xs = [j + i * width for j in range(len(cats))]
        ax.bar(xs, [100 * results[stage].get(c, 0.0) for c in cats], width=width, label=stage)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", label="chance")
    ax.set_xticks([j + width * (len(stages) - 1) / 2 for j in range(len(cats))], cats)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
