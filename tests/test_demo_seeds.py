"""`longvid demo --seeds`: one demo per seed in its own folder, and their comparison in the top report."""

import json
import statistics

import pytest

from longvid.cli import main
from longvid.demo import DemoPlan, _at_chance_text, _running_mean, categories_at_chance, run_demo_seeds
from longvid.eval.mcq import EvalResult

# Seconds per seed: the recipe's every stage, at a size that proves the wiring, not the learning.
TINY = DemoPlan(16, 8, 8, 8, 2, 8, 2, 2, 1, 3e-3, 1, 1, 2, 1, (8,), 4)


def test_seeds_run_in_subfolders_and_the_report_compares_them(tmp_path):
    metrics = run_demo_seeds(tmp_path, [3, 5], progress=False, plan=TINY)
    runs = {s: json.loads((tmp_path / f"seed{s}" / "metrics.json").read_text()) for s in (3, 5)}
    assert all((tmp_path / f"seed{s}" / "report.md").is_file() for s in (3, 5))
    for stage, key in (("after SFT", "accuracy_after_sft"), ("after GRPO", "accuracy")):
        values = [runs[s][key] for s in (3, 5)]
        assert metrics["summary"][stage]["mean"] == pytest.approx(statistics.mean(values))
        assert metrics["summary"][stage]["std"] == pytest.approx(statistics.stdev(values))
    gains = [runs[s]["accuracy"] - runs[s]["accuracy_after_sft"] for s in (3, 5)]
    assert metrics["summary"]["gain"]["mean"] == pytest.approx(statistics.mean(gains))
    assert metrics["summary"]["gain"]["min"] == pytest.approx(min(gains))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    report = (tmp_path / "report.md").read_text()
    assert "| after SFT |" in report and "| after GRPO |" in report and "gain" in report
    for s in (3, 5):
        assert f"| [{s}](seed{s}/report.md) | {100 * runs[s]['accuracy_after_sft']:.1f} | {100 * runs[s]['accuracy']:.1f} |" in report
    assert (tmp_path / "accuracy_by_seed.png").stat().st_size > 1000


@pytest.mark.parametrize("seeds", ["0,0", "0,x", "-1", ""])
def test_bad_seed_lists_are_rejected_naming_the_flag(seeds, tmp_path, capsys):
    assert main(["demo", "--seeds", seeds, "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_seed_and_seeds_together_are_rejected(tmp_path, capsys):
    assert main(["demo", "--seed", "1", "--seeds", "0,1", "--out", str(tmp_path)]) == 2
    assert "not allowed with argument --seed" in capsys.readouterr().err


def test_categories_at_chance_after_every_stage_are_named():
    def result(**acc):
        return EvalResult(records=[], accuracy=0.0, chance=0.25, per_category={c: {"accuracy": a} for c, a in acc.items()})

    stages = {"after SFT": result(goal=0.30, spatial=0.25, plot=0.9), "after GRPO": result(goal=0.60, spatial=0.34, plot=0.9)}
    assert categories_at_chance(stages, 0.25) == ["spatial"]  # goal left chance after GRPO
    assert "At chance after every stage: spatial" in _at_chance_text(stages, 0.25)
    assert _at_chance_text({"after SFT": result(goal=0.5)}, 0.25) == ""


def test_running_mean_averages_the_last_window_points_and_keeps_their_steps():
    points = [(1, 0.0), (3, 1.0), (4, 0.5), (9, 0.0)]
    assert _running_mean(points, 2) == [(1, 0.0), (3, 0.5), (4, 0.75), (9, 0.25)]
    assert _running_mean(points, 10) == [(1, 0.0), (3, 0.5), (4, 0.5), (9, 0.375)]
