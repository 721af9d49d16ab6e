"""`longvid demo`, `sft` and `grpo`: the run folder, the mesh, the checked data and model, then the trainer."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .args import PARALLEL_FLAGS, _overrides
from .evaluate import _settings

log = logging.getLogger("longvid")


def cmd_demo(args: argparse.Namespace) -> int:
    if args.compress:
        return _demo_compress(args)
    args.out = args.out or "runs/demo"
    from ..demo import run_demo, run_demo_seeds

    if args.seeds:
        summary = run_demo_seeds(args.out, args.seeds, quick=args.quick, progress=not args.no_progress)["summary"]
        sft, grpo, gain = (summary[k] for k in ("after SFT", "after GRPO", "gain"))
        print(
            f"over seeds {','.join(map(str, args.seeds))}: after SFT {100 * sft['mean']:.1f} ± {100 * sft['std']:.1f}%, "
            f"after GRPO {100 * grpo['mean']:.1f} ± {100 * grpo['std']:.1f}%, gain {100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f} points; "
            f"report: {Path(args.out) / 'report.md'}"
        )
        return 0
    metrics = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(f"accuracy {100 * metrics['accuracy']:.1f}% (chance {100 * metrics['chance']:.1f}%), report: {Path(args.out) / 'report.md'}")
    return 0


def _demo_compress(args: argparse.Namespace) -> int:
    from ..demo_compress import run_compress_demo
    from ..errors import ConfigError

    if args.seeds:
        raise ConfigError("demo --compress runs one seed: use --seed S (--seeds is the GRPO demo's comparison)")
    args.out = args.out or "runs/demo-compress"
    metrics = run_compress_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    accuracy = ", ".join(f"ratio {r}: {100 * a:.1f}%" for r, a in metrics["accuracy"].items())
    print(f"NIAH {accuracy} (chance {100 * metrics['chance']:.1f}%), report: {Path(args.out) / 'report.md'}")
    return 0


def _training_set(config, main_rank: bool = True):
    """The training rows with their videos checked up front (bad ones skipped and counted, or an error)."""
    from ..data.dataset import VideoDataset

    dataset = VideoDataset.from_jsonl(config.train, skip_bad=config.skip_bad, video=config.video)
    dataset.validate_videos(progress=config.progress and main_rank)
    if dataset.num_bad:
        log.warning("skipped %d bad rows of %s", dataset.num_bad, config.train)
    return dataset


def _mesh(config):
    """The process mesh from torchrun's environment (a mesh of one without it), on `model.device`."""
    from ..parallel.mesh import init_mesh

    par = config.parallel
    return init_mesh(sp=par.sp, ulysses=par.ulysses, ring=par.ring, device=config.model.device)


def _run_trainer(make_trainer, config, args: argparse.Namespace, new_tokens):
    """Hold the run folder, build the mesh, data and model, check them, train; returns
    (history, dataset) on rank 0, None elsewhere. `make_trainer(adapter, dataset, mesh)` builds the
    recipe's trainer; `new_tokens` (int, or per sample) is what each row adds to its prompt."""
    from torch.utils.tensorboard import SummaryWriter

    from ..model import load_adapter
    from ..preflight import check_lora_targets, check_rows_fit
    from ..runs import run_folder

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


def cmd_sft(args: argparse.Namespace) -> int:
    from ..inputs import target_text
    from ..runs import resolve_config
    from ..sft.trainer import SFTConfig, SFTTrainer

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


def cmd_grpo(args: argparse.Namespace) -> int:
    from ..config import config_data
    from ..rl.trainer import GRPOConfig, GRPOTrainer
    from ..runs import resolve_config, trained_video_settings

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
