"""The lmms-eval plugin, driven the way lmms-eval drives a "simple" model.

Run against the real lmms-eval when it is importable (its registry finds us through the
`lmms_eval.models` entry point), and always against a stand-in of the few lmms-eval pieces a
simple model touches (`lmms`, `Instance`, `ModelManifest`), written from lmms-eval 0.7.3's source:
lmms-eval requires torchvision and av<16, which this CPU environment must not install.
"""

import dataclasses
import importlib
import sys
import types

import numpy as np
import pytest
import torch

from longvid.errors import ConfigError, VideoError
from longvid.model.sampling import SamplingConfig
from longvid.respond import respond_to_prompt
from longvid.video.decode import decode, encode_mp4

try:
    import lmms_eval.api.model  # noqa: F401

    HAVE_LMMS = True
except ImportError:
    HAVE_LMMS = False


def _standin_modules() -> dict[str, types.ModuleType]:
    """lmms_eval.api.model.lmms, lmms_eval.api.instance.Instance, registry_v2.ModelManifest, reduced."""

    class lmms:
        is_simple = True

        def __init__(self):
            self._rank, self._world_size, self.task_dict = 0, 1, {}

        @classmethod
        def create_from_arg_string(cls, arg_string, additional_config=None):
            def value(v):  # lmms_eval.utils.handle_arg_string
                if v.lower() in ("true", "false"):
                    return v.lower() == "true"
                if v.isnumeric():
                    return int(v)
                try:
                    return float(v)
                except ValueError:
                    return v

            args = {k: value(v) for k, v in (a.split("=", 1) for a in arg_string.split(",") if a)}
            return cls(**args, **{k: v for k, v in (additional_config or {}).items() if v is not None})

    @dataclasses.dataclass
    class Instance:
        request_type: str
        arguments: tuple
        idx: int
        metadata: dict = dataclasses.field(default_factory=dict)
        resps: list = dataclasses.field(default_factory=list)
        task_name: str = None
        doc_id: str = None
        repeats: str = None

        def __post_init__(self):
            self.task_name, self.doc_id, self.repeats = self.metadata["task"], self.metadata["doc_id"], self.metadata["repeats"]

        @property
        def args(self):
            return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)

    @dataclasses.dataclass(frozen=True)
    class ModelManifest:
        model_id: str
        simple_class_path: str | None = None
        chat_class_path: str | None = None
        aliases: tuple = ()

    mods = {name: types.ModuleType(name) for name in
            ("lmms_eval", "lmms_eval.api", "lmms_eval.api.model", "lmms_eval.api.instance", "lmms_eval.models",
             "lmms_eval.models.registry_v2")}
    mods["lmms_eval.api.model"].lmms = lmms
    mods["lmms_eval.api.instance"].Instance = Instance
    mods["lmms_eval.models.registry_v2"].ModelManifest = ModelManifest
    return mods


@pytest.fixture(params=["real", "stand-in"])
def api(request, monkeypatch):
    """(plugin module, Instance class, lmms base class) under the real lmms-eval or the stand-in."""
    if request.param == "real":
        if not HAVE_LMMS:
            pytest.skip("lmms-eval is not installed (its dependencies include torchvision)")
    else:
        for name in [m for m in sys.modules if m == "lmms_eval" or m.startswith("lmms_eval.")]:
            monkeypatch.delitem(sys.modules, name)
        for name, module in _standin_modules().items():
            monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "longvid.eval.lmms", raising=False)
    plugin = importlib.import_module("longvid.eval.lmms")
    yield plugin, sys.modules["lmms_eval.api.instance"].Instance, sys.modules["lmms_eval.api.model"].lmms
    sys.modules.pop("longvid.eval.lmms", None)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    pixels = np.random.default_rng(0).integers(0, 255, (8, 56, 56, 3), dtype=np.uint8)
    return encode_mp4(tmp_path_factory.mktemp("lmms") / "clip.mp4", pixels, 2.0)


def _request(Instance, kind, first, second, doc_id=0):
    return Instance(kind, (first, second, lambda doc: [doc["video"]], doc_id, "toy", "test"), idx=0,
                    metadata={"task": "toy", "doc_id": doc_id, "repeats": 1})


def _model(plugin, video, args="frames=4,size=56,max_new_tokens=6"):
    model = plugin.LongvidLMM.create_from_arg_string(args, {"batch_size": 1, "device": None})
    model.task_dict = {"toy": {"test": {0: {"video": str(video)}}}}
    return model


def test_generate_until_answers_like_respond(api, video):
    plugin, Instance, lmms = api
    model = _model(plugin, video)
    assert isinstance(model, lmms) and model.is_simple
    context = "What colour is the screen?\nA. red\nB. blue\nAnswer with the option's letter."
    out = model.generate_until([_request(Instance, "generate_until", context, {"max_new_tokens": 6, "do_sample": False})])
    frames = decode(video, num_frames=4, size=(56, 56))
    expected = respond_to_prompt(model.adapter, context, frames, 1, SamplingConfig(max_new_tokens=6, temperature=0))[0]
    assert out == [expected] and isinstance(expected, str)
    if expected.strip():
        stop = expected.strip()[-1]
        cut = model.generate_until([_request(Instance, "generate_until", context, {"max_new_tokens": 6, "until": [stop]})])
        assert cut == [expected.split(stop, 1)[0]]


