"""Devices and the attention choice: the CUDA-branch mask (a FlexAttention BlockMask) is always
paired with an attention implementation that takes it, and gives the dense path's numbers."""

import pytest
import torch

from helpers import exact_float64_norms
from longvid.config import ModelConfig
from longvid.device import resolve_device, resolve_dtype
from longvid.errors import ConfigError
from longvid.masks import shared_prefix
from longvid.model import load_adapter
from longvid.parallel.apply import SequenceParallel
from longvid.parallel.attention import FLEX_ATTENTION, attention_for
from longvid.parallel.mesh import Mesh


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("float64", torch.device("cpu")) == torch.float64
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        assert Mesh.single().device == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="not one of"):
        resolve_device("tpu")


def test_load_adapter_places_the_model_on_the_device_in_the_dtype():
    adapter = load_adapter(ModelConfig(dtype="float64", device="cpu"))
    assert {p.device.type for p in adapter.model.parameters()} == {"cpu"}
    assert {p.dtype for p in adapter.model.parameters()} == {torch.float64}


def _packed_case(adapter):
    g = torch.Generator().manual_seed(0)
    seg = torch.tensor([0] * 9 + [1] * 4 + [2] * 3)
    embeds = torch.randn(len(seg), adapter.hidden_size, generator=g, dtype=torch.float64)
    positions = torch.cat([torch.arange(9), torch.arange(9, 13), torch.arange(9, 12)]).expand(3, -1)
    return embeds, positions, shared_prefix(seg)


def test_default_choice_on_cpu_is_dense_for_the_models_own_attention():
    name, mask = attention_for(shared_prefix(torch.tensor([0, 0, 1, 2])), 4, torch.device("cpu"))
    assert name is None and mask.dtype == torch.bool and mask.shape == (1, 1, 4, 4)


def test_block_mask_goes_with_flex_attention_and_equals_the_dense_path():
    """Force the CUDA branch on the CPU: a BlockMask built on the CPU, run through the registered
    FlexAttention function (eager flex; forward only — flex backward is not implemented on CPU)."""
    from torch.nn.attention.flex_attention import BlockMask

    adapter = load_adapter(ModelConfig(seed=1, dtype="float64", device="cpu"))
    embeds, positions, mask_fn = _packed_case(adapter)
    name, block = attention_for(mask_fn, len(embeds), torch.device("cpu"), flex=True)
    assert name == FLEX_ATTENTION and isinstance(block, BlockMask)
    with exact_float64_norms(), torch.no_grad():
        _, dense = attention_for(mask_fn, len(embeds), torch.device("cpu"))
        want = adapter.hidden_states(embeds[None], positions.unsqueeze(-2), attention_mask=dense)[0]
        with adapter.language_attention(name):
            got = adapter.hidden_states(embeds[None], positions.unsqueeze(-2), attention_mask=block)[0]
        # The pairing matters: the model's own SDPA refuses a BlockMask.
        with pytest.raises(TypeError, match="BlockMask"):
            adapter.hidden_states(embeds[None], positions.unsqueeze(-2), attention_mask=block)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_flex_attention_rejects_a_dense_mask():
    adapter = load_adapter(ModelConfig(seed=1, dtype="float64", device="cpu"))
    embeds, positions, mask_fn = _packed_case(adapter)
    name, _ = attention_for(mask_fn, len(embeds), torch.device("cpu"), flex=True)
    _, dense = attention_for(mask_fn, len(embeds), torch.device("cpu"))
    with torch.no_grad(), adapter.language_attention(name), pytest.raises(ConfigError, match="needs a BlockMask"):
        adapter.hidden_states(embeds[None], positions.unsqueeze(-2), attention_mask=dense)


def test_single_process_packed_pass_uses_the_choice():
    """SequenceParallel on a mesh of one runs the packed (shared-prefix) mask through `attention_for`."""
    adapter = load_adapter(ModelConfig(seed=1, dtype="float64", device="cpu"))
    embeds, positions, mask_fn = _packed_case(adapter)
    sp = SequenceParallel(adapter, Mesh.single("cpu"))
    with exact_float64_norms():
        hidden = sp.hidden_states(embeds, positions, mask_fn)
        _, dense = attention_for(mask_fn, len(embeds), torch.device("cpu"))
        want = adapter.hidden_states(embeds[None], positions.unsqueeze(-2), attention_mask=dense)[0][0]
    torch.testing.assert_close(hidden, want, atol=0, rtol=0)


def test_device_and_dtype_flags_reach_the_model_config():
    from longvid.cli import PARALLEL_FLAGS, _overrides, build_parser
    from longvid.config import load_config
    from longvid.sft.trainer import SFTConfig

    args = build_parser().parse_args(["sft", "--train", __file__, "--device", "cpu", "--dtype", "float64"])
    config = load_config(SFTConfig, None, _overrides(args, {"train": "train", **PARALLEL_FLAGS}))
    assert (config.model.device, config.model.dtype) == ("cpu", "float64")
    args = build_parser().parse_args(["sft", "--train", __file__])
    config = load_config(SFTConfig, None, _overrides(args, {"train": "train", **PARALLEL_FLAGS}))
    assert (config.model.device, config.model.dtype) == ("auto", "auto")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--data", "x.jsonl", "--device", "tpu"])
