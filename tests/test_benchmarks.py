"""Benchmark files as users download them: loaders, rejected rows, official scorers, and
`longvid eval --benchmark` end to end on the tiny model, one run per format."""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longvid.cli import BENCHMARK_NAMES, main
from longvid.data.schema import Sample
from longvid.errors import DataError
from longvid.eval.benchmarks import BENCHMARKS, load_checked
from longvid.eval.benchmarks import longvideo_reason, longvideobench, mlvu, videomme, vnbench
from longvid.video.decode import encode_mp4

# --- tiny real videos ----------------------------------------------------------------------------

_CODECS = {".webm": ("webm", "libvpx"), ".mkv": ("matroska", "libx264")}


def write_video(path: Path, seed: int = 0, frames: int = 8, size: int = 56) -> Path:
    """A short noisy video in the container its suffix names (mp4, webm or mkv)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp4":
        return encode_mp4(path, pixels, 2.0)
    fmt, codec = _CODECS[path.suffix]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(2))
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for image in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def reasons(loaded):
    return [(Path(b.file).name, b.line, b.reason) for b in loaded.bad]


def test_cli_lists_every_registered_benchmark():
    assert set(BENCHMARK_NAMES) == set(BENCHMARKS)


# --- Video-MME -----------------------------------------------------------------------------------


def videomme_row(qid, video, duration="short", answer="B", options=None, **kw):
    row = {
        "videoID": video, "duration": duration, "domain": "Knowledge", "sub_category": "Astronomy",
        "task_type": "Counting Problem", "question_id": qid, "question": "How many planets?",
        "options": options or ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": answer,
    }
    return {**row, **kw}


@pytest.fixture(scope="module")
def videomme_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    videos = root / "data"
    write_video(videos / "vid_short.mp4", 1)
    write_video(videos / "vid-long.mkv", 2)
    rows = [
        videomme_row("001-1", "vid_short"),
        videomme_row("002-1", "vid-long", duration="long", answer="D"),
        videomme_row("003-1", "vid_short", options=["A. x", "B. y", "C z", "D. w"]),  # option C malformed
        videomme_row("004-1", "vid_short", answer="E"),
        videomme_row("005-1", "missing_video"),
        videomme_row("006-1", "../data/vid_short"),  # stays inside: fine
        videomme_row("007-1", "../../outside"),  # escapes
        videomme_row("008-1", "vid_short", duration="huge"),
    ]
    data = root / "videomme" / "test-00000-of-00001.parquet"
    data.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), data)
    return data, videos


def test_videomme_loader_names_and_counts_bad_rows(videomme_files):
    data, videos = videomme_files
    loaded = videomme.load(data, videos)
    assert [s.id for s in loaded.samples] == ["001-1", "002-1", "006-1"]
    first = loaded.samples[0]
    assert first.options == ("One.", "Two.", "Three.", "Four.") and first.answer == "B"
    assert first.category == "short" and first.extra["task_type"] == "Counting Problem"
    assert loaded.samples[1].video == "vid-long.mkv"
    bad = reasons(loaded)
    assert [(f, r) for f, r, _ in bad] == [(data.name, 3), (data.name, 4), (data.name, 5), (data.name, 7), (data.name, 8)]
    assert "field 'options': option C" in bad[0][2]
    assert "field 'answer'" in bad[1][2]
    assert "field 'videoID': no video" in bad[2][2]
    assert "field 'videoID'" in bad[3][2] and "escapes" in bad[3][2]
    assert "field 'duration'" in bad[4][2]
    with pytest.raises(DataError, match=r"5 bad row\(s\) of 8"):
        load_checked(videomme.BENCHMARK, data, videos, skip_bad=False)
    assert len(load_checked(videomme.BENCHMARK, data.parent, videos, skip_bad=True).samples) == 3  # a folder works


@pytest.mark.parametrize(
    "response, letter",
    [
        ("B", "B"),
        ("The best answer is C.", "C"),
        ("The answer is (D) four", "D"),
        ("(A) One.", "A"),
        ("A dog could count them", "A"),  # the official rule: the first capital A-D anywhere
        ("i think the video shows two planets orbiting a star over there", ""),  # > 10 words, no A-D
        ("no idea", ""),
        ("", ""),
    ],
)
def test_videomme_official_extraction(response, letter):
    assert videomme.official_extract(response) == letter


def _samples(answers, categories, **extra):
    return [
        Sample(id=f"q{i}", video="v.mp4", question="q", answer=a, category=c, options=("w", "x", "y", "z"), extra=dict(extra))
        for i, (a, c) in enumerate(zip(answers, categories))
    ]


def test_videomme_unparsed_answers_leave_the_denominator():
    samples = _samples(["A", "B", "C", "D"], ["short", "short", "short", "long"])
    responses = ["A", "unsure", "B", "The best answer is D"]
    score = videomme.official(samples, responses)
    assert score["groups"]["short"] == {"correct": 1, "answered": 2, "total": 3, "accuracy": 0.5}
    assert score["groups"]["long"]["accuracy"] == 1.0
    assert score["overall"] == pytest.approx(2 / 3)  # 2 correct of 3 answered, not of 4 asked


# --- LongVideo-Reason-eval ----------------------------------------------------------------------


PROBLEM = "What happens after the man opens the door?\nA. He sits down\nB. He leaves\nC. He sings\nD. He waves"


def lvr_row(pid, video, answer="<answer>B</answer>", problem=PROBLEM, kind="temporal"):
    return {"problem_id": pid, "problem": problem, "problem_type": kind, "videos": video, "answer": answer}


@pytest.fixture(scope="module")
def lvr_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvr")
    videos = root / "videos"
    for name, seed in (("a.mp4", 3), ("b.webm", 4), ("c.mkv", 5)):
        write_video(videos / name, seed)
    rows = [
        lvr_row(1, ["a.mp4"]),
        lvr_row(2, "b.webm", kind="goal", answer="<answer>A</answer>"),
        lvr_row(3, "c.mkv", kind="plot"),
        lvr_row(4, "a.mp4", answer="<answer>E</answer>"),  # not an option
        lvr_row(5, "a.mp4", answer="B"),  # no <answer> span
        lvr_row(6, "a.mp4", problem="What happens? He leaves."),  # no options
        lvr_row(7, "a.mp4", kind="audio"),
        lvr_row(8, ["a.mp4", "b.webm"]),
    ]
    data = root / "longvideo_reason_eval.json"
    data.write_text(json.dumps(rows))
    return data, videos


def test_longvideo_reason_loader(lvr_files):
    data, videos = lvr_files
    loaded = longvideo_reason.load(data, videos)
    assert [s.id for s in loaded.samples] == ["1", "2", "3"]
    assert [s.video for s in loaded.samples] == ["a.mp4", "b.webm", "c.mkv"]
    first = loaded.samples[0]
    assert first.question == "What happens after the man opens the door?"
    assert first.options == ("He sits down", "He leaves", "He sings", "He waves") and first.answer == "B"
    bad = reasons(loaded)
    assert [r for _, r, _ in bad] == [4, 5, 6, 7, 8]
    assert "field 'answer': 'E' is not one of the problem's option letters" in bad[0][2]
    assert "field 'answer': expected" in bad[1][2]
    assert "field 'problem': no options" in bad[2][2]
    assert "field 'problem_type'" in bad[3][2]
    assert "field 'videos': expected one video, got 2" in bad[4][2]


def test_longvideo_reason_options_must_run_to_the_end():
    stem, options = longvideo_reason.split_problem("Which?\nC. a line of the question\nA. x\nB. y\n")
    assert stem == "Which?\nC. a line of the question" and options == ("x", "y")


def test_longvideo_reason_official_is_strict_and_ours_reads_letters():
    samples = _samples(["B", "B", "B", "A"], ["temporal", "temporal", "goal", "goal"])
    for s in samples:
        s.extra["gold"] = f"<answer>{s.answer}</answer>"
    responses = ["<think>…</think><answer>B</answer>", "The answer is B", "<answer> B </answer>", "<answer>A.</answer>"]
    score = longvideo_reason.official(samples, responses)
    assert score["groups"]["temporal"]["correct"] == 1  # a bare "The answer is B" has no span
    assert score["groups"]["goal"]["correct"] == 1  # "A." is not "A": strict
    assert score["overall"] == 0.5


# --- MLVU ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlvu_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlvu")
    videos = root / "video"
    write_video(videos / "1_plotQA" / "p1.mp4", 6)
    write_video(videos / "needle" / "n1.webm", 7)
    json_dir = root / "json"
    json_dir.mkdir()
    cands = ["red", "green", "blue", "yellow"]
    (json_dir / "1_plotQA.json").write_text(json.dumps([
        {"video": "p1.mp4", "question": "Which colour?", "candidates": cands, "answer": "blue"},
        {"video": "p1.mp4", "question": "Which one?", "candidates": cands, "answer": "purple"},
    ]))
    (json_dir / "9_summary.json").write_text(json.dumps([{"video": "p1.mp4", "question": "Summarize.", "answer": "…"}]))
    (json_dir / "2_needle.json").write_text(json.dumps([
        {"video": "n1.webm", "question": "What is hidden?", "candidates": cands, "answer": "red"},
        {"video": "n1.webm", "question": "What else?", "candidates": ["a", "a", "b"], "answer": "a"},
    ]))
    return json_dir, videos


def test_mlvu_loader_turns_answer_text_into_a_letter(mlvu_files):
    json_dir, videos = mlvu_files
    loaded = mlvu.load(json_dir, videos)
    assert [(s.id, s.category, s.answer, s.video) for s in loaded.samples] == [
        ("plotQA-1", "plotQA", "C", "1_plotQA/p1.mp4"),
        ("needle-1", "needle", "A", "needle/n1.webm"),
    ]
    bad = reasons(loaded)
    assert bad[0][:2] == ("1_plotQA.json", 2) and "'purple' is not among the candidates" in bad[0][2]
    assert bad[1][:2] == ("2_needle.json", 2) and "appears 2 times" in bad[1][2]


def test_mlvu_m_avg_is_the_mean_of_task_accuracies():
    samples = _samples(["A"] * 4, ["count", "count", "count", "order"])
    responses = ["A) one", "(A) one", "The answer is A", "B"]
    score = mlvu.official(samples, responses)
    assert score["groups"]["count"]["accuracy"] == pytest.approx(2 / 3)
    assert score["groups"]["order"]["accuracy"] == 0.0
    assert score["overall"] == pytest.approx((2 / 3 + 0) / 2)  # not 2/4 pooled


# --- LongVideoBench ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lvb_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvb")
    videos = root / "videos"
    write_video(videos / "x1.mp4", 8)
    five = ["one", "two", "three", "four", "five"]
    rows = [
        {"id": "x1_0", "video_path": "x1.mp4", "duration_group": 15, "question_category": "T3E", "question": "Q?",
         "candidates": five, "correct_choice": 4, "subtitle_path": "x1_en.json", "duration": 12.0},
        {"id": "x1_1", "video_path": "x1.mp4", "duration_group": 600, "question_category": "S2E", "question": "Q?",
         "candidates": five[:3], "correct_choice": 0},
        {"id": "x1_2", "video_path": "x1.mp4", "duration_group": 600, "question_category": "S2E", "question": "Q?",
         "candidates": five[:3], "correct_choice": 3},
        {"id": "x1_3", "video_path": "x1.mp4", "duration_group": 60, "question_category": "S2E", "question": "Q?",
         "candidates": five + ["six"], "correct_choice": 0},
    ]
    data = root / "lvb_val.json"
    data.write_text(json.dumps(rows))
    return data, videos


def test_longvideobench_loader(lvb_files):
    data, videos = lvb_files
    loaded = longvideobench.load(data, videos)
    assert [(s.id, s.answer, s.category, len(s.options)) for s in loaded.samples] == [("x1_0", "E", "15", 5), ("x1_1", "A", "600", 3)]
    bad = reasons(loaded)
    assert bad[0][1] == 3 and "field 'correct_choice'" in bad[0][2]
    assert bad[1][1] == 4 and "field 'candidates': has 6 entries" in bad[1][2]


def test_longvideobench_official_random_fallback_is_seeded():
    samples = _samples(["A", "B", "C"], ["15", "600", "600"])
    parsed = [longvideobench.official_extract(r, s) for r, s in zip(["The answer is A", "E", "???"], samples)]
    assert parsed[:2] == ["A", "E"] and parsed[2] in "ABCD"
    assert longvideobench.official_extract("???", samples[2]) == parsed[2]  # the same draw every time
    score = longvideobench.official(samples, ["A", "B", "C"])
    assert list(score["groups"]) == ["15", "600"] and score["overall"] == 1.0


# --- VNBench -------------------------------------------------------------------------------------


def vn_rows(video, kind, question, gold_by_try):
    return [{"video": video, "question": question, "options": ["cat", "dog", "car", "cup"], "gt_option": g,
             "type": kind, "try": t} for t, g in enumerate(gold_by_try)]


@pytest.fixture(scope="module")
def vnbench_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vnbench")
    videos = root / "videos"
    write_video(videos / "h1.mp4", 9)
    rows = vn_rows("h1.mp4", "ret_insert1", "What was inserted?", ["A", "B", "C", "D"])
    rows += vn_rows("h1.mp4", "cnt_edit1", "How many?", ["B", "B", 2, "A"])
    rows.append({**rows[0], "try": 4})
    rows.append({**rows[0], "gt_option": "F"})
    data = root / "VNBench-main-4try.json"
    data.write_text(json.dumps(rows))
    return data, videos


def test_vnbench_loader(vnbench_files):
    data, videos = vnbench_files
    loaded = vnbench.load(data, videos)
    assert len(loaded.samples) == 8
    assert [s.answer for s in loaded.samples[4:]] == ["B", "B", "C", "A"]  # index 2 reads C
    assert len({s.extra["question_key"] for s in loaded.samples}) == 2
    bad = reasons(loaded)
    assert bad[0][1] == 9 and "field 'try'" in bad[0][2]
    assert bad[1][1] == 10 and "field 'gt_option'" in bad[1][2]


def test_vnbench_counts_a_question_only_when_all_four_tries_are_right(vnbench_files):
    samples = vnbench.load(*vnbench_files).samples
    # ret: all 4 right; cnt: 3 of 4 right.
    responses = ["A. cat", "B", "The answer is C", "D", "B", "B", "C", "B"]
    score = vnbench.official(samples, responses)
    assert score["groups"]["ret_insert1"]["accuracy"] == 1.0
    assert score["groups"]["cnt_edit1"]["accuracy"] == 0.0
    assert score["overall"] == 0.5  # mean over types
    assert vnbench.official_extract("The answer is C") == "C" and vnbench.official_extract("A cup. B") == "A"
    three = vnbench.official(samples[:7], responses[:7])  # a question missing a try never counts
    assert three["incomplete"] == 1 and three["groups"]["cnt_edit1"]["accuracy"] == 0.0


# --- end to end: `longvid eval --benchmark` on the tiny model ------------------------------------


@pytest.mark.parametrize(
    "name, files, expect_bad",
    [("videomme", "videomme_files", 5), ("longvideo_reason", "lvr_files", 5), ("mlvu", "mlvu_files", 2),
     ("longvideobench", "lvb_files", 2), ("vnbench", "vnbench_files", 2)],
)
def test_eval_benchmark_end_to_end(name, files, expect_bad, request, tmp_path, capsys):
    data, videos = request.getfixturevalue(files)
    args = ["eval", "--benchmark", name, "--data", str(data), "--videos", str(videos), "--out", str(tmp_path),
            "--frames", "4", "--max-new-tokens", "4", "--limit", "4"]
    assert main(args) == 2  # bad rows fail by default, named
    assert "bad row(s)" in capsys.readouterr().err
    assert main([*args, "--skip-bad"]) == 0
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert report["benchmark"] == name and report["num_bad"] == expect_bad
    assert report["num_evaluated"] == len(report["records"]) > 0
    assert all(isinstance(r["response"], str) for r in report["records"])
    assert 0.0 <= report["official"]["overall"] <= 1.0 and report["official"]["groups"]
    assert 0.0 <= report["ours"]["accuracy"] <= 1.0
    assert all(b["file"] and b["line"] and "field" in b["reason"] for b in report["bad"])
    md = (tmp_path / f"{name}.md").read_text()
    assert "| **overall** |" in md and f"{expect_bad} rejected" in md
    # The official score recomputed from the recorded responses is the reported one.
    bench = BENCHMARKS[name]
    loaded = load_checked(bench, data, videos, skip_bad=True)
    by_id = {s.id: s for s in loaded.samples}
    samples = [by_id[r["id"]] for r in report["records"]]
    assert bench.official(samples, [r["response"] for r in report["records"]])["overall"] == report["official"]["overall"]


def test_eval_benchmark_needs_videos(videomme_files, capsys):
    data, _ = videomme_files
    assert main(["eval", "--benchmark", "videomme", "--data", str(data)]) == 2
    assert "--videos" in capsys.readouterr().err
