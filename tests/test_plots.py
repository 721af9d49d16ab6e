"""Plots people can read, checked on the figure objects: ticks, limits, titles, labels, chance line."""

from longvid.eval.plots import category_bars_figure, curves_figure, frames_scaling_figure, plot_frames_scaling


def _rendered(fig):
    fig.draw_without_rendering()  # tick locators and layout run at draw time
    return fig.axes[0]


def test_step_axes_have_integer_ticks_and_every_chart_is_titled():
    ax = _rendered(curves_figure({"loss": [(1, 3.0), (2, 2.5), (3, 2.4)]}, title="CoT-SFT loss", ylabel="loss (nats/token)"))
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # before: 1.5, 2.5
    assert ax.get_title() == "CoT-SFT loss" and "step" in ax.get_xlabel() and ax.get_ylabel() == "loss (nats/token)"


def test_frames_scaling_is_linear_with_the_counts_as_ticks_and_a_full_accuracy_axis(tmp_path):
    points = {"model": [(32, 0.22), (8, 0.21), (16, 0.24), (64, 0.23)]}
    ax = _rendered(frames_scaling_figure(points, chance=0.25))
    assert ax.get_xscale() == "linear"  # before: log2, labelled 2^3, 2^4
    assert list(ax.get_xticks()) == [8, 16, 32, 64]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16", "32", "64"]
    assert ax.get_ylim() == (0, 100)  # before: zoomed to 20-25 %
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert chance and list(chance[0].get_ydata()) == [25, 25]
    assert ax.get_title() and ax.get_xlabel() == "frames per video" and ax.get_ylabel() == "accuracy (%)"
    model = [line for line in ax.get_lines() if line.get_label() == "model"][0]
    assert list(model.get_xdata()) == [8, 16, 32, 64]  # drawn in order of frames
    assert plot_frames_scaling(points, tmp_path / "f.png", chance=0.25).stat().st_size > 1000


def test_category_bars_have_a_title_a_full_axis_and_the_chance_line():
    ax = _rendered(category_bars_figure({"after SFT": {"temporal": 0.5, "count": 0.3}}, chance=0.25))
    assert ax.get_title() == "Accuracy by category"  # before: none
    assert ax.get_ylim() == (0, 100) and ax.get_ylabel() == "accuracy (%)" and ax.get_xlabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["count", "temporal"]
    assert any(line.get_label().startswith("chance") for line in ax.get_lines())
    assert sorted(round(p.get_height()) for p in ax.patches) == [30, 50]
