"""The CPU-checkable parts of bench/gpu.py: model configs, FLOP counting, peak lookup, refusal on CPU."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size,total_billions", [("3b", 3.75), ("7b", 8.29)])
def test_configs_have_the_public_checkpoints_sizes(size, total_billions):
    """Built on the meta device (no memory): the parameter count of the public Qwen2.5-VL-3B/7B."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from longvid.model.tiny import load_tokenizer

    bench = _bench()
    config = bench.model_config(size, load_tokenizer())
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    assert total / 1e9 == pytest.approx(total_billions, abs=0.01)
    # The matmul count equals the decoder layers' Linear weights plus the LM head, counted from the module.
    linear = sum(m.weight.numel() for m in model.model.language_model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert bench.matmul_params(config) == linear + model.lm_head.weight.numel()


def test_forward_flops_match_a_hand_count():
    from longvid.model.tiny import load_tokenizer

    bench = _bench()
    config = bench.model_config("7b", load_tokenizer())
    s = 16384
    t = config.text_config
    dense = 2 * s * bench.matmul_params(config)
    attention = 2 * 2 * t.num_hidden_layers * t.hidden_size * s * s / 2
    assert bench.forward_flops(config, s) == pytest.approx(dense + attention)
    # At 16k tokens attention is a noticeable but minor share of a 7B model's FLOPs.
    assert 0.05 < attention / (dense + attention) < 0.3


def test_peak_lookup_by_device_name():
    bench = _bench()
    assert bench.peak_flops("NVIDIA H200")[1] == "H200"
    assert bench.peak_flops("NVIDIA H100 80GB HBM3")[0] == pytest.approx(989.4e12)
    assert bench.peak_flops("NVIDIA H100 PCIe")[1] == "H100 PCIe"
    with pytest.raises(SystemExit, match="no bf16 peak"):
        bench.peak_flops("Some Other GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_clearly_without_cuda():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert "needs a CUDA GPU" in run.stderr


@pytest.mark.parametrize("ranks", [1, 2])
def test_cpu_check_runs_every_part_through_the_trainers(ranks):
    """`--cpu-check` runs the script's prefill, training pass, SFT and GRPO steps on the tiny model
    (under torchrun with FSDP for 2 ranks): what a GPU run would first trip on is caught here."""
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-check"]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), *command[1:]]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["gpus"] == ranks and result["device"] == "cpu"
    single = {"prefill", "train_fwd_bwd"} if ranks == 1 else set()
    assert single | {"sft", "grpo"} <= result.keys() and "flex_vs_dense" not in result
    for part in single:
        assert result[part]["tokens_per_s"] > 0 and result[part]["mfu"] is None
    assert 0 < result["sft"]["loss"] < 20 and result["sft"]["peak_gib"] is None
    assert result["grpo"]["step_s"] > 0 and result["grpo"]["time/rollout"] > 0
