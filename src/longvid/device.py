"""Where a process computes and in which precision: the `--device` / `model.dtype` choices resolved once."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto"/None: `cuda:LOCAL_RANK` when CUDA is available, else the CPU. Asking for CUDA on a
    machine without it is an error naming the choice, not a crash deep inside the model."""
    if isinstance(device, torch.device):
        return device
    name = device or "auto"
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise ConfigError(f"device {name!r} is not one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name}: CUDA is not available on this machine")
    if name.startswith("cuda:"):
        return torch.device(name)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on a GPU, float32 on the CPU; otherwise the named dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]
