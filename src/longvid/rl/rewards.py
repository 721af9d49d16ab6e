"""Reward functions for GRPO: format, accuracy, user functions, and the suite that weights them.

A reward function has TRL's signature, `f(prompts, completions, **columns) -> list[float | None]`,
and is always called with keyword arguments. `columns` are the dataset's other columns, one value
per completion (`answer`, `options`, `category`, `id`, anything in `Sample.extra`); a function
takes the ones it names and swallows the rest with `**kwargs`. `None` means "not applicable to
this sample": it becomes NaN and drops out of the weighted sum, which is TRL's
`(rewards_per_func * weights).nansum(dim=1)`; a sample where every function says None gets 0.

Long-RL's overall reward is 0.9 accuracy + 0.1 format (`DEFAULT_WEIGHTS`).
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..answers import judge, parse_response
from ..errors import ConfigError, LongvidError

logger = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float | None]]
Columns = Mapping[str, Sequence[Any]]
DEFAULT_WEIGHTS = {"accuracy": 0.9, "format": 0.1}


class RewardError(LongvidError):
    """A reward function failed or returned something unusable; names the function and sample."""


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational `[{"role", "content"}]`."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        completion = completion[-1]
    if isinstance(completion, dict):
        content = completion.get("content", "")
        if isinstance(content, list):  # multimodal message: keep the text parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return content if isinstance(content, str) else ""
    return ""


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    """1.0 for a well-formed `<think>…</think> <answer>…</answer>` response, else 0.0."""
    return [1.0 if parse_response(completion_text(c)).well_formed else 0.0 for c in completions]


def accuracy_reward(
    completions: Sequence[Any],
    answers: Sequence[str],
    kinds: Sequence[str | None] | None = None,
    options: Sequence[Sequence[str] | None] | None = None,
    *,
    rel_tol: float = 1e-3,
) -> list[float]:
    """1.0 where `answers.judge` finds the completion correct, else 0.0; `kinds`/`options` per
    completion, inferred/absent when None."""
    n = len(completions)
    kinds = kinds if kinds is not None else [None] * n
    options = options if options is not None else [None] * n
    if not len(answers) == len(kinds) == len(options) == n:
        raise ValueError(
            f"accuracy_reward got {n} completions, {len(answers)} answers, "
            f"{len(kinds)} kinds, {len(options)} options"
        )
    return [
        float(judge(completion_text(c), a, o, k, rel_tol=rel_tol).correct)
        for c, a, k, o in zip(completions, answers, kinds, options)
    ]


def _accuracy_from_columns(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **columns: Any
) -> list[float]:
    """`accuracy_reward` reading the dataset columns `answer`, `options` and (optional) `kind`."""
    return accuracy_reward(completions, answer, columns.get("kind"), columns.get("options"))


BUILTIN_REWARDS: dict[str, RewardFn] = {"accuracy": _accuracy_from_columns, "format": format_reward}


def load_reward_function(spec: str) -> RewardFn:
    """A built-in name ("accuracy", "format") or a user function given as "module:function"."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise ConfigError(
            f"reward function {spec!r} is neither built in ({', '.join(BUILTIN_REWARDS)}) nor 'module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"reward function {spec!r}: module {module_name!r} not found (is its directory on PYTHONPATH?)"
            ) from exc
        raise ConfigError(f"reward function {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(
            f"reward function {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"reward function {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"reward function {spec!r} is a {type(obj).__name__}, not callable")
    return obj


@dataclass(frozen=True)
class RewardOutput:
    """Rewards of N completions under K functions; NaN marks "not applicable"."""

    names: tuple[str, ...]
    per_func: torch.Tensor  # [N, K] float32
    weights: torch.Tensor  # [K]
    total: torch.Tensor  # [N] weighted nansum

    def means(self) -> dict[str, float]:
        """Mean of each function over the samples it applies to (NaN if none), for logging."""
        return {name: torch.nanmean(self.per_func[:, k]).item() for k, name in enumerate(self.names)}


class RewardSuite:
    """Named reward functions with weights; call it like a TRL reward function."""

    def __init__(self, funcs: Mapping[str, RewardFn], weights: Mapping[str, float] | None = None) -> None:
        if not funcs:
            raise ConfigError("a reward suite needs at least one reward function")
        self.funcs = dict(funcs)
        if weights is None:
            weights = {name: 1.0 for name in self.funcs}  # TRL: equal weights of 1.0
        missing, unknown = set(self.funcs) - set(weights), set(weights) - set(self.funcs)
        if missing or unknown:
            raise ConfigError(
                f"reward weights must name exactly the reward functions {sorted(self.funcs)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        for name, weight in weights.items():
            if not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ConfigError(f"reward weight of {name!r} must be a finite number, got {weight!r}")
        self.names = tuple(self.funcs)
        self.weights = torch.tensor([float(weights[name]) for name in self.names], dtype=torch.float32)

    @classmethod
    def from_weights(cls, weights: Mapping[str, float]) -> "RewardSuite":
        """Build from `{name or "module:function": weight}`, e.g. a config's reward section."""
        return cls({spec: load_reward_function(spec) for spec in weights}, weights)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> RewardOutput:
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} completions")
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {key!r} has {len(values)} values for {n} completions")
        rows = [self._run(name, prompts, completions, columns) for name in self.names]
        per_func = torch.tensor(rows, dtype=torch.float32).reshape(len(self.names), n).T
        all_none = torch.isnan(per_func).all(dim=1)
        if all_none.any():
            first = int(all_none.nonzero()[0])
            logger.warning(
                "every reward function returned None for %d sample(s), e.g. index %d; their reward is 0",
                int(all_none.sum()), first,
            )
        total = torch.nansum(per_func * self.weights, dim=1)
        return RewardOutput(self.names, per_func, self.weights, total)

    def _run(self, name: str, prompts: Sequence[Any], completions: Sequence[Any], columns: Columns) -> list[float]:
        fn = self.funcs[name]
        try:
            values = fn(prompts=prompts, completions=completions, **columns)
        except Exception as exc:
            index = self._failing_index(fn, prompts, completions, columns)
            where = (
                f"on sample {index}{_sample_id(columns, index)}"
                if index is not None
                else f"on a batch of {len(completions)}"
            )
            raise RewardError(f"reward function {name!r} raised {where}: {type(exc).__name__}: {exc}") from exc
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise RewardError(
                f"reward function {name!r} returned a {type(values).__name__}, not a list of rewards"
            )
        if len(values) != len(completions):
            raise RewardError(
                f"reward function {name!r} returned {len(values)} rewards for {len(completions)} completions"
            )
        return [_reward_value(name, i, v, columns) for i, v in enumerate(values)]

    @staticmethod
    def _failing_index(
        fn: RewardFn, prompts: Sequence[Any], completions: Sequence[Any], columns: Columns
    ) -> int | None:
        """Re-run sample by sample (only after a failure) to name the first sample that fails."""
        for i in range(len(completions)):
            try:
                fn(prompts=[prompts[i]], completions=[completions[i]], **{k: [v[i]] for k, v in columns.items()})
            except Exception:
                return i
        return None


def _sample_id(columns: Columns, index: int) -> str:
    return f" (id {columns['id'][index]!r})" if "id" in columns else ""


def _reward_value(name: str, index: int, value: Any, columns: Columns) -> float:
    if value is None:
        return math.nan
    if isinstance(value, numbers.Real):  # bool, int, float, numpy scalars
        value = float(value)
        if math.isinf(value):
            raise RewardError(
                f"reward function {name!r} returned {value} for sample {index}{_sample_id(columns, index)}"
            )
        return value  # an explicit NaN reads as None: not applicable
    raise RewardError(
        f"reward function {name!r} returned a {type(value).__name__} "
        f"for sample {index}{_sample_id(columns, index)}; expected a number or None"
    )


def combined_reward(
    completions: Sequence[Any],
    answers: Sequence[str],
    kinds: Sequence[str | None] | None = None,
    options: Sequence[Sequence[str] | None] | None = None,
    weights: Mapping[str, float] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Long-RL's reward: weighted accuracy + format. Returns (total, {component: values}).

    `weights` overrides `DEFAULT_WEIGHTS` (0.9 accuracy, 0.1 format) key by key.
    """
    n = len(completions)
    funcs = {name: BUILTIN_REWARDS[name] for name in DEFAULT_WEIGHTS}
    suite = RewardSuite(funcs, {**DEFAULT_WEIGHTS, **(weights or {})})
    out = suite(
        [None] * n, completions, answer=answers,
        kind=kinds if kinds is not None else [None] * n,
        options=options if options is not None else [None] * n,
    )
    return out.total.tolist(), {name: out.per_func[:, k].tolist() for k, name in enumerate(out.names)}
