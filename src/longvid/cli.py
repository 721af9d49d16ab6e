"""The `longvid` command. It only parses arguments and calls into the package."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from .errors import ConfigError, DataError, LongvidError

log = logging.getLogger("longvid")


def _int_at_least(low: int, high: int | None = None):
    """argparse type: an integer in low..high; the error names the value and the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"in {low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _finite_at_least(low: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _frame_counts(text: str) -> list[int]:
    """argparse type for --frames-scaling: comma-separated positive frame counts."""
    counts = []
    for part in text.split(","):
        try:
            counts.append(_int_at_least(1, MAX_FRAMES)(part.strip()))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} in {text!r}: {e}") from None
    return counts


MAX_FRAMES = 100_000  # video.decode.MAX_FRAMES, without importing PyAV to parse arguments
POSITIVE = _int_at_least(1)
FRAMES = _int_at_least(1, MAX_FRAMES)
SIZE = _int_at_least(28, 4096)


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Shortcut flags become `key=value` overrides, applied before explicit `--set` ones."""
    out = [f"{key}={getattr(args, attr)}" for attr, key in mapping.items() if getattr(args, attr, None) is not None]
    return out + list(args.set or [])


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    metrics = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(f"accuracy {100 * metrics['accuracy']:.1f}% (chance {100 * metrics['chance']:.1f}%), report: {Path(args.out) / 'report.md'}")
    return 0


def _training_set(config, main_rank: bool = True):
    """The training rows with their videos checked up front (bad ones skipped and counted, or an error)."""
    from .data.dataset import VideoDataset

    dataset = VideoDataset.from_jsonl(config.train, skip_bad=config.skip_bad, video=config.video)
    dataset.validate_videos(progress=config.progress and main_rank)
    if dataset.num_bad:
        log.warning("skipped %d bad rows of %s", dataset.num_bad, config.train)
    return dataset


def _mesh(config):
    """The process mesh from torchrun's environment (a mesh of one without it), on `model.device`."""
    from .parallel.mesh import init_mesh

    par = config.parallel
    return init_mesh(sp=par.sp, ulysses=par.ulysses, ring=par.ring, device=config.model.device)


def _run_trainer(make_trainer, config, args: argparse.Namespace, new_tokens):
    """Hold the run folder, build the mesh, data and model, check them, train; returns
    (history, dataset) on rank 0, None elsewhere. `make_trainer(adapter, dataset, mesh)` builds the
    recipe's trainer; `new_tokens` (int, or per sample) is what each row adds to its prompt."""
    from torch.utils.tensorboard import SummaryWriter

    from .model import load_adapter
    from .preflight import check_lora_targets, check_rows_fit
    from .runs import run_folder

    with run_folder(config, resume=args.resume, overwrite=args.overwrite, argv=args.argv):
        mesh = _mesh(config)
        dataset = _training_set(config, mesh.rank == 0)
        adapter = load_adapter(config.model, device=mesh.device)
        check_lora_targets(adapter, config.lora)
        tokens = new_tokens(adapter) if callable(new_tokens) else new_tokens
        check_rows_fit(adapter, dataset.samples, config.video, tokens, dataset.origin)
        trainer = make_trainer(adapter, dataset, mesh)
        writer = SummaryWriter(str(Path(config.out_dir) / "tb")) if mesh.rank == 0 else None
        try:
            history = trainer.train(resume=args.resume, writer=writer)
        finally:
            if writer is not None:
                writer.close()
    if writer is None:
        return None
    return history, dataset


PARALLEL_FLAGS = {
    "sp": "parallel.sp", "ulysses": "parallel.ulysses", "ring": "parallel.ring",
    "device": "model.device", "dtype": "model.dtype",
}


def cmd_sft(args: argparse.Namespace) -> int:
    from .inputs import target_text
    from .runs import resolve_config
    from .sft.trainer import SFTConfig, SFTTrainer

    flags = {"train": "train", "out_dir": "out_dir", "steps": "steps", **PARALLEL_FLAGS}
    config = resolve_config(SFTConfig, args.config, _overrides(args, flags), resume=args.resume)
    run = _run_trainer(
        lambda adapter, data, mesh: SFTTrainer(adapter, config, data.samples, data.load_frames, mesh=mesh),
        config,
        args,
        lambda adapter: lambda sample: len(adapter.response_ids(target_text(sample))),
    )
    if run is None:
        return 0
    history, dataset = run
    print(f"trained {history[-1]['step']} steps, final loss {history[-1]['loss']:.4f}; {dataset.num_bad} bad rows "
          f"skipped; checkpoints in {Path(config.out_dir) / 'checkpoints'}")
    return 0


