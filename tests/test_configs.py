"""Every recipe in configs/ loads into its config class, and the multi-GPU examples are laid out
for the node the README runs them on (8 ranks: sequence-parallel groups that divide it, FSDP on,
bf16)."""

from pathlib import Path

import pytest

from longvid.config import load_config
from longvid.rl.trainer import GRPOConfig
from longvid.sft.trainer import SFTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINDS = {"sft": SFTConfig, "grpo": GRPOConfig}
RECIPES = sorted(CONFIGS.glob("*.yaml"))


def test_every_recipe_is_sft_or_grpo():
    assert RECIPES, f"no recipes in {CONFIGS}"
    assert all(p.name.split("_", 1)[0] in KINDS for p in RECIPES), [p.name for p in RECIPES]


def _load(path, tmp_path):
    """The recipe with what the README's command line supplies: a training file, and (for the
    examples that name a placeholder checkpoint) no model path, so every other key is checked."""
    train = tmp_path / "train.jsonl"
    train.write_text("")
    overrides = [f"train={train}"] + (["model.path="] if "/path/to/" in path.read_text() else [])
    return load_config(KINDS[path.name.split("_", 1)[0]], path, overrides)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path, tmp_path):
    assert _load(path, tmp_path).steps > 0


@pytest.mark.parametrize("path", [p for p in RECIPES if "7b" in p.stem], ids=lambda p: p.stem)
def test_multi_gpu_recipes_fit_one_node_of_eight(path, tmp_path):
    config = _load(path, tmp_path)
    par = config.parallel
    assert par.fsdp and 8 % par.sp == 0
    assert config.model.dtype == "bfloat16"
