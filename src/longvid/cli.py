"""The `longvid` command. It only parses arguments and calls into the package."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import DataError, LongvidError

log = logging.getLogger("longvid")


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
    """The process mesh from torchrun's environment (a mesh of one without it)."""
    from .parallel.mesh import init_mesh

    return init_mesh(sp=config.parallel.sp, ulysses=config.parallel.ulysses, ring=config.parallel.ring)


def _run_trainer(make_trainer, config, resume: bool):
    """Build the mesh, data and model, train; returns (history, dataset) on rank 0, None elsewhere.
    `make_trainer(adapter, dataset, mesh)` builds the recipe's trainer."""
    from torch.utils.tensorboard import SummaryWriter

    from .model import load_adapter

    mesh = _mesh(config)
    dataset = _training_set(config, mesh.rank == 0)
    trainer = make_trainer(load_adapter(config.model), dataset, mesh)
    writer = SummaryWriter(str(Path(config.out_dir) / "tb")) if mesh.rank == 0 else None
    history = trainer.train(resume=resume, writer=writer)
    if writer is None:
        return None
    writer.close()
    return history, dataset


PARALLEL_FLAGS = {"sp": "parallel.sp", "ulysses": "parallel.ulysses", "ring": "parallel.ring"}


def cmd_sft(args: argparse.Namespace) -> int:
    from .config import load_config
    from .sft.trainer import SFTConfig, SFTTrainer

    config = load_config(
        SFTConfig, args.config, _overrides(args, {"train": "train", "out_dir": "out_dir", "steps": "steps", **PARALLEL_FLAGS})
    )
    run = _run_trainer(
        lambda adapter, data, mesh: SFTTrainer(adapter, config, data.samples, data.load_frames, mesh=mesh), config, args.resume
    )
    if run is None:
        return 0
    history, dataset = run
    print(f"trained {history[-1]['step']} steps, final loss {history[-1]['loss']:.4f}; {dataset.num_bad} bad rows "
          f"skipped; checkpoints in {Path(config.out_dir) / 'checkpoints'}")
    return 0


