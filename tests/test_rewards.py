"""Reward functions, user-function loading, and the weighted suite."""

import math
import textwrap

import pytest
import torch

from longvid.errors import ConfigError
from longvid.rl.rewards import (
    RewardError,
    RewardSuite,
    accuracy_reward,
    combined_reward,
    completion_text,
    format_reward,
    load_reward_function,
)

GOOD_B = "<think>the flag is blue and white</think>\n<answer>B</answer>"
GOOD_C = "<think>hmm</think><answer>C</answer>"
BARE_B = "The answer is B"
EMPTY = ""


def test_format_reward():
    assert format_reward([GOOD_B, GOOD_C, BARE_B, EMPTY, GOOD_B + " extra"]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_conversational_completions():
    message = [{"role": "assistant", "content": GOOD_B}]
    text_parts = [{"type": "text", "text": "<think>x</think>"}, {"type": "text", "text": "<answer>B</answer>"}]
    parts = [{"role": "assistant", "content": text_parts}]
    assert completion_text(message) == GOOD_B
    assert completion_text(parts) == "<think>x</think><answer>B</answer>"
    assert completion_text(None) == ""
    assert format_reward([message, parts]) == [1.0, 1.0]


def test_accuracy_reward_infers_kinds():
    completions = [GOOD_B, "<answer>7</answer>", "<answer>Paris</answer>"]
    got = accuracy_reward(completions, ["B", "7", "paris"], options=[["x", "y"], None, None])
    assert got == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="2 answers"):
        accuracy_reward(completions, ["B", "7"])


def test_combined_reward_default_weights():
    completions = [GOOD_B, GOOD_C, BARE_B, EMPTY]
    total, parts = combined_reward(completions, ["B"] * 4, ["choice"] * 4)
    assert parts == {"accuracy": [1.0, 0.0, 1.0, 0.0], "format": [1.0, 1.0, 0.0, 0.0]}
    # 0.9 * accuracy + 0.1 * format
    assert total == pytest.approx([1.0, 0.1, 0.9, 0.0], abs=1e-6)


def test_combined_reward_weights_override_by_key():
    total, _ = combined_reward([GOOD_C, BARE_B], ["B", "B"], ["choice", "choice"], weights={"format": 0.5})
    assert total == pytest.approx([0.5, 0.9], abs=1e-6)
    with pytest.raises(ConfigError, match="unknown"):
        combined_reward([GOOD_B], ["B"], weights={"length": 1.0})


# --- the suite ---------------------------------------------------------------------------------


def only_choice(prompts, completions, category, **kwargs):
    """A user function that applies to 'goal' questions only."""
    return [float(c.endswith("</answer>")) if cat == "goal" else None for c, cat in zip(completions, category)]


def constant_half(prompts, completions, **kwargs):
    return [0.5] * len(completions)


def test_suite_shapes_and_weighted_nansum():
    suite = RewardSuite({"goal": only_choice, "half": constant_half}, {"goal": 2.0, "half": 3.0})
    out = suite(["p"] * 3, [GOOD_B, BARE_B, GOOD_C], category=["goal", "goal", "plot"])
    assert out.per_func.shape == (3, 2) and out.per_func.dtype == torch.float32
    assert out.per_func[:, 0].tolist()[:2] == [1.0, 0.0] and math.isnan(out.per_func[2, 0])
    # TRL: nansum of weighted rewards; the None of sample 2 drops out instead of poisoning it.
    assert out.total.tolist() == pytest.approx([2 * 1 + 3 * 0.5, 2 * 0 + 3 * 0.5, 3 * 0.5])
    assert out.means() == pytest.approx({"goal": 0.5, "half": 0.5})


def test_suite_all_none_sample_gets_zero(caplog):
    suite = RewardSuite({"goal": only_choice})
    out = suite(["p"], [GOOD_B], category=["plot"])
    assert out.total.tolist() == [0.0]
    assert math.isnan(out.means()["goal"])
    assert "returned None" in caplog.text


def test_suite_default_weights_are_one():
    suite = RewardSuite({"half": constant_half, "format": format_reward})
    assert suite([None], [GOOD_B]).total.tolist() == [1.5]


def test_suite_weights_must_name_the_functions():
    with pytest.raises(ConfigError, match="missing"):
        RewardSuite({"half": constant_half, "format": format_reward}, {"half": 1.0})
    with pytest.raises(ConfigError, match="finite"):
        RewardSuite({"half": constant_half}, {"half": float("nan")})
    with pytest.raises(ConfigError):
        RewardSuite({})