def test_loglikelihood_marks_the_greedy_continuation(api, video):
    plugin, Instance, _ = api
    model = _model(plugin, video)
    adapter = model.adapter
    context = "Describe the video."
    frames = decode(video, num_frames=4, size=(56, 56))
    greedy = respond_to_prompt(adapter, context, frames, 1, SamplingConfig(max_new_tokens=3, temperature=0))[0]
    requests = [_request(Instance, "loglikelihood", context, greedy), _request(Instance, "loglikelihood", context, lambda doc: " zebra")]
    (lp_greedy, is_greedy), (lp_other, _) = model.loglikelihood(requests)
    if adapter.decode(adapter.response_ids(greedy)[:-1]) == greedy and greedy:
        assert is_greedy
    assert lp_greedy <= 0 and lp_other <= 0 and np.isfinite([lp_greedy, lp_other]).all()
    # The score is the sum of per-token log-probs of the continuation after the prompt.
    ids = adapter.response_ids(" zebra")[:-1]
    visual = adapter.encode(adapter.preprocess(frames.pixels, frames.timestamps))
    embeds, positions = adapter.prefix_inputs(adapter.build_prompt(context, visual), visual)
    total = 0.0
    with torch.no_grad():
        for i, token in enumerate(ids):
            seq = torch.cat([embeds, adapter.embed_tokens(ids[:i])]) if i else embeds
            pos = torch.cat([positions, adapter.continuation_positions(positions, i)], dim=-1) if i else positions
            hidden, _ = adapter.hidden_states(seq[None], pos.unsqueeze(-2))
            total += torch.log_softmax(adapter.logits(hidden[0, -1]).float(), -1)[token].item()
    assert lp_other == pytest.approx(total, abs=1e-4)


def _checkpoint(folder, summary_window=None):
    from longvid.config import ModelConfig
    from longvid.model import load_adapter
    from longvid.model.compress import SummaryTokens

    adapter = load_adapter(ModelConfig())
    adapter.save_pretrained(folder)
    if summary_window:
        SummaryTokens.from_adapter(adapter, ratios=[2], window=summary_window).save(folder)
    return folder


def test_compress_ratio_answers_with_the_trained_summary_tokens(api, video, tmp_path):
    from longvid.model import load_adapter
    from longvid.config import ModelConfig
    from longvid.model.compress import Compressor, SummaryTokens

    plugin, Instance, _ = api
    ckpt = _checkpoint(tmp_path / "ckpt", summary_window=4)
    model = _model(plugin, video, f"pretrained={ckpt},frames=4,size=56,compress_ratio=2")
    assert model.compressor is not None and model.compressor.ratio == 2
    context = "What happens?"
    out = model.generate_until([_request(Instance, "generate_until", context, {"max_new_tokens": 5})])
    adapter = load_adapter(ModelConfig(path=str(ckpt)))
    compressor = Compressor(SummaryTokens.load(ckpt, adapter).attach(adapter), 2)
    frames = decode(video, num_frames=4, size=(56, 56))
    config = SamplingConfig(max_new_tokens=5, temperature=0)
    assert out == respond_to_prompt(adapter, context, frames, 1, config, compressor=compressor)
    with pytest.raises(ConfigError, match="loglikelihood with compress_ratio"):
        model.loglikelihood([_request(Instance, "loglikelihood", context, " A")])


def test_bad_model_args_and_videos_are_refused(api, video, tmp_path):
    plugin, Instance, _ = api
    with pytest.raises(ConfigError, match="compress_ratio=4 needs pretrained=CKPT"):
        plugin.LongvidLMM.create_from_arg_string("frames=4,compress_ratio=4")
    with pytest.raises(ConfigError, match="no summary-token parameters"):
        plugin.LongvidLMM.create_from_arg_string(f"pretrained={_checkpoint(tmp_path / 'plain')},compress_ratio=4")
    with pytest.raises(ConfigError, match="unknown longvid model_args: colour"):
        plugin.LongvidLMM.create_from_arg_string("frames=4,colour=red")
    model = _model(plugin, video, f"frames=4,size=56,video_root={tmp_path}")
    with pytest.raises(VideoError, match="outside video_root"):
        model.generate_until([_request(Instance, "generate_until", "q", {})])
    model.task_dict["toy"]["test"][0] = {"video": "https://example.com/v.mp4"}
    with pytest.raises(VideoError, match="not a local file"):
        model.generate_until([_request(Instance, "generate_until", "q", {})])


@pytest.mark.skipif(not HAVE_LMMS, reason="lmms-eval is not installed (its dependencies include torchvision)")
def test_lmms_eval_registry_finds_the_plugin_through_its_entry_point(tmp_path, monkeypatch):
    """lmms-eval's own registry, reading entry points as installed packages declare them."""
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    dist = tmp_path / "longvid_plugin_test-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: longvid-plugin-test\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\nlongvid = longvid.eval.lmms:manifest\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    cls = registry.get_model_class("longvid")
    assert cls.__name__ == "LongvidLMM" and issubclass(cls, lmms)


def test_pyproject_declares_the_entry_point_and_extra():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["lmms_eval.models"] == {"longvid": "longvid.eval.lmms:manifest"}
    assert any(dep.startswith("lmms-eval") for dep in project["optional-dependencies"]["lmms"])
