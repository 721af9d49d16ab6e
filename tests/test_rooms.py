"""Rooms import only downward: read every module's imports (lazy ones too) and check the doors."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "longvid"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the longvid modules a file imports, wherever the import statement sits."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from . import synth`
    return {m for m in found if m == "longvid" or m.startswith("longvid.")}


IMPORTS = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _reaches(module: str, room: str) -> list[str]:
    return sorted(m for m in IMPORTS[module] if m == room or m.startswith(room + "."))


# (modules, rooms they must not import)
DOORS = [
    ("longvid.video", ["longvid.model", "longvid.data", "longvid.synth", "longvid.eval", "longvid.rl", "longvid.inputs"]),
    ("longvid.data.schema", ["longvid.video", "longvid.model", "longvid.synth", "longvid.eval", "longvid.rl"]),
    ("longvid.data.dataset", ["longvid.synth", "longvid.model", "longvid.eval", "longvid.rl", "longvid.inputs"]),
    ("longvid.data.reason", ["longvid.eval", "longvid.rl", "longvid.synth", "longvid.sft"]),
    ("longvid.answers", ["longvid.data", "longvid.model", "longvid.eval", "longvid.rl", "longvid.video"]),
    ("longvid.model", ["longvid.inputs", "longvid.synth", "longvid.data", "longvid.eval", "longvid.rl", "longvid.sft"]),
    ("longvid.rl.rewards", ["longvid.eval", "longvid.data"]),
    ("longvid.rl.difficulty", ["longvid.eval", "longvid.data"]),
    ("longvid.eval", ["longvid.rl", "longvid.sft", "longvid.synth"]),
]


@pytest.mark.parametrize("room, forbidden", DOORS, ids=[d[0] for d in DOORS])
def test_room_imports_only_downward(room, forbidden):
    modules = [m for m in IMPORTS if m == room or m.startswith(room + ".")]
    assert modules, f"no module under {room}"
    wrong = {m: hits for m in modules for f in forbidden if (hits := _reaches(m, f))}
    assert not wrong, f"upward imports: {wrong}"


def test_only_the_top_imports_synth():
    importers = sorted(m for m, deps in IMPORTS.items() if _reaches(m, "longvid.synth") and not m.startswith("longvid.synth"))
    assert importers and all(m in ("longvid.demo", "longvid.demo_compress") or m == "longvid.cli" or m.startswith("longvid.cli.") for m in importers), importers
    assert {"longvid.cli", "longvid.demo"} <= set(importers)


def test_one_answer_grader():
    """Evaluation, the reward and the difficulty filter all grade through longvid.answers.judge."""
    for module in ("longvid.eval.mcq", "longvid.rl.rewards", "longvid.data.reason.filter"):
        assert "longvid.answers.judge" in IMPORTS[module], module


def test_one_import_style_inside_the_package():
    absolute = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("longvid"):
                absolute.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not absolute, f"absolute longvid imports (the package imports relatively): {absolute}"


def test_generated_videos_come_from_registered_sources(tmp_path, monkeypatch):
    """data/ renders a spec through whichever source registered its prefix, and says so when none did."""
    import numpy as np

    import longvid.synth  # noqa: F401  (registers synth:)
    from longvid.data.dataset import VideoDataset
    from longvid.data.schema import Sample
    from longvid.errors import VideoError
    from longvid.video import sources
    from longvid.video.decode import Frames

    calls = []

    def render(spec):
        calls.append(spec)
        return Frames(np.full((4, 8, 8, 3), 7, np.uint8), np.arange(4.0), spec)

    monkeypatch.setattr(sources, "_SOURCES", dict(sources._SOURCES))  # registrations end with the test
    sources.register_source("toy:", render, lambda spec: None)
    row = Sample(id="t", video="toy:anything", question="q", answer="A", category="plot", options=("x", "y"))
    data = VideoDataset([row], root=tmp_path, num_frames=2)
    assert data.load_frames(row).pixels.shape == (2, 8, 8, 3) and calls == ["toy:anything"]
    assert sources.is_generated("synth:plot?seed=1&frames=8&size=56") and not sources.is_generated("v.mp4")

    monkeypatch.setattr(sources, "_SOURCES", {})
    with pytest.raises(VideoError, match="no source is registered"):
        VideoDataset([row], root=tmp_path, num_frames=2).load_frames(row)
    with pytest.raises(ValueError, match="lower-case word and a colon"):
        sources.register_source("Toy", render, lambda spec: None)


def test_eval_reward_and_filter_grade_alike(monkeypatch):
    """The same responses score the same in evaluation, the accuracy reward and the difficulty filter."""
    from types import SimpleNamespace

    import torch

    import longvid.data.reason.filter as difficulty_filter
    import longvid.eval.mcq as mcq
    from longvid.data.schema import Sample
    from longvid.model.sampling import SamplingConfig
    from longvid.rl.rewards import accuracy_reward

    samples = [
        Sample(id="c", video="v", question="q", answer="B", category="plot", options=("Brazil", "Argentina")),
        Sample(id="n", video="v", question="q", answer="1000", category="plot"),
        Sample(id="t", video="v", question="q", answer="eiffel tower", category="plot"),
        Sample(id="w", video="v", question="q", answer="paris", category="plot"),
    ]
    texts = {"c": "<answer>Argentina</answer>", "n": "<answer>about 1,000</answer>",
             "t": "<answer>The Eiffel Tower!</answer>", "w": "<answer>Rome</answer>"}
    fake = lambda adapter, batch, frames, n, config, **kw: [[texts[s.id]] * n for s in batch]  # noqa: E731
    monkeypatch.setattr(mcq, "respond_samples", fake)
    monkeypatch.setattr(difficulty_filter, "respond_samples", fake)
    adapter = SimpleNamespace(model=torch.nn.Linear(1, 1))

    evaluated = [r.correct for r in mcq.evaluate(adapter, samples, lambda s: None, progress=False).records]
    rewarded = accuracy_reward([texts[s.id] for s in samples], [s.answer for s in samples],
                               options=[s.options or None for s in samples])
    dataset = SimpleNamespace(samples=samples, load_frames=lambda s: None)
    filtered = difficulty_filter.answer_many(adapter, dataset, 2, SamplingConfig(), progress=False)
    assert evaluated == [True, True, True, False]
    assert rewarded == [1.0, 1.0, 1.0, 0.0]
    assert filtered == [[True, True], [True, True], [True, True], [False, False]]


def test_the_command_serves_spec_datasets_without_the_caller_importing_synth(tmp_path):
    """A fresh interpreter: only `longvid.cli` is imported, and `synth:` rows still load."""
    import json
    import os
    import subprocess
    import sys

    row = {"id": "s", "video": "synth:plot?frames=8&seed=1&size=56", "question": "Which colour first?",
           "answer": "A", "category": "plot", "options": ["red", "green", "blue", "yellow"]}
    (tmp_path / "specs.jsonl").write_text(json.dumps(row) + "\n")
    code = ("import sys; from longvid.cli import main; "
            f"sys.exit(main(['eval', '--data', {str(tmp_path / 'specs.jsonl')!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--frames', '8', '--max-new-tokens', '2']))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["num_samples"] == 1
