"""PNG plots for reports: training curves, frames scaling, per-category accuracy.

Made to be read, not decoded: every chart has a title and axis labels with units; step axes have
integer ticks; frame counts are drawn on a linear axis with the counts themselves as ticks;
accuracy axes always span 0–100 % (a zoomed axis makes a flat line look like a trend) with the
chance level drawn. Each `*_figure` function builds the figure (tests inspect it); `plot_*` saves it.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def save_figure(fig: Figure, path: str | Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def _accuracy_axis(ax, chance: float | None) -> None:
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", label=f"chance ({100 * chance:.0f}%)")


def curves_figure(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    xlabel: str = "step (optimizer steps)",
) -> Figure:
    """Named (step, value) series, e.g. loss or reward against the optimizer step."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, marker="o" if len(points) < 20 else None)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return fig


def plot_curves(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    xlabel: str = "step (optimizer steps)",
) -> Path:
    return save_figure(curves_figure(series, title=title, ylabel=ylabel, ylim=ylim, xlabel=xlabel), path)


def frames_scaling_figure(points: dict[str, list[tuple[int, float]]], *, chance: float | None = None) -> Figure:
    """Accuracy (0–1 in, % drawn) against frames per video, one line per model stage."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    counts = sorted({int(n) for pts in points.values() for n, _ in pts})
    for name, pts in points.items():
        pts = sorted(pts)
        ax.plot([n for n, _ in pts], [100 * y for _, y in pts], marker="o", label=name)
    _accuracy_axis(ax, chance)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_xlabel("frames per video")
    ax.set_title("Accuracy vs frames per video")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_frames_scaling(points: dict[str, list[tuple[int, float]]], path: str | Path, *, chance: float | None = None) -> Path:
    return save_figure(frames_scaling_figure(points, chance=chance), path)


def category_bars_figure(results: dict[str, dict[str, float]], *, chance: float | None = None) -> Figure:
    """Grouped bars: per-category accuracy (0–1 in, % drawn) for each named stage (`{stage: {category: acc}}`)."""
    stages = list(results)
    cats = sorted({c for r in results.values() for c in r})
    width = 0.8 / max(1, len(stages))
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    for i, stage in enumerate(stages):
        xs = [j + i * width for j in range(len(cats))]
        ax.bar(xs, [100 * results[stage].get(c, 0.0) for c in cats], width=width, label=stage)
    _accuracy_axis(ax, chance)
    ax.set_xticks([j + width * (len(stages) - 1) / 2 for j in range(len(cats))], cats)
    ax.set_xlabel("question category")
    ax.set_title("Accuracy by category")
    ax.legend()
    return fig


def plot_category_bars(results: dict[str, dict[str, float]], path: str | Path, *, chance: float | None = None) -> Path:
    return save_figure(category_bars_figure(results, chance=chance), path)
