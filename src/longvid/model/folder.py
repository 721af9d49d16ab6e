"""What a model folder holds, checked before any weight is read: each way it can be wrong has its
own message (missing, not a folder, pickle-only weights, corrupt or truncated safetensors, no
tokenizer, a LoRA adapter without a base model).

Only safetensors are loaded: `pytorch_model.bin` and other torch pickles can run code when read.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def resolve_model_path(path: str | Path) -> Path:
    """`path` with any `latest` pointer on the way followed: a symlink (what longvid writes) or the
    plain-text pointer older runs wrote (`checkpoints/latest` holding `step-000123`)."""
    out = Path()
    for part in Path(path).parts:
        out = out / part
        if part == "latest" and out.is_file() and not out.is_symlink():
            target = out.read_text().strip()
            if not target or "/" in target or target in (".", ".."):
                raise ConfigError(f"{out}: not a checkpoint pointer (holds {target[:40]!r})")
            out = out.parent / target
    return out


def check_model_folder(path: str | Path, *, what: str = "--model") -> str:
    """'full' (config.json and safetensors weights) or 'adapter' (a peft LoRA adapter); ConfigError
    naming `what`, the folder and the problem otherwise. Reads file headers only."""
    folder = resolve_model_path(path)
    if not folder.exists():
        raise ConfigError(f"{what}: {path} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"{what}: {path} is a file, not a model folder")
    if (folder / "config.json").is_file():
        _check_model_type(folder, what)
        _check_full_weights(folder, what)
        _check_tokenizer(folder, what)
        return "full"
    if (folder / "adapter_config.json").is_file():
        weights = folder / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise ConfigError(f"{what}: {folder} has adapter_config.json but no {ADAPTER_WEIGHTS}")
        check_safetensors(weights, what)
        base = adapter_base(folder, what)
        if base.get("path"):
            check_model_folder(base["path"], what=f"{what} (the base model of {folder})")
        return "adapter"
    if (folder / "model" / "config.json").is_file() or (folder / "model" / "adapter_config.json").is_file():
        raise ConfigError(f"{what}: {folder} is a checkpoint folder; pass its model folder {folder / 'model'}")
    raise ConfigError(f"{what}: {folder} is not a model folder (no config.json)")


def _check_model_type(folder: Path, what: str) -> None:
    """An unsupported family is named before anything else about the folder."""
    from . import family_adapter

    try:
        model_type = json.loads((folder / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{what}: {folder}/config.json: cannot read model_type ({e})") from None
    try:
        family_adapter(model_type)
    except ConfigError as e:
        raise ConfigError(f"{what}: {folder}: {e}") from None


def check_safetensors(file: Path, what: str) -> None:
    """Parse the file's header; safetensors checks the data it promises is all there."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError is not exported as a class to catch
        raise ConfigError(f"{what}: {file} is corrupt or truncated ({e})") from None


def adapter_base(folder: str | Path, what: str = "--model") -> dict:
    """The base model of an adapter-only folder, as {"path": folder or None (the tiny default),
    "seed": ...}: from longvid.json (longvid records it), else the local folder adapter_config.json
    names; ConfigError when neither says where the base is."""
    folder = resolve_model_path(folder)
    base = (read_model_meta(folder) or {}).get("base_model")
    if isinstance(base, dict):
        return base
    try:
        named = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{what}: {folder}/adapter_config.json: cannot read it ({e})") from None
    if named and (Path(named) / "config.json").is_file():
        return {"path": named}
    raise ConfigError(
        f"{what}: {folder} holds only a LoRA adapter, and its base model ({named!r} in adapter_config.json) is not a "
        "local model folder; merge the adapter into its base, or train with longvid, which records the base"
    )


def _check_full_weights(folder: Path, what: str) -> None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"{what}: {index} is not a safetensors index ({e})") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ConfigError(f"{what}: {folder} is missing weight shard(s) {', '.join(missing[:3])} listed in {index.name}")
        files = [folder / s for s in shards]
    else:
        files = sorted(p for p in folder.glob("*.safetensors") if p.name != ADAPTER_WEIGHTS)
    if not files:
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
        if pickles:
            raise ConfigError(
                f"{what}: {folder} holds only pickled weights ({', '.join(pickles[:3])}); longvid loads safetensors "
                "only, since a pickle can run code when read: convert it with transformers "
                "(from_pretrained(..., use_safetensors=False) then save_pretrained(..., safe_serialization=True)) "
                "in an environment you trust"
            )
        raise ConfigError(f"{what}: {folder} has config.json but no model weights (*.safetensors)")
    for file in files:
        check_safetensors(file, what)


def _check_tokenizer(folder: Path, what: str) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"{what}: {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files "
            "of the model it was trained from into it"
        )


META_FILE = "longvid.json"


def write_model_meta(folder: str | Path, meta: dict) -> Path:
    """`longvid.json` beside the weights: how the model was trained (frames, size, base model), so
    evaluation can default to the same settings and an adapter-only folder can find its base."""
    path = Path(folder) / META_FILE
    path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return path


def read_model_meta(folder: str | Path) -> dict | None:
    """The folder's `longvid.json`, or None when it has none (a model not saved by longvid)."""
    path = resolve_model_path(folder) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return meta
