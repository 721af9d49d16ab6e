"""Video needle-in-a-haystack: needle placement, needle files, the grid with and without
compression, and the report (JSON, markdown, heatmap PNG)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from longvid.cli import main
from longvid.config import ModelConfig
from longvid.errors import DataError
from longvid.eval import niah
from longvid.synth import needle_haystack
from longvid.model import load_adapter
from longvid.model.compress import Compressor, SummaryTokens
from longvid.video.decode import encode_mp4


def test_insert_needle_places_frames_at_depth():
    hay = np.zeros((10, 4, 4, 3), np.uint8)
    needle = np.full((2, 4, 4, 3), 255, np.uint8)
    for depth, start in [(0.0, 0), (0.5, 4), (1.0, 8)]:
        out = niah.insert_needle(hay, needle, depth)
        assert np.flatnonzero(out.reshape(10, -1).max(1)).tolist() == [start, start + 1]
    with pytest.raises(ValueError, match="depth"):
        niah.insert_needle(hay, needle, 1.5)
    with pytest.raises(ValueError, match="does not fit"):
        niah.insert_needle(hay[:1], needle, 0.5)


def test_synthetic_item_hides_the_flash_at_the_depth():
    make = needle_haystack(size=56)
    for depth in (0.0, 1.0):
        sample, frames = make(16, depth, 0)
        assert len(frames) == 16 and sample.answer in sample.letters
        colourful = np.flatnonzero(np.ptp(frames.pixels.astype(int), axis=-1).max(axis=(1, 2)) > 40)
        assert len(colourful) and (colourful.min() < 4 if depth == 0 else colourful.max() > 11)
    # Answers are balanced over trials: a model that ignores the video scores chance.
    assert [make(16, 0.5, t)[0].answer for t in range(8)] == list("ABCDABCD")


def _needle_file(tmp_path):
    for name, colour in [("red.png", (230, 20, 20)), ("blue.png", (20, 20, 230))]:
        Image.new("RGB", (30, 20), colour).save(tmp_path / name)
    rows = [
        {"image": "red.png", "question": "What colour is the hidden frame?", "options": ["red", "blue"], "answer": "A"},
        {"image": "blue.png", "question": "What colour is the hidden frame?", "options": ["red", "blue"], "answer": "B"},
    ]
    path = tmp_path / "needles.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_video_haystack_with_image_needles(tmp_path):
    hay = np.full((24, 56, 56, 3), 120, np.uint8)
    encode_mp4(tmp_path / "hay.mp4", hay, 4.0)
    needles = niah.load_needles(_needle_file(tmp_path), size=56)
    assert len(needles) == 2 and needles[0].frames.shape == (2, 56, 56, 3)
    make = niah.video_item(tmp_path / "hay.mp4", needles, size=56)
    sample, frames = make(12, 1.0, 1)
    assert sample.answer == "B" and sample.options == ("red", "blue") and len(frames) == 12
    assert frames.pixels[-1, ..., 2].mean() > 200 and abs(int(frames.pixels[0].mean()) - 120) < 10


def test_bad_needle_rows_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "x.png", "question": "q"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        niah.load_needles(bad)
    bad.write_text(json.dumps({"image": "../x.png", "question": "q", "options": ["a", "b"], "answer": "A"}) + "\n")
    with pytest.raises(DataError, match="outside"):
        niah.load_needles(bad)


def test_grid_with_and_without_compression_and_report(tmp_path):
    adapter = load_adapter(ModelConfig(seed=0))
    summary = SummaryTokens.from_adapter(adapter, ratios=(4,), window=8).attach(adapter)
    make = needle_haystack(size=56)
    grids = [
        niah.run_grid(adapter, Compressor(None, 1), make, [8, 12], [0.0, 1.0], trials=2),
        niah.run_grid(adapter, Compressor(summary, 4), make, [8, 12], [0.0, 1.0], trials=2),
    ]
    summary.detach_hooks()
    for g in grids:
        assert len(g.records) == 8 and len(g.accuracy) == 2 and len(g.accuracy[0]) == 2
        assert g.correct == [[sum(r["correct"] for r in g.records if r["depth"] == d and r["frames"] == n) for n in g.frames] for d in g.depths]
        assert g.chance == pytest.approx(0.25)
    paths = niah.write_report(grids, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [g["ratio"] for g in data["grids"]] == [1, 4]
    assert "| depth \\ frames | 8 | 12 |" in paths["md"].read_text()
    assert Image.open(paths["png"]).size[0] > 300


def test_likelihood_answer_follows_the_scores(monkeypatch):
    """The picked letter is the argmax of the option scores (a model that always prefers C)."""
    adapter = load_adapter(ModelConfig(seed=0))
    sample, frames = needle_haystack(size=56)(8, 0.5, 0)

    def score(self, adapter, prompt, embeds, positions, candidates):
        return torch.tensor([0.0, 1.0, 5.0, 2.0])

    monkeypatch.setattr(Compressor, "score", score)
    assert niah.answer(adapter, Compressor(None, 1), sample, frames, "likelihood") == "C"


def test_cli_niah_refuses_compression_without_summary_tokens(tmp_path, capsys):
    assert main(["niah", "--frames", "8", "--depths", "0", "--trials", "1", "--ratios", "1,4", "--out", str(tmp_path)]) == 2
    assert "summary_tokens.safetensors" in capsys.readouterr().err
    assert main(["niah", "--frames", "8", "--depths", "0.5", "--trials", "1", "--ratios", "1,4",
                 "--untrained-summary", "8", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "niah.png").is_file()


def test_needle_training_rows_are_balanced_disjoint_and_fit():
    from longvid.synth import render_spec
    from longvid.synth.haystack import needle_training_rows

    rows = needle_training_rows(40, (16, 32), (2, 8, None, 64), seed=3)
    assert [r.answer for r in rows[:8]] == list("ABCDABCD") and all(r.reasoning is None for r in rows)
    assert needle_training_rows(40, (16, 32), (2, 8, None, 64), seed=3) == rows  # seeded
    eval_videos = {needle_haystack(seed=s)(n, d, t)[0].video.split("&")[0] for s in (0, 1) for n in (16, 32) for d in (0.0,) for t in range(8)}
    assert not eval_videos & {r.video.split("&")[0] for r in rows}  # no training seed is an evaluation seed
    for row in rows[:12]:
        frames = render_spec(row.video).pixels
        colourful = np.ptp(frames.astype(int), axis=-1).max(axis=(1, 2)) > 40
        length = int(row.video.split("length=")[1].split("&")[0])
        assert length <= len(frames) and colourful.sum() == max(2, length // 2 * 2)  # the flash, whole frame pairs
    whole = [r for r in rows if f"length={r.video.split('frames=')[1].split('&')[0]}" in r.video]
    assert whole  # None draws the whole video
    with pytest.raises(ValueError, match="fits"):
        needle_training_rows(4, (16,), (32,))


def test_cli_niah_names_a_bad_seed(tmp_path, capsys):
    assert main(["niah", "--frames", "8", "--depths", "0", "--trials", "1", "--seed", "5000", "--out", str(tmp_path)]) == 2
    assert "--seed" in capsys.readouterr().err
