"""`longvid eval` (jsonl or a benchmark's own files), `data filter` and `niah`: inference-only commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, DataError
from .args import _int_list


def _settings(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _inference_video(args: argparse.Namespace):
    """Frames and size for eval/filter: explicit flags, else what the checkpoint was trained with
    (its longvid.json), else 32 frames at 56 px. Says where they came from."""
    from ..config import VideoConfig
    from ..runs import trained_video_settings

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
    from ..config import ModelConfig
    from ..data.dataset import VideoDataset
    from ..model import load_adapter
    from ..preflight import check_rows_fit

    from ..model.folder import check_model_folder

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
    from ..config import ModelConfig
    from ..eval.benchmarks import BENCHMARKS, load_checked, run_benchmark, write_report
    from ..model import load_adapter
    from ..model.compress import compressor_for

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
                           limit=args.limit, skip_bad=args.skip_bad, compressor=compressor_for(adapter, args.model, args.compress_ratio))
    path = write_report(bench, result, Path(args.out))
    print(f"{bench.title}: official {100 * result.official['overall']:.1f}%, ours {100 * result.ours.accuracy:.1f}% "
          f"on {len(result.ours.records)} rows; {len(result.bad)} bad rows skipped; {path.with_suffix('.md')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.benchmark:
        return _eval_benchmark(args)
    import dataclasses

    from ..eval.mcq import frames_scaling, evaluate, write_result
    from ..eval.plots import plot_frames_scaling
    from ..model.compress import compressor_for

    data, adapter, video = _checked_data_and_model(args, args.max_new_tokens)
    bad = data.bad
    samples = data.samples[: args.limit] if args.limit else data.samples
    if not samples:
        from ..errors import DataError

        raise DataError(f"{args.data}: no rows left to evaluate ({len(bad)} bad rows skipped)")

    def loader(n: int | None):
        sampling = video if n is None else dataclasses.replace(video, num_frames=n, fps=None)
        return data.with_sampling(sampling, samples).load_frames

    out = Path(args.out)
    compressor = compressor_for(adapter, args.model, args.compress_ratio)
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


def cmd_data_filter(args: argparse.Namespace) -> int:
    from ..data.reason.filter import answer_many, write_splits
    from ..model.sampling import SamplingConfig

    dataset, adapter, _ = _checked_data_and_model(args, args.max_new_tokens)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    correct = answer_many(adapter, dataset, args.num, sampling, seed=args.seed)
    paths = write_splits(dataset, correct, args.data)
    print(paths["summary"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_niah(args: argparse.Namespace) -> int:
    from ..config import ModelConfig
    from ..eval.niah import load_needles, run_grid, video_item, write_report
    from ..model import load_adapter
    from ..model.compress import Compressor, summary_tokens_for

    ratios = _int_list(args.ratios, "--ratios")
    frames = _int_list(args.frames, "--frames")
    try:
        depths = [float(x) for x in args.depths.split(",")]
    except ValueError:
        raise ConfigError(f"--depths: expected comma-separated fractions, got {args.depths!r}") from None
    adapter = load_adapter(ModelConfig(path=args.model))
    summary = summary_tokens_for(adapter, args.model, ratios, args.untrained_summary)
    if args.haystack == "synthetic":
        from ..synth import needle_haystack

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