def _settings(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _inference_video(args: argparse.Namespace):
    """Frames and size for eval/filter: explicit flags, else what the checkpoint was trained with
    (its longvid.json), else 32 frames at 56 px. Says where they came from."""
    from .config import VideoConfig
    from .errors import ConfigError
    from .runs import trained_video_settings

    settings = {"num_frames": 32, "size": 56}
    trained = trained_video_settings(args.model)
    settings.update(trained)
    explicit = {k: v for k, v in (("num_frames", args.frames), ("size", args.size)) if v is not None}
    if "num_frames" in explicit:
        settings["fps"] = None
    settings.update(explicit)
    if trained:
        inherited = {k: v for k, v in trained.items() if k not in explicit}
        print(f"video settings from {Path(args.model) / 'longvid.json'} (how it was trained): {_settings(inherited)}"
              + (f"; from flags: {_settings(explicit)}" if explicit else ""))
    try:
        return VideoConfig(**settings)
    except ConfigError as e:
        raise ConfigError(f"video settings {_settings(settings)}: {e}") from None


def _checked_data_and_model(args: argparse.Namespace, new_tokens: int):
    """The dataset (videos checked up front), the model and the video settings, for commands that
    only run inference; every row is checked to fit the model's context with `new_tokens`."""
    from .config import ModelConfig
    from .data.dataset import VideoDataset
    from .model import load_adapter
    from .preflight import check_rows_fit

    from .model.folder import check_model_folder

    if args.model is not None:
        check_model_folder(args.model, what="--model")  # before any video is read
    video = _inference_video(args)
    data = VideoDataset.from_jsonl(args.data, skip_bad=args.skip_bad, video=video)
    model = ModelConfig(path=args.model, device=args.device, dtype=args.dtype)  # checks the folder before any video is read
    data.validate_videos()
    adapter = load_adapter(model)
    check_rows_fit(adapter, data.samples, video, new_tokens, data.origin)
    return data, adapter, video


def _eval_benchmark(args: argparse.Namespace) -> int:
    """`eval --benchmark NAME`: a benchmark file as downloaded, scored officially and by us."""
    from .config import ModelConfig
    from .eval.benchmarks import BENCHMARKS, load_checked, run_benchmark, write_report
    from .model import load_adapter

    if args.videos is None:
        raise DataError(f"--benchmark {args.benchmark} needs --videos DIR (the folder holding its videos)")
    if args.frames_scaling:
        raise DataError("--frames-scaling is not supported with --benchmark")
    bench = BENCHMARKS[args.benchmark]
    data, videos = Path(args.data), Path(args.videos)
    loaded = load_checked(bench, data, videos, skip_bad=args.skip_bad)  # bad rows fail before the model loads
    video = _inference_video(args)
    adapter = load_adapter(ModelConfig(path=args.model, device=args.device, dtype=args.dtype))
    result = run_benchmark(bench, adapter, loaded, videos, video=video, max_new_tokens=args.max_new_tokens,
                           limit=args.limit, skip_bad=args.skip_bad, compressor=_eval_compressor(args, adapter))
    path = write_report(bench, result, Path(args.out))
    print(f"{bench.title}: official {100 * result.official['overall']:.1f}%, ours {100 * result.ours.accuracy:.1f}% "
          f"on {len(result.ours.records)} rows; {len(result.bad)} bad rows skipped; {path.with_suffix('.md')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.benchmark:
        return _eval_benchmark(args)
    import dataclasses

    from .eval.mcq import frames_scaling, evaluate, write_result
    from .eval.plots import plot_frames_scaling

    data, adapter, video = _checked_data_and_model(args, args.max_new_tokens)
    bad = data.bad
    samples = data.samples[: args.limit] if args.limit else data.samples
    if not samples:
        from .errors import DataError

        raise DataError(f"{args.data}: no rows left to evaluate ({len(bad)} bad rows skipped)")

    def loader(n: int | None):
        sampling = video if n is None else dataclasses.replace(video, num_frames=n, fps=None)
        return data.with_sampling(sampling, samples).load_frames

    out = Path(args.out)
    compressor = _eval_compressor(args, adapter)
    result = evaluate(adapter, samples, loader(None), max_new_tokens=args.max_new_tokens, skip_bad=args.skip_bad,
                      compressor=compressor)
    result.num_frames = video.num_frames
    write_result(result, out, "eval")
    skipped = len(bad) + len(result.skipped)
    print(f"accuracy {100 * result.accuracy:.1f}% (chance {100 * result.chance:.1f}%) on {len(result.records)} samples; "
          f"{skipped} bad rows skipped; {out / 'eval.md'}")
    for reason in result.skipped:
        print(f"skipped: {reason}")
    if args.frames_scaling:
        counts = args.frames_scaling
        results = frames_scaling(adapter, samples, loader, counts, max_new_tokens=args.max_new_tokens, skip_bad=args.skip_bad,
                                 compressor=compressor)
        for r in results:
            write_result(r, out, f"eval_{r.num_frames}f")
        plot_frames_scaling({"model": [(r.num_frames, r.accuracy) for r in results]}, out / "frames_scaling.png", chance=result.chance)
        print("frames scaling: " + ", ".join(f"{r.num_frames}f {100 * r.accuracy:.1f}%" for r in results))
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    from .config import config_data
    from .rl.trainer import GRPOConfig, GRPOTrainer
    from .runs import resolve_config, trained_video_settings

    flags = {"train": "train", "out_dir": "out_dir", "steps": "steps", "model": "model.path", **PARALLEL_FLAGS}
    overrides = _overrides(args, flags)
    # Video settings the command leaves unset default to those the starting checkpoint was trained with.
    start = (config_data(args.config, overrides).get("model") or {}).get("path")
    trained = trained_video_settings(start)
    if trained:
        log.warning("video settings default to those %s was trained with: %s", start, _settings(trained))
    config = resolve_config(GRPOConfig, args.config, overrides, resume=args.resume, inherit={"video": trained})
    run = _run_trainer(
        # The dataset knows each video's identity without decoding it: cache hits skip the decode.
        lambda adapter, data, mesh: GRPOTrainer(
            adapter, config, data.samples, data.load_frames, mesh=mesh, video_key=data.video_key
        ),
        config,
        args,
        config.max_new_tokens,
    )
    if run is None:
        return 0
    last = run[0][-1]
    print(f"trained {last['step']} steps: reward {last['reward']:.3f}, accuracy {last['accuracy']:.3f}, "
          f"kl {last['kl']:.4f}, drift {last['drift']:.1e}; checkpoints in {Path(config.out_dir) / 'checkpoints'}")
    return 0


def cmd_data_filter(args: argparse.Namespace) -> int:
    from .data.reason.filter import answer_many, write_splits
    from .model.sampling import SamplingConfig

    dataset, adapter, _ = _checked_data_and_model(args, args.max_new_tokens)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    correct = answer_many(adapter, dataset, args.num, sampling, seed=args.seed)
    paths = write_splits(dataset, correct, args.data)
    print(paths["summary"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _writable_folder(path: str, flag: str) -> Path:
    """Create `path` (and parents) and prove a file can be written in it, or ConfigError naming `flag`."""
    from .errors import ConfigError

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".longvid-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{flag}: cannot write to {folder} ({e.strerror or e})") from None
    return folder


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .synth import write_dataset

    _writable_folder(args.out, "--out")
    path = write_dataset(
        args.out, args.num, num_frames=args.frames, size=args.size, seed=args.seed, as_files=not args.specs
    )
    print(f"wrote {args.num} samples to {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeLimits, build_app, serve

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


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/N (e.g. 0/4), got {text!r}") from None
    return index, count


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

    from .data.reason.client import ChatClient, RetryPolicy
    from .data.reason.runner import ReasonConfig, run_reason
    from .data.reason.units import Budget

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
    from .data.reason.client import ChatClient, InProcessClient

    if args.caption_url == "local":
        from .config import ModelConfig
        from .model import load_adapter
        from .serve import Engine

        return InProcessClient(Engine(load_adapter(ModelConfig(path=args.caption_model))),
                               num_frames=args.caption_frames, size=args.caption_size or None)
    name = _served_model(args.caption_url, args.caption_model, "--caption-model", api_key)
    return ChatClient(args.caption_url, name, policy, api_key)


def _reason_on_ray(args: argparse.Namespace, config, policy, api_key: str, llm_model: str):
    from .data.reason.ray_runner import ServerSpec, run_ray

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
    from .data.reason.stages import CATEGORIES

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


def _summary_tokens(adapter, model_path: str | None, ratios: list[int], untrained_window: int | None):
    """The summary tokens saved beside the checkpoint, or fresh untrained ones when asked; None
    when no ratio compresses."""
    from .errors import ConfigError
    from .model.compress import PARAMS_FILE, SummaryTokens

    bad = [r for r in ratios if r < 1]
    if bad:
        raise ConfigError(f"compression ratios must be >= 1 (1 = off), got {bad}")
    compressing = sorted({r for r in ratios if r != 1})
    if not compressing:
        return None
    if untrained_window:
        return SummaryTokens.from_adapter(adapter, ratios=compressing, window=untrained_window).attach(adapter)
    if model_path is None or not (Path(model_path) / PARAMS_FILE).is_file():
        raise ConfigError(f"compression ratio(s) {compressing} need {PARAMS_FILE} beside the model (--model); "
                          "train with compress.ratios, or pass --untrained-summary WINDOW to try fresh ones")
    return SummaryTokens.load(model_path, adapter).attach(adapter)


def _int_list(text: str, flag: str) -> list[int]:
    from .errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def cmd_niah(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .errors import ConfigError
    from .eval.niah import load_needles, run_grid, video_item, write_report
    from .model import load_adapter
    from .model.compress import Compressor

    ratios = _int_list(args.ratios, "--ratios")
    frames = _int_list(args.frames, "--frames")
    try:
        depths = [float(x) for x in args.depths.split(",")]
    except ValueError:
        raise ConfigError(f"--depths: expected comma-separated fractions, got {args.depths!r}") from None
    adapter = load_adapter(ModelConfig(path=args.model))
    summary = _summary_tokens(adapter, args.model, ratios, args.untrained_summary)
    if args.haystack == "synthetic":
        from .synth import needle_haystack

        make_item = needle_haystack(args.size, args.seed)
    else:
        if not args.needles:
            raise ConfigError("--needles (a jsonl of image needles) is required with a video haystack")
        make_item = video_item(args.haystack, load_needles(args.needles, args.size), args.size)
    grids = []
    for r in ratios:
        compressor = Compressor(summary if r != 1 else None, r)
        grids.append(run_grid(adapter, compressor, make_item, frames, depths, trials=args.trials, scoring=args.scoring))
        print(f"ratio {r}: mean accuracy {100 * grids[-1].mean:.1f}% (chance {100 * grids[-1].chance:.1f}%)")
    paths = write_report(grids, args.out)
    print(f"report: {paths['md']} heatmap: {paths['png']}")
    return 0


def _compress_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compress-ratio", type=int, default=1,
                   help="visual summary tokens: one summary per N visual tokens (1 = off; needs summary tokens beside --model)")


def _eval_compressor(args: argparse.Namespace, adapter):
    """The inference compressor of `--compress-ratio` (None when off)."""
    from .model.compress import Compressor

    if args.compress_ratio == 1:
        return None
    return Compressor(_summary_tokens(adapter, args.model, [args.compress_ratio], None), args.compress_ratio)


def _niah_parser(sub) -> None:
    p = sub.add_parser("niah", help="video needle-in-a-haystack: accuracy over frames x depth, with/without compression")
    p.add_argument("--model", help="checkpoint folder (summary tokens are read from beside it)")
    p.add_argument("--haystack", default="synthetic", help="'synthetic' (default) or a local video file")
    p.add_argument("--needles", help="jsonl of image needles (image, question, options, answer) for a video haystack")
    p.add_argument("--frames", default="16,32,64", help="haystack lengths in frames (comma-separated)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1] (comma-separated)")
    p.add_argument("--trials", type=int, default=4, help="needles per cell")
    p.add_argument("--ratios", default="1", help="compression ratios (1 = none), e.g. 1,4,16")
    p.add_argument("--untrained-summary", type=int, metavar="WINDOW", help="use fresh (untrained) summary tokens with this window")
    p.add_argument("--scoring", default="likelihood", choices=["likelihood", "generate"])
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/niah")
    p.set_defaults(func=cmd_niah)


def _device_flags(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default,
                   help="where to compute: auto = this process's GPU (cuda:LOCAL_RANK) if any, else the CPU")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16", "float64"), default=default,
                   help="model precision: auto = bfloat16 on a GPU, float32 on the CPU")


def _parallel_flags(p: argparse.ArgumentParser) -> None:
    _device_flags(p)
    p.add_argument("--sp", type=POSITIVE, help="sequence-parallel ranks per sample (under torchrun)")
    p.add_argument("--ulysses", type=POSITIVE, help="Ulysses (all-to-all) part of --sp; the rest is ring")
    p.add_argument("--ring", type=POSITIVE, help="ring part of --sp; the rest is Ulysses")


def _run_folder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir from its latest checkpoint, with its stored config.yaml")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run out_dir holds (deletes its checkpoints, logs and config)")


def _inference_video_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=FRAMES, help="frames per video (default: as the checkpoint was trained, else 32)")
    p.add_argument("--size", type=SIZE, help="frame side in pixels (default: as the checkpoint was trained, else 56)")


def _synth_size(text: str) -> int:
    value = _int_at_least(16, 1024)(text)
    if value % 4:
        raise argparse.ArgumentTypeError(f"must be a multiple of 4, got {value}")
    return value


# Listed here so `--help` needs no import of the evaluation code; tests check it matches.
BENCHMARK_NAMES = ("videomme", "mlvu", "longvideobench", "vnbench", "longvideo_reason")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvid", description="Teach vision-language models to reason about long videos.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic data → CoT-SFT of the tiny model → evaluation → report")
    p.add_argument("--out", default="runs/demo", help="report folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="the ≤2-minute variant used in CI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sft", help="chain-of-thought supervised fine-tuning")
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument("--train", help="training jsonl (overrides the config)")
    p.add_argument("--out-dir", dest="out_dir", help="run folder (overrides the config)")
    p.add_argument("--steps", type=POSITIVE, help="optimizer steps (overrides the config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. optim.lr=1e-4")
    _run_folder_flags(p)
    _parallel_flags(p)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("eval", help="multiple-choice evaluation (accuracy overall and per category)")
    p.add_argument("--data", required=True, help="jsonl dataset, or with --benchmark its file (or folder) as downloaded")
    p.add_argument("--benchmark", choices=BENCHMARK_NAMES, help="read --data as this benchmark's own format and "
                   "report its official score beside ours")
    p.add_argument("--videos", help="with --benchmark: the folder holding its videos (mp4, webm, mkv)")
    p.add_argument("--model", help="checkpoint folder (default: the untrained tiny model)")
    p.add_argument("--out", default="runs/eval")
    _inference_video_flags(p)
    p.add_argument("--frames-scaling", type=_frame_counts, help="comma-separated frame counts, e.g. 16,32,64")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    p.add_argument("--limit", type=POSITIVE, help="evaluate only the first N samples")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed rows (counted) instead of failing")
    _compress_flags(p)
    _device_flags(p, "auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("grpo", help="GRPO from an SFT checkpoint (encode once, shared-prefix rollout and training)")
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument("--train", help="training jsonl (overrides the config)")
    p.add_argument("--model", help="checkpoint folder to start from (overrides model.path)")
    p.add_argument("--out-dir", dest="out_dir", help="run folder (overrides the config)")
    p.add_argument("--steps", type=POSITIVE, help="optimizer steps (overrides the config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. beta=0.04")
    _run_folder_flags(p)
    _parallel_flags(p)
    p.set_defaults(func=cmd_grpo)

    _serve_parser(sub)
    _niah_parser(sub)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write synthetic long-video reasoning samples (mp4 + jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=POSITIVE, default=200)
    p.add_argument("--frames", type=_int_at_least(8, 16384), default=64, help="frames per video, 8..16384")
    p.add_argument("--size", type=_synth_size, default=56, help="square side in pixels, a multiple of 4 in 16..1024")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--specs", action="store_true", help="write synthetic specs instead of mp4 files")
    p.set_defaults(func=cmd_data_synth)

    p = data.add_parser("filter", help="label questions easy/medium/hard by answering each N times")
    p.add_argument("--data", required=True, help="jsonl dataset; the splits are written beside it")
    p.add_argument("--model", help="checkpoint folder (default: the untrained tiny model)")
    p.add_argument("--num", type=POSITIVE, default=10, help="answers per question (default 10)")
    _inference_video_flags(p)
    p.add_argument("--temperature", type=_finite_at_least(0.0), default=1.0)
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true")
    _device_flags(p, "auto")
    p.set_defaults(func=cmd_data_filter)
    _reason_parser(data)
    return parser


def _exit_on_preemption(func):
    """A preempted run saved its checkpoint: exit with EXIT_PREEMPTED (on every rank), not as a failure."""
    from .preempt import Preempted

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except Preempted as e:
            print(f"longvid: {e}", file=sys.stderr)
            return e.exit_code

    return run


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0 done, 2 bad input (a message naming it),
    75 stopped by SIGTERM/SIGINT after saving a checkpoint (resume with --resume)."""
    from . import synth  # noqa: F401  (registers the synth: video source, so spec datasets load)

    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the run folder
    except SystemExit as e:  # argparse printed "longvid ...: error: argument --x: ..."
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from .parallel.launch import fail_fast

            # Under torchrun a failing rank exits at once, so its peers fail instead of hanging.
            return fail_fast(_exit_on_preemption(args.func))(args)
        return _exit_on_preemption(args.func)(args)
    except LongvidError as e:
        print(f"longvid: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
