"""`longvid serve`, `data synth` and `data reason`: serving a model and making datasets."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from .args import _shard, _writable_folder


def cmd_data_synth(args: argparse.Namespace) -> int:
    from ..synth import write_dataset

    _writable_folder(args.out, "--out")
    path = write_dataset(
        args.out, args.num, num_frames=args.frames, size=args.size, seed=args.seed, as_files=not args.specs
    )
    print(f"wrote {args.num} samples to {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import ServeLimits, build_app, serve

    try:
        limits = ServeLimits(
            num_frames=args.frames, size=args.size or None, max_frames=args.max_frames, max_n=args.max_n,
            max_new_tokens=args.max_new_tokens, default_max_tokens=args.default_max_tokens,
            max_prompt_tokens=args.max_prompt_tokens, max_body_bytes=args.max_body_bytes,
            max_concurrency=args.concurrency, max_queue=args.queue,
        )
        app = build_app(args.model, args.video_root, limits, model_name=args.name)
    except ValueError as e:
        raise ConfigError(f"serve: {e}") from None
    print(f"serving {args.name or args.model or 'longvid-tiny'} on http://{args.host}:{args.port}/v1 "
          f"(videos under {Path(args.video_root).resolve()})")
    serve(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model behind an OpenAI-compatible HTTP API (/v1/chat/completions)")
    p.add_argument("--model", help="checkpoint folder (default: the untrained tiny model)")
    p.add_argument("--name", help="model id clients send (default: the folder name, or longvid-tiny)")
    p.add_argument("--video-root", required=True, help="only videos inside this folder are served")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video unless a request sets num_frames")
    p.add_argument("--size", type=int, default=224, help="square frame side in pixels (0 keeps the decoded size)")
    p.add_argument("--max-frames", type=int, default=512, help="larger num_frames requests get 413")
    p.add_argument("--max-n", type=int, default=64, help="larger n gets 413")
    p.add_argument("--max-new-tokens", type=int, default=4096, help="larger max_tokens gets 413")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request does not say")
    p.add_argument("--max-prompt-tokens", type=int, default=32768, help="longer prompts (video included) get 413")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--concurrency", type=int, default=1, help="requests generating at once")
    p.add_argument("--queue", type=int, default=8, help="requests waiting for a slot; beyond them 429")
    p.set_defaults(func=cmd_serve)


def _served_model(url: str, given: str | None, flag: str, api_key: str) -> str:
    """The model name to request: the flag, or the one model the server lists."""
    if given:
        return given
    import openai

    try:
        names = [m.id for m in openai.OpenAI(base_url=url, api_key=api_key, max_retries=2).models.list()]
    except openai.OpenAIError as e:
        raise ConfigError(f"{flag}: not given, and {url}/models could not be listed ({e})") from None
    if len(names) != 1:
        raise ConfigError(f"{flag}: {url} serves {len(names)} models ({', '.join(names)}); name one")
    return names[0]


def cmd_data_reason(args: argparse.Namespace) -> int:
    import asyncio

    from ..data.reason.client import ChatClient, RetryPolicy
    from ..data.reason.runner import ReasonConfig, run_reason
    from ..data.reason.units import Budget

    budget = Budget(caption_tokens=args.caption_tokens, llm_tokens=args.llm_tokens,
                    llm_temperature=args.llm_temperature, per_category=args.per_category)
    config = ReasonConfig(
        videos=args.videos, out=args.out, dataset=args.dataset, clip_seconds=args.clip_seconds, cut=args.cut,
        categories=tuple(args.categories.split(",")), refine=not args.no_refine, budget=budget,
        concurrency=args.concurrency, shard=args.shard, resume=args.resume, progress=not args.no_progress,
    )
    policy = RetryPolicy(retries=args.retries, backoff=args.backoff, timeout=args.timeout)
    api_key = os.environ.get("LONGVID_API_KEY", "unused")
    llm_model = _served_model(args.llm_url, args.llm_model, "--llm-model", api_key)
    if args.engine == "ray":
        summary = _reason_on_ray(args, config, policy, api_key, llm_model)
    else:
        summary = asyncio.run(run_reason(config, _captioner(args, policy, api_key), ChatClient(args.llm_url, llm_model, policy, api_key)))
    print(config.summary_path.read_text())
    print(f"wrote {config.dataset}")
    if summary.num_failed:
        print(f"longvid: {summary.num_failed} requests failed; rerun with --resume to retry them", file=sys.stderr)
        return 1
    return 0


def _captioner(args: argparse.Namespace, policy, api_key: str):
    from ..data.reason.client import ChatClient, InProcessClient

    if args.caption_url == "local":
        from ..config import ModelConfig
        from ..model import load_adapter
        from ..serve import Engine

        return InProcessClient(Engine(load_adapter(ModelConfig(path=args.caption_model))),
                               num_frames=args.caption_frames, size=args.caption_size or None)
    name = _served_model(args.caption_url, args.caption_model, "--caption-model", api_key)
    return ChatClient(args.caption_url, name, policy, api_key)


def _reason_on_ray(args: argparse.Namespace, config, policy, api_key: str, llm_model: str):
    from ..data.reason.ray_runner import ServerSpec, run_ray

    if args.caption_url == "local":
        raise ConfigError("--engine ray: --caption-url must be a server (each Ray actor connects to it), not 'local'")
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'longvid[ray]'") from None
    ray.init(address=args.ray_address, include_dashboard=False, configure_logging=False)
    try:
        caption = ServerSpec(args.caption_url, _served_model(args.caption_url, args.caption_model, "--caption-model", api_key),
                             policy, api_key)
        return run_ray(config, caption, ServerSpec(args.llm_url, llm_model, policy, api_key),
                       workers=args.ray_workers, num_cpus=args.ray_num_cpus)
    finally:
        ray.shutdown()


def _reason_parser(data) -> None:
    from ..data.reason.stages import CATEGORIES

    p = data.add_parser("reason", help="long videos → clips → captions → reasoning questions (resumable)")
    p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    p.add_argument("--out", required=True, help="work folder: clips, journal, summary")
    p.add_argument("--dataset", help="output jsonl, in --videos or above it (default: <videos>/reason.jsonl)")
    p.add_argument("--caption-url", required=True,
                   help="OpenAI-compatible base URL of the captioning VLM (e.g. http://127.0.0.1:8000/v1), or 'local'")
    p.add_argument("--caption-model", help="model name on the caption server (default: the one it lists); "
                   "with --caption-url local, a checkpoint folder (default: the tiny model)")
    p.add_argument("--caption-frames", type=int, default=16, help="frames per clip with --caption-url local")
    p.add_argument("--caption-size", type=int, default=224, help="frame side with --caption-url local")
    p.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL of the reasoning LLM")
    p.add_argument("--llm-model", help="model name on the LLM server (default: the one it lists)")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--cut", default="auto", choices=["auto", "copy", "reencode"],
                   help="copy packets (keyframe-snapped), re-encode (frame-exact), or auto (copy unless keyframes are too sparse)")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated generators")
    p.add_argument("--per-category", type=int, default=1, help="questions asked per category and video")
    p.add_argument("--no-refine", action="store_true", help="keep the generated reasoning as written")
    p.add_argument("--caption-tokens", type=int, default=256)
    p.add_argument("--llm-tokens", type=int, default=4096)
    p.add_argument("--llm-temperature", type=float, default=0.6)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--retries", type=int, default=4, help="retries of a request on 429/5xx/timeouts")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubling)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/N: this machine's share of the videos")
    p.add_argument("--resume", action="store_true", help="continue the run journaled in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--engine", default="asyncio", choices=["asyncio", "ray"], help="ray: spread videos over a Ray "
                   "cluster (pip install 'longvid[ray]')")
    p.add_argument("--ray-address", help="Ray cluster to join (default: start a local one)")
    p.add_argument("--ray-workers", type=int, default=4, help="Ray actors, each running its videos' requests")
    p.add_argument("--ray-num-cpus", type=float, default=0.25,
                   help="logical CPUs per actor (fractional: HTTP actors must not starve Ray's own tasks)")
    p.set_defaults(func=cmd_data_reason)
