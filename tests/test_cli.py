"""The `longvid` command end to end on tiny data: synth → sft → eval → filter → grpo, and bad input."""

import json
import os

import pytest

from longvid.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(out), "--num", "8", "--frames", "8"]) == 0
    return out / "data.jsonl"


def test_sft_eval_filter_grpo_pipeline(data, tmp_path, capsys):
    run = tmp_path / "sft"
    common = ["--train", str(data), "--out-dir", str(run), "--set", "video.num_frames=8", "--set", "progress=false"]
    assert main(["sft", *common, "--steps", "2", "--set", "grad_accum=2"]) == 0
    ckpt = run / "checkpoints" / "step-000002" / "model"
    assert (ckpt / "model.safetensors").is_file() and (run / "tb").is_dir()
    # Resume to a later step continues from step 2, not from scratch.
    assert main(["sft", *common, "--steps", "3", "--set", "grad_accum=2", "--resume"]) == 0
    assert os.readlink(run / "checkpoints" / "latest") == "step-000003"

    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--model", str(ckpt), "--out", str(out), "--frames", "8",
                 "--max-new-tokens", "8", "--frames-scaling", "4,8"]) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["num_samples"] == 8 and summary["chance"] == pytest.approx(0.25)
    assert (out / "frames_scaling.png").stat().st_size > 0 and "| **overall** |" in (out / "eval.md").read_text()

    assert main(["data", "filter", "--data", str(data), "--model", str(ckpt), "--num", "3", "--frames", "8",
                 "--max-new-tokens", "8"]) == 0
    split_rows = sum(len(data.with_name(f"data.{s}.jsonl").read_text().splitlines()) for s in ("easy", "medium", "hard"))
    assert split_rows == 8

    grpo = tmp_path / "grpo"
    assert main(["grpo", "--train", str(data), "--model", str(ckpt), "--out-dir", str(grpo), "--steps", "1",
                 "--set", "video.num_frames=8", "--set", "group_size=2", "--set", "batch_size=1",
                 "--set", "max_new_tokens=6", "--set", "progress=false"]) == 0
    assert (grpo / "checkpoints" / "latest" / "state.pt").is_file()
    assert "drift" in capsys.readouterr().out


def test_bad_rows_fail_with_file_and_line_or_are_skipped(data, tmp_path, capsys):
    bad = data.with_name("bad.jsonl")
    rows = data.read_text().splitlines()
    broken = json.loads(rows[1])
    broken["answer"] = "Z"
    bad.write_text("\n".join([rows[0], json.dumps(broken), *rows[2:4]]) + "\n")
    args = ["sft", "--train", str(bad), "--out-dir", str(tmp_path / "r"), "--steps", "1",
            "--set", "video.num_frames=8", "--set", "progress=false", "--set", "grad_accum=1"]
    assert main(args) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main([*args, "--set", "skip_bad=true"]) == 0
    assert "1 bad rows skipped" in capsys.readouterr().out


def test_unknown_config_key_is_rejected_before_work(data, tmp_path, capsys):
    assert main(["sft", "--train", str(data), "--set", "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.learning_rate" in err and "known:" in err


def test_quick_demo_beats_chance_and_reports_the_recipe(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["chance"] == pytest.approx(0.25)
    # Clearly learned, not luck: 15 points over chance on held-out questions.
    assert metrics["accuracy"] >= metrics["chance"] + 0.15, metrics["per_category"]
    assert set(metrics["per_category"]) == {"temporal", "goal", "spatial", "plot"}
    # The filter labelled every pooled row; SFT and GRPO trained on its splits (or said why not).
    plan = metrics["plan"]
    assert sum(metrics["difficulty"].values()) == plan["filter_samples"]
    unlabelled = plan["train_samples"] - plan["filter_samples"]
    if metrics["grpo_split"] == "medium + unlabelled":
        assert metrics["difficulty"]["medium"] >= plan["min_medium"]
        assert metrics["grpo_rows"] == metrics["difficulty"]["medium"] + unlabelled
    else:  # the fallback is said, never silent
        assert metrics["grpo_split"] == "all" and metrics["grpo_rows"] == plan["train_samples"]
        assert any("GRPO trained on all" in note for note in metrics["notes"])
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "after SFT" in report and "after GRPO" in report and "| temporal |" in report
    assert "| category | easy | medium | hard | total |" in report and "Frames scaling" in report
    for note in metrics["notes"]:
        assert note in report
    per_category = {k for step in metrics["grpo"] for k in step if k.startswith("accuracy/")}
    assert per_category and per_category <= {f"accuracy/{c}" for c in metrics["categories"]}
    for png in ("sft_loss.png", "grpo_reward.png", "grpo_accuracy_by_category.png", "accuracy_by_category.png", "frames_scaling.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 1000