def test_suite_checks_column_lengths():
    suite = RewardSuite({"half": constant_half})
    with pytest.raises(ValueError, match="column 'answer'"):
        suite(["p", "p"], ["a", "b"], answer=["x"])
    with pytest.raises(ValueError, match="prompts"):
        suite(["p"], ["a", "b"])


def fails_on_boom(prompts, completions, **kwargs):
    return [1.0 / len(c.replace("boom", "")) for c in completions]  # "boom" -> division by zero


def test_raising_function_names_itself_and_the_sample():
    suite = RewardSuite({"fragile": fails_on_boom})
    with pytest.raises(RewardError, match=r"'fragile' raised on sample 1 \(id 'q7'\): ZeroDivisionError"):
        suite(["p"] * 3, ["ok", "boom", "ok"], id=["q3", "q7", "q9"])


def test_batch_only_failure_is_reported_as_such():
    def needs_one(prompts, completions, **kwargs):
        if len(completions) != 1:
            raise ValueError("one at a time")
        return [0.0]

    with pytest.raises(RewardError, match="on a batch of 3: ValueError: one at a time"):
        RewardSuite({"single": needs_one})(["p"] * 3, ["a", "b", "c"])


@pytest.mark.parametrize(
    "returned, match",
    [
        ([1.0], "returned 1 rewards for 2 completions"),
        (0.5, "not a list"),
        ("11", "not a list"),
        ([1.0, "high"], "returned a str for sample 1"),
        ([1.0, float("inf")], "returned inf for sample 1"),
    ],
)
def test_bad_returns_are_clear_errors(returned, match):
    suite = RewardSuite({"bad": lambda prompts, completions, **kw: returned})
    with pytest.raises(RewardError, match=match):
        suite(["p", "p"], ["a", "b"])


def test_tensor_numpy_and_bool_returns_are_accepted():
    import numpy as np

    suite = RewardSuite(
        {
            "tensor": lambda prompts, completions, **kw: torch.tensor([0.25, 0.75]),
            "numpy": lambda prompts, completions, **kw: [np.float64(0.5), np.int64(1)],
            "bools": lambda prompts, completions, **kw: [True, float("nan")],
        }
    )
    out = suite(["p", "p"], ["a", "b"])
    assert out.per_func[:, :2].tolist() == [[0.25, 0.5], [0.75, 1.0]]
    assert out.per_func[0, 2].item() == 1.0 and math.isnan(out.per_func[1, 2])
    assert out.total.tolist() == [1.75, 1.75]


# --- loading "module:function" -----------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            LIMIT = 3

            def short(prompts, completions, **kwargs):
                return [1.0 if len(c) <= LIMIT else 0.0 for c in completions]

            class Scorers:
                @staticmethod
                def length(prompts, completions, **kwargs):
                    return [float(len(c)) for c in completions]
            """
        )
    )
    (tmp_path / "broken_rewards.py").write_text("import not_a_real_dependency_xyz\n")
    (tmp_path / "crashing_rewards.py").write_text("raise RuntimeError('bad config at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_load_user_function(user_module):
    fn = load_reward_function("my_rewards:short")
    assert fn(prompts=[None, None], completions=["ab", "abcd"]) == [1.0, 0.0]
    assert load_reward_function("my_rewards:Scorers.length")(prompts=[None], completions=["abc"]) == [3.0]


def test_suite_from_weights_mixes_builtins_and_user_functions(user_module):
    suite = RewardSuite.from_weights({"format": 0.5, "my_rewards:short": 2.0})
    out = suite([None, None], [GOOD_B, "ab"])
    assert out.names == ("format", "my_rewards:short")
    assert out.total.tolist() == [0.5, 2.0]


def test_builtin_accuracy_reads_dataset_columns():
    suite = RewardSuite.from_weights({"accuracy": 1.0})
    out = suite([None, None], [GOOD_B, "<answer>Lima</answer>"], answer=["B", "lima"], options=[["x", "y"], []])
    assert out.total.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_such_module_xyz:f", "module 'no_such_module_xyz' not found"),
        ("my_rewards:missing", "has no attribute 'missing'"),
        ("my_rewards:LIMIT", "is a int, not callable"),
        ("broken_rewards:f", "importing 'broken_rewards' failed: No module named 'not_a_real_dependency_xyz'"),
        ("crashing_rewards:f", "RuntimeError: bad config at import"),
        ("my_rewards", "neither built in"),
        (":short", "neither built in"),
        ("a:b:c", "neither built in"),
    ],
)
def test_load_errors_are_clear(user_module, spec, match):
    with pytest.raises(ConfigError, match=match):
        load_reward_function(spec)
