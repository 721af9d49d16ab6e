"""The run folder owns its run.

`out_dir/` holds everything one training run is:

- `config.yaml` — the resolved config (every key, after the YAML recipe and the overrides);
- `command.txt` — every command that wrote into the folder (the first run, then each resume);
- `.lock` — held while a process writes (pid, host): a second writer is refused; a lock whose
  process is gone (same host, pid not alive) is stale and taken over;
- `checkpoints/` (`step-N/`, `latest -> step-N`) and `tb/` (TensorBoard).

A new run into a folder that holds another run is refused unless `--overwrite` (which deletes the
old run's checkpoints, logs and config first). `--resume` reads `config.yaml`: keys not given on the
command line come from it (a LoRA run resumes without repeating `--set lora.rank=8`); a given key
that differs from the stored one is refused, except the few in `SAFE_ON_RESUME`, which do not
change what is computed. Under torchrun only rank 0 touches the folder; every rank reads the
same `config.yaml`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

from .checkpoint import clean_stale_tmp, latest_checkpoint
from .config import config_data, from_dict
from .errors import ConfigError, LongvidError

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
LOCK_FILE = ".lock"
# What a resume may change: how long to train and how to report, never what a step computes.
SAFE_ON_RESUME = ("steps", "save_every", "log_every", "progress")


class RunFolderError(LongvidError):
    """The run folder is in use, holds another run, or disagrees with the command."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML round-trips."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def stored_config(out_dir: str | Path) -> dict[str, Any] | None:
    """The run folder's `config.yaml` as a dict, or None when it has none."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunFolderError(f"{path}: cannot read the run's config ({e})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: not a config mapping")
    return data


def resolve_config(
    cls: type[T], path: str | Path | None, overrides: list[str], *, resume: bool, inherit: dict[str, Any] | None = None
) -> T:
    """The run's config: the recipe and overrides; on `resume`, on top of the stored `config.yaml`,
    refusing any change to a key outside `SAFE_ON_RESUME`. `inherit` fills keys the command
    leaves unset (e.g. the video settings a starting checkpoint was trained with)."""
    given = config_data(path, overrides)
    default_out = next(f.default for f in dataclasses.fields(cls) if f.name == "out_dir")
    out_dir = str(given.get("out_dir") or default_out)
    stored = stored_config(out_dir) if resume else None
    if stored is None:
        return from_dict(cls, _merge(inherit or {}, given))
    # The folder may have moved since it was written: its location is where it is now.
    merged = _merge(stored, {**given, "out_dir": out_dir})
    config = from_dict(cls, merged)
    now = _flatten(_plain(dataclasses.asdict(config)))
    before = _flatten(_plain({**stored, "out_dir": out_dir}))
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    refused = [k for k in changed if k not in SAFE_ON_RESUME]
    if refused:
        lines = "; ".join(f"{k}: stored {before.get(k)!r}, given {now.get(k)!r}" for k in refused[:5])
        raise ConfigError(
            f"--resume: the command changes what the run in {out_dir} computes ({lines}). A resume may change only "
            f"{', '.join(SAFE_ON_RESUME)}; start a new run folder to change the rest"
        )
    for key in changed:
        log.info("resume: %s changed from %r to %r", key, before.get(key), now.get(key))
    return config


def _holds_run(out_dir: Path) -> str | None:
    """What shows `out_dir` already holds a run (for the refusal message), or None."""
    checkpoints = out_dir / "checkpoints"
    steps = sorted(checkpoints.glob("step-*")) if checkpoints.is_dir() else []
    if steps:
        return f"checkpoints ({steps[-1].name})"
    # A run that trained but never saved still left its TensorBoard log; a config alone (a run
    # refused before its first step) is no run.
    if any((out_dir / "tb").glob("events.*")):
        return "TensorBoard logs in tb/"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


class RunLock:
    """`out_dir/.lock`, created exclusively; a stale lock (its process gone) is taken over."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_holder()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            self.held = True
            return
        raise RunFolderError(f"{self.path}: cannot take the run lock (it keeps changing hands)")

    def _check_holder(self) -> None:
        """Raise if a live process holds the lock; remove it when it is stale."""
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, None, None
        if pid is not None and host == socket.gethostname() and not _alive(pid):
            log.warning("removing the stale lock %s of process %d, which is gone", self.path, pid)
            self.path.unlink(missing_ok=True)
            return
        who = f"process {pid} on {host}" if pid is not None else "an unreadable lock"
        since = f" since {holder['started']}" if holder.get("started") else ""
        raise RunFolderError(
            f"{self.path.parent} is in use by another run ({who}{since}); wait for it, use another --out-dir, "
            f"or delete {self.path} if that process is dead"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def run_folder(config: Any, *, resume: bool, overwrite: bool, argv: list[str] | None = None) -> Iterator[Path]:
    """Hold `config.out_dir` for the duration of a training run (rank 0 only under torchrun):
    lock it, refuse or clear a previous run, clean stale temporary checkpoints, store the config
    and the command."""
    out_dir = Path(config.out_dir)
    if _rank() != 0:
        yield out_dir
        return
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run, or replace it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"--out-dir: cannot create {out_dir} ({e.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out-dir: {out_dir} is not writable (permission denied)")
    lock = RunLock(out_dir)
    lock.acquire()
    try:
        previous = _holds_run(out_dir)
        if previous and not resume:
            if not overwrite:
                raise RunFolderError(
                    f"{out_dir} already holds a run ({previous}); pass --resume to continue it or --overwrite to "
                    "replace it (deletes its checkpoints and logs)"
                )
            log.warning("--overwrite: deleting the previous run in %s", out_dir)
            for name in ("checkpoints", "tb"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
            for name in (CONFIG_FILE, COMMAND_FILE):
                (out_dir / name).unlink(missing_ok=True)
        if resume:
            try:
                latest_checkpoint(out_dir / "checkpoints")  # a dangling `latest` fails here, before any work
            except FileNotFoundError as e:
                raise RunFolderError(f"--resume: {e}") from None
        clean_stale_tmp(out_dir / "checkpoints")
        _write_atomic(out_dir / CONFIG_FILE, yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False))
        command = shlex.join(["longvid", *(sys.argv[1:] if argv is None else argv)])
        with open(out_dir / COMMAND_FILE, "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} (pid {os.getpid()})\n{command}\n")
        yield out_dir
    finally:
        lock.release()


def checkpoint_meta(config: Any, recipe: str) -> dict[str, Any]:
    """What `model/longvid.json` records of how a checkpoint was trained: the video sampling (eval
    defaults to it), the base model (an adapter-only folder loads it), the recipe."""
    model = config.model
    base = {"path": str(Path(model.path).resolve()) if model.path else None, "seed": model.seed}
    meta = {"recipe": recipe, "video": _plain(dataclasses.asdict(config.video)), "base_model": base}
    if getattr(config, "lora", None) is not None:
        meta["lora_rank"] = config.lora.rank
    if hasattr(config, "max_new_tokens"):
        meta["max_new_tokens"] = config.max_new_tokens
    return meta


VIDEO_KEYS = ("num_frames", "fps", "max_frames", "size")


def trained_video_settings(model_path: str | None) -> dict[str, Any]:
    """The video sampling a checkpoint was trained with (from its longvid.json); {} when unknown."""
    if not model_path:
        return {}
    from .model.folder import read_model_meta

    meta = read_model_meta(model_path) or {}
    video = meta.get("video") or {}
    return {k: video[k] for k in VIDEO_KEYS if k in video}
