"""`longvid serve`: any longvid model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from pathlib import Path

from .app import ServeLimits, create_app
from .engine import Engine


def build_app(model_path: str | None, video_root: str | Path, limits: ServeLimits, *, model_name: str | None = None):
    """The app for a checkpoint folder (or the tiny default when `model_path` is None)."""
    from ..config import ModelConfig
    from ..model import load_adapter

    adapter = load_adapter(ModelConfig(path=model_path))
    name = model_name or (Path(model_path).name if model_path else "longvid-tiny")
    return create_app(Engine(adapter), name, video_root, limits)


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted (localhost unless `host` says otherwise)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["Engine", "ServeLimits", "build_app", "create_app", "serve"]
