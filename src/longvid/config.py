"""Typed configs: dataclasses loaded from YAML, overridden from the command line, validated early.

An unknown key, a value of the wrong type or an impossible value is a `ConfigError` naming the
key, raised before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError
from .video.decode import MAX_FRAMES

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None


class Validated:
    """Config dataclasses validate themselves on construction, from YAML or from Python alike."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        pass


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) then `key.sub=value` overrides (values parsed as YAML scalars)."""
    return from_dict(cls, config_data(path, overrides))


def config_data(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw nested dict a YAML file and `key.sub=value` overrides spell, before typing."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config file ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys, got a {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
    return data


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" as a string.
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # .inf and .nan are valid YAML floats, and no longvid setting means anything with them.
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if hint in (int, float, str, bool):
        if isinstance(value, bool) and hint is not bool:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


@dataclasses.dataclass
class ModelConfig(Validated):
    """Which model: a local checkpoint folder, or the embedded tiny default when `path` is None."""

    path: str | None = None
    # "auto": bfloat16 on a GPU, float32 on the CPU.
    dtype: typing.Literal["auto", "float32", "bfloat16", "float16", "float64"] = "auto"
    # "auto": this process's GPU (cuda:LOCAL_RANK) when there is one, else the CPU.
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    seed: int = 0  # initialisation of the tiny default

    def validate(self) -> None:
        if self.path is not None:
            from .model.folder import check_model_folder

            check_model_folder(self.path, what="model.path")


@dataclasses.dataclass
class VideoConfig(Validated):
    """How frames are sampled from each video and resized."""

    num_frames: int | None = 32
    fps: float | None = None
    max_frames: int = 512
    size: int | None = 56  # square side in pixels; None keeps the decoded size
    encode_chunk: int | None = None  # temporal patches per vision-tower call (bounds memory)

    def validate(self) -> None:
        if self.num_frames is None and self.fps is None:
            raise ConfigError("video: set num_frames or fps")
        if self.num_frames is not None and self.fps is not None:
            raise ConfigError(
                f"video.num_frames={self.num_frames} and video.fps={self.fps} are both set: sample by one of them "
                "(e.g. --set video.num_frames=null to sample by fps)"
            )
        if self.num_frames is not None and self.num_frames <= 0:
            raise ConfigError(f"video.num_frames must be > 0, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"video.fps must be > 0, got {self.fps}")
        if not 0 < self.max_frames <= MAX_FRAMES:
            raise ConfigError(f"video.max_frames must be in 1..{MAX_FRAMES}, got {self.max_frames}")
        if self.num_frames is not None and self.num_frames > MAX_FRAMES:
            raise ConfigError(f"video.num_frames must be <= {MAX_FRAMES}, got {self.num_frames}")
        if self.encode_chunk is not None and self.encode_chunk <= 0:
            raise ConfigError(f"video.encode_chunk must be > 0 (or null for one call), got {self.encode_chunk}")
        if self.size is not None and (self.size < 28 or self.size > 4096):
            raise ConfigError(f"video.size must be between 28 and 4096 pixels, got {self.size}")


@dataclasses.dataclass
class ParallelConfig(Validated):
    """Sequence parallelism: `sp` ranks share one sample (Ulysses x ring); the rest is data parallel.
    With more than one process, FSDP2 shards parameters, gradients and optimizer state over all
    of them (data x sequence-parallel ranks)."""

    sp: int = 1
    ulysses: int | None = None
    ring: int | None = None
    mode: typing.Literal["ulysses", "ring", "hybrid"] = "hybrid"
    layout: typing.Literal["contiguous", "zigzag"] = "zigzag"
    fsdp: bool = True  # only with more than one process; false: replicated parameters, all-reduced gradients
    reshard_after_forward: bool = True  # FSDP frees gathered blocks after forward (ZeRO-3); false keeps them (ZeRO-2)
    activation_checkpointing: bool = False  # recompute each decoder/vision block in backward

    def validate(self) -> None:
        if self.sp < 1:
            raise ConfigError(f"parallel.sp must be >= 1, got {self.sp}")
        for name in ("ulysses", "ring"):
            value = getattr(self, name)
            if value is not None and (value < 1 or self.sp % value):
                raise ConfigError(f"parallel.{name}={value} must divide parallel.sp={self.sp}")
