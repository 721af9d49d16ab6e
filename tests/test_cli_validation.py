"""No CLI input ends in a traceback: every subcommand, driven with bad arguments, exits 2 with a
message naming the argument (flag, config key, file or row), before any heavy work."""

import json
import shutil

import pytest
from safetensors.torch import save_file

from longvid.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic data, a saved tiny model, and broken variants of it."""
    import torch

    from longvid.config import ModelConfig
    from longvid.model import load_adapter
    from longvid.model.folder import TOKENIZER_FILES

    root = tmp_path_factory.mktemp("world")
    assert main(["data", "synth", "--out", str(root / "data"), "--num", "4", "--frames", "8"]) == 0
    data = root / "data" / "data.jsonl"
    rows = data.read_text().splitlines()
    long_row = {**json.loads(rows[1]), "question": "word " * 40_000}
    (root / "data" / "long.jsonl").write_text("\n".join([rows[0], json.dumps(long_row)]) + "\n")
    (root / "list.yaml").write_text("- steps: 3\n- optim: {lr: 1}\n")

    model = root / "model"
    load_adapter(ModelConfig()).save_pretrained(model)
    corrupt = root / "corrupt"
    shutil.copytree(model, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    pickled = root / "pickled"
    shutil.copytree(model, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    no_tokenizer = root / "no_tokenizer"
    shutil.copytree(model, no_tokenizer)
    for name in TOKENIZER_FILES:
        (no_tokenizer / name).unlink(missing_ok=True)
    adapter_only = root / "adapter_only"
    adapter_only.mkdir()
    (adapter_only / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None, "peft_type": "LORA"}))
    save_file({"base_model.model.x.lora_A.weight": torch.zeros(2, 2)}, str(adapter_only / "adapter_model.safetensors"))
    unwritable = root / "file_not_folder"
    unwritable.write_text("")
    return {"root": root, "data": data, "model": model, "corrupt": corrupt, "pickled": pickled,
            "no_tokenizer": no_tokenizer, "adapter_only": adapter_only, "unwritable": unwritable}


def sft(w, *extra):
    return ["sft", "--train", str(w["data"]), "--out-dir", str(w["root"] / "runs" / "sft"), "--set", "progress=false", *extra]


def eval_(w, *extra, model="model", data="data"):
    return ["eval", "--data", str(w[data]) if data == "data" else str(w["root"] / "data" / data), "--model",
            str(w[model]), "--out", str(w["root"] / "eval"), *extra]


CASES = {
    # config values: finite, in range, consistent
    "lr=inf": (lambda w: sft(w, "--set", "optim.lr=.inf"), "optim.lr: must be a finite number"),
    "lr=nan": (lambda w: sft(w, "--set", "optim.lr=.nan"), "optim.lr: must be a finite number"),
    "max_grad_norm<0": (lambda w: sft(w, "--set", "optim.max_grad_norm=-1"), "optim.max_grad_norm must be > 0"),
    "max_grad_norm=0": (lambda w: sft(w, "--set", "optim.max_grad_norm=0"), "optim.max_grad_norm must be > 0"),
    "betas>=1": (lambda w: sft(w, "--set", "optim.betas=[0.9,1.0]"), "optim.betas must be two numbers in [0, 1)"),
    "betas<0": (lambda w: sft(w, "--set", "optim.betas=[-0.1,0.9]"), "optim.betas"),
    "weight_decay<0": (lambda w: sft(w, "--set", "optim.weight_decay=-0.1"), "optim.weight_decay must be >= 0"),
    "fps+num_frames": (lambda w: sft(w, "--set", "video.fps=2"), "video.num_frames=32 and video.fps=2.0 are both set"),
    "lora dropout": (lambda w: sft(w, "--set", "lora.rank=4", "--set", "lora.dropout=1.5"), "lora.dropout"),
    "lora target": (lambda w: sft(w, "--set", "lora.rank=4", "--set", "lora.target_modules=[q_proj,qq_proj]"),
                    "lora.target_modules: 'qq_proj' match no module"),
    "yaml list": (lambda w: sft(w, "--config", str(w["root"] / "list.yaml")), "the top level must be a mapping"),
    "bad override yaml": (lambda w: sft(w, "--set", "optim.lr=[1"), "override 'optim.lr=[1'"),
    "steps=0": (lambda w: sft(w, "--steps", "0"), "argument --steps: must be >= 1, got 0"),
    "steps=x": (lambda w: sft(w, "--steps", "x"), "argument --steps: expected an integer, got 'x'"),
    "sp=0": (lambda w: sft(w, "--sp", "0"), "argument --sp: must be >= 1"),
    "resume+overwrite": (lambda w: sft(w, "--resume", "--overwrite"), "--resume and --overwrite contradict"),
    "grpo model missing": (lambda w: ["grpo", "--train", str(w["data"]), "--model", str(w["root"] / "nope")],
                           "model.path: " ),
    "grpo adapter only": (lambda w: ["grpo", "--train", str(w["data"]), "--model", str(w["adapter_only"]),
                                     "--out-dir", str(w["root"] / "runs" / "g")], "holds only a LoRA adapter"),
    "grpo temperature": (lambda w: ["grpo", "--train", str(w["data"]), "--set", "temperature=.nan"],
                         "temperature: must be a finite number"),
    # eval
    "limit=-1": (lambda w: eval_(w, "--limit", "-1"), "argument --limit: must be >= 1, got -1"),
    "limit=0": (lambda w: eval_(w, "--limit", "0"), "argument --limit: must be >= 1, got 0"),
    "scaling 8,0": (lambda w: eval_(w, "--frames-scaling", "8,0"), "argument --frames-scaling: '0' in '8,0'"),
    "scaling 8,x": (lambda w: eval_(w, "--frames-scaling", "8,x"), "argument --frames-scaling: 'x' in '8,x'"),
    "frames=0": (lambda w: eval_(w, "--frames", "0"), "argument --frames: must be in 1..100000"),
    "size=10": (lambda w: eval_(w, "--size", "10"), "argument --size: must be in 28..4096"),
    "max-new-tokens=0": (lambda w: eval_(w, "--max-new-tokens", "0"), "argument --max-new-tokens"),
    "corrupt weights": (lambda w: eval_(w, model="corrupt"), "--model: "),
    "corrupt weights named": (lambda w: eval_(w, model="corrupt"), "model.safetensors is corrupt or truncated"),
    "pickle only": (lambda w: eval_(w, model="pickled"), "holds only pickled weights (pytorch_model.bin)"),
    "no tokenizer": (lambda w: eval_(w, model="no_tokenizer"), "has no tokenizer"),
    "adapter only": (lambda w: eval_(w, model="adapter_only"), "holds only a LoRA adapter"),
    "checkpoint folder": (lambda w: eval_(w, model="root"), "is a checkpoint folder; pass its model folder"),
    "not a model folder": (lambda w: eval_(w, model="unwritable"), "--model: "),
    "row over context": (lambda w: eval_(w, data="long.jsonl"), "long.jsonl:2: the prompt ("),
    # data filter / synth
    "filter num=0": (lambda w: ["data", "filter", "--data", str(w["data"]), "--num", "0"], "argument --num: must be >= 1"),
    "filter temperature": (lambda w: ["data", "filter", "--data", str(w["data"]), "--temperature", "inf"],
                           "argument --temperature"),
    "synth num=-3": (lambda w: ["data", "synth", "--out", str(w["root"] / "s"), "--num", "-3"], "argument --num"),
    "synth size=57": (lambda w: ["data", "synth", "--out", str(w["root"] / "s"), "--size", "57"],
                      "argument --size: must be a multiple of 4, got 57"),
    "synth frames=0": (lambda w: ["data", "synth", "--out", str(w["root"] / "s"), "--frames", "0"],
                       "argument --frames: must be in 8..16384"),
    "synth unwritable": (lambda w: ["data", "synth", "--out", str(w["unwritable"] / "sub"), "--num", "1"],
                         "--out: cannot write to"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_a_message_naming_it(world, name, capsys):
    argv, expected = CASES[name]
    assert main(argv(world)) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err


def test_the_good_model_folder_passes_the_same_checks(world, capsys):
    assert main(eval_(world, "--limit", "1", "--max-new-tokens", "2", "--frames", "8")) == 0
    assert "on 1 samples" in capsys.readouterr().out


def test_eval_skip_bad_skips_a_video_that_fails_to_decode_and_keeps_the_rest(world, capsys):
    root = world["root"] / "data"
    rows = [json.loads(r) for r in world["data"].read_text().splitlines()]
    video = bytearray((root / rows[1]["video"]).read_bytes())
    video[len(video) // 2 : len(video) // 2 + 512] = bytes(range(256)) * 2  # packets intact, data garbled
    (root / "videos" / "garbled.mp4").write_bytes(bytes(video))
    rows[1]["video"] = "videos/garbled.mp4"
    (root / "garbled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "--data", str(root / "garbled.jsonl"), "--model", str(world["model"]), "--out",
            str(world["root"] / "eval_bad"), "--frames", "8", "--max-new-tokens", "2"]
    assert main(args) == 2  # without --skip-bad: named by file and line
    assert f"{root / 'garbled.jsonl'}:2: " in capsys.readouterr().err
    # Before: --skip-bad died on it too, throwing away the good rows' results, naming it "<samples>:2".
    assert main([*args, "--skip-bad", "--frames-scaling", "4,8"]) == 0
    out = capsys.readouterr().out
    assert f"on {len(rows) - 1} samples; 1 bad rows skipped" in out
    assert f"skipped: {root / 'garbled.jsonl'}:2: " in out and "garbled.mp4" in out
    summary = json.loads((world["root"] / "eval_bad" / "eval.json").read_text())
    assert summary["num_samples"] == len(rows) - 1 and len(summary["skipped"]) == 1


def test_the_parser_frame_limit_is_the_decoder_limit():
    from longvid import cli
    from longvid.video import decode

    assert cli.MAX_FRAMES == decode.MAX_FRAMES
