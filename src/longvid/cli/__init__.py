"""The `longvid` command. It only parses arguments and calls into the package (one module per group of subcommands)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import LongvidError
from .args import (
    BENCHMARK_NAMES,
    MAX_FRAMES,
    PARALLEL_FLAGS,
    _overrides,
    POSITIVE,
    _compress_flags,
    _device_flags,
    _finite_at_least,
    _frame_counts,
    _inference_video_flags,
    _int_at_least,
    _parallel_flags,
    _run_folder_flags,
    _seed_list,
    _synth_size,
)
from .evaluate import _niah_parser, cmd_data_filter, cmd_eval
from .pipeline import _reason_parser, _serve_parser, cmd_data_synth
from .train import cmd_demo, cmd_grpo, cmd_sft


log = logging.getLogger("longvid")

# Names tests and scripts use from `longvid.cli`.
__all__ = ["BENCHMARK_NAMES", "MAX_FRAMES", "PARALLEL_FLAGS", "_overrides", "build_parser", "main"]


def _recipe_flags(p: argparse.ArgumentParser, set_example: str) -> None:
    """What every training command takes: the recipe, its common overrides, the run folder, parallelism."""
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument("--train", help="training jsonl (overrides the config)")
    p.add_argument("--out-dir", dest="out_dir", help="run folder (overrides the config)")
    p.add_argument("--steps", type=POSITIVE, help="optimizer steps (overrides the config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"override any config key, e.g. {set_example}")
    _run_folder_flags(p)
    _parallel_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longvid", description="Teach vision-language models to reason about long videos.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic data → CoT-SFT of the tiny model → evaluation → report")
    p.add_argument("--out", help="report folder (default: runs/demo; with --compress runs/demo-compress)")
    p.add_argument("--quick", action="store_true", help="the ≤2-minute variant used in CI")
    p.add_argument("--compress", action="store_true", help="visual summary tokens: train with random ratios, "
                   "then needle-in-a-haystack at ratios 1/4/16 with heatmaps")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument("--seeds", type=_seed_list, help="comma-separated seeds, e.g. 0,1,2: one demo per seed in OUT/seed<S>/ and their comparison (mean and spread) in OUT/report.md")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sft", help="chain-of-thought supervised fine-tuning")
    _recipe_flags(p, "optim.lr=1e-4")
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
    p.add_argument("--model", help="checkpoint folder to start from (overrides model.path)")
    _recipe_flags(p, "beta=0.04")
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
    from ..preempt import Preempted

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
    from .. import synth  # noqa: F401  (registers the synth: video source, so spec datasets load)

    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the run folder
    except SystemExit as e:  # argparse printed "longvid ...: error: argument --x: ..."
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from ..parallel.launch import fail_fast

            # Under torchrun a failing rank exits at once, so its peers fail instead of hanging.
            return fail_fast(_exit_on_preemption(args.func))(args)
        return _exit_on_preemption(args.func)(args)
    except LongvidError as e:
        print(f"longvid: error: {e}", file=sys.stderr)
        return 2