def _checked_data_and_model(args: argparse.Namespace):
    """The dataset (videos checked up front) and the model, for commands that only run inference."""
    from .config import ModelConfig, VideoConfig
    from .data.dataset import VideoDataset
    from .model import load_adapter

    data = VideoDataset.from_jsonl(args.data, skip_bad=args.skip_bad, video=VideoConfig(num_frames=args.frames, size=args.size))
    data.validate_videos()
    return data, load_adapter(ModelConfig(path=args.model))


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
    adapter = load_adapter(ModelConfig(path=args.model))
    result = run_benchmark(bench, adapter, loaded, videos, num_frames=args.frames, size=args.size,
                           max_new_tokens=args.max_new_tokens, limit=args.limit, skip_bad=args.skip_bad)
    path = write_report(bench, result, Path(args.out))
    print(f"{bench.title}: official {100 * result.official['overall']:.1f}%, ours {100 * result.ours.accuracy:.1f}% "
          f"on {len(result.ours.records)} rows; {len(result.bad)} bad rows skipped; {path.with_suffix('.md')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.benchmark:
        return _eval_benchmark(args)
    from .config import VideoConfig
    from .data.dataset import VideoDataset
    from .eval.mcq import frames_scaling, evaluate, write_result
    from .eval.plots import plot_frames_scaling

    data, adapter = _checked_data_and_model(args)
    bad = data.bad
    samples = data.samples[: args.limit] if args.limit else data.samples

    def loader(n: int):
        return VideoDataset(samples, root=data.root, video=VideoConfig(num_frames=n, size=args.size)).load_frames

    out = Path(args.out)
    result = evaluate(adapter, samples, loader(args.frames), max_new_tokens=args.max_new_tokens)
    result.num_frames = args.frames
    write_result(result, out, "eval")
    print(f"accuracy {100 * result.accuracy:.1f}% (chance {100 * result.chance:.1f}%) on {len(samples)} samples; "
          f"{len(bad)} bad rows skipped; {out / 'eval.md'}")
    if args.frames_scaling:
        counts = [int(x) for x in args.frames_scaling.split(",")]
        results = frames_scaling(adapter, samples, loader, counts, max_new_tokens=args.max_new_tokens)
        for r in results:
            write_result(r, out, f"eval_{r.num_frames}f")
        plot_frames_scaling({"model": [(r.num_frames, r.accuracy) for r in results]}, out / "frames_scaling.png", chance=result.chance)
        print("frames scaling: " + ", ".join(f"{r.num_frames}f {100 * r.accuracy:.1f}%" for r in results))
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .rl.trainer import GRPOConfig, GRPOTrainer

    flags = {"train": "train", "out_dir": "out_dir", "steps": "steps", "model": "model.path", **PARALLEL_FLAGS}
    config = load_config(GRPOConfig, args.config, _overrides(args, flags))
    run = _run_trainer(
        # The dataset knows each video's identity without decoding it: cache hits skip the decode.
        lambda adapter, data, mesh: GRPOTrainer(
            adapter, config, data.samples, data.load_frames, mesh=mesh, video_key=data.video_key
        ),
        config,
        args.resume,
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

    dataset, adapter = _checked_data_and_model(args)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    correct = answer_many(adapter, dataset, args.num, sampling, seed=args.seed)
    paths = write_splits(dataset, correct, args.data)
    print(paths["summary"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .synth import write_dataset

    path = write_dataset(
        args.out, args.num, num_frames=args.frames, size=args.size, seed=args.seed, as_files=not args.specs
    )
    print(f"wrote {args.num} samples to {path}")
    return 0


def _parallel_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sp", type=int, help="sequence-parallel ranks per sample (under torchrun)")
    p.add_argument("--ulysses", type=int, help="Ulysses (all-to-all) part of --sp; the rest is ring")
    p.add_argument("--ring", type=int, help="ring part of --sp; the rest is Ulysses")


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
    p.add_argument("--steps", type=int, help="optimizer steps (overrides the config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. optim.lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    _parallel_flags(p)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("eval", help="multiple-choice evaluation (accuracy overall and per category)")
    p.add_argument("--data", required=True, help="jsonl dataset, or with --benchmark its file (or folder) as downloaded")
    p.add_argument("--benchmark", choices=BENCHMARK_NAMES, help="read --data as this benchmark's own format and "
                   "report its official score beside ours")
    p.add_argument("--videos", help="with --benchmark: the folder holding its videos (mp4, webm, mkv)")
    p.add_argument("--model", help="checkpoint folder (default: the untrained tiny model)")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--frames-scaling", help="comma-separated frame counts, e.g. 16,32,64")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--limit", type=int, help="evaluate only the first N samples")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed rows (counted) instead of failing")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("grpo", help="GRPO from an SFT checkpoint (encode once, shared-prefix rollout and training)")
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument("--train", help="training jsonl (overrides the config)")
    p.add_argument("--model", help="checkpoint folder to start from (overrides model.path)")
    p.add_argument("--out-dir", dest="out_dir", help="run folder (overrides the config)")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides the config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. beta=0.04")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    _parallel_flags(p)
    p.set_defaults(func=cmd_grpo)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write synthetic long-video reasoning samples (mp4 + jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--specs", action="store_true", help="write synthetic specs instead of mp4 files")
    p.set_defaults(func=cmd_data_synth)

    p = data.add_parser("filter", help="label questions easy/medium/hard by answering each N times")
    p.add_argument("--data", required=True, help="jsonl dataset; the splits are written beside it")
    p.add_argument("--model", help="checkpoint folder (default: the untrained tiny model)")
    p.add_argument("--num", type=int, default=10, help="answers per question (default 10)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=cmd_data_filter)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import synth  # noqa: F401  (registers the synth: video source, so spec datasets load)

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from .parallel.launch import fail_fast

            # Under torchrun a failing rank exits at once, so its peers fail instead of hanging.
            return fail_fast(args.func)(args)
        return args.func(args)
    except LongvidError as e:
        print(f"longvid: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
