"""Options shared by the subcommands, and turning them into a config and a Workers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from augment.config import RunConfig, load_config
from augment.run.workers import Workers


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="label set file (manifests/*.txt format)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--preset", help="preset name from augment/presets (toy, sd14-cub, sd14-cub-original, sd14-imagenet, sd21-base)"
    )
    p.add_argument("--config", help="YAML config file (same keys as a preset)")
    p.add_argument("--generator", help="diffusers Stable Diffusion pipeline: hub id or local directory")
    p.add_argument("--guide", help="guide classifier spec: timm:NAME, torchvision:NAME, hf:ID_OR_DIR, ckpt:DIR")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", help="auto, fp32, fp16, bf16")
    add_label_match_argument(p)
    p.add_argument("--worker-index", type=int, help="this worker's index (default: $RANK or $SLURM_ARRAY_TASK_ID)")
    p.add_argument(
        "--num-workers", type=int, help="number of workers (default: $WORLD_SIZE or $SLURM_ARRAY_TASK_COUNT)"
    )
    p.add_argument(
        "--claim",
        action="store_true",
        help="claim mode: workers take classes and shards from OUT one at a time (no static split; "
        "a dead worker's unit is taken over once its lease expires)",
    )
    p.add_argument(
        "--lease",
        type=float,
        default=300.0,
        help="claim mode: seconds without a heartbeat after which a claim is taken over (default 300)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (the default when stderr is not a terminal)"
    )


def resolve_config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> RunConfig:
    overrides = {"generator": args.generator, "guide": args.guide, "device": args.device, "dtype": args.dtype,
                 "label_match": args.label_match}  # fmt: skip
    return load_config(args.preset, args.config, {**overrides, **(extra or {})})


def workers_from(args: argparse.Namespace) -> Workers:
    return Workers(args.worker_index, args.num_workers, getattr(args, "claim", False), getattr(args, "lease", 300.0))


def add_cutoff_argument(p: argparse.ArgumentParser, shared_note: str = "") -> None:
    p.add_argument(
        "--guidance-cutoff",
        type=float,
        help="fraction of the denoising steps, the first ones, with classifier-free guidance; the rest make one "
        f"UNet evaluation instead of two (default: preset, SD presets 0.5; 1 = all, the paper's){shared_note}",
    )


def add_label_match_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-match",
        choices=("check", "by-index", "by-name"),
        help="how classes find the guide's class index: check (default) refuses a file whose index<TAB>name lines "
        "do not match the guide's label names; by-index trusts the indices; by-name looks each name up",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar unless --no-progress, or stderr is not a terminal (a log file, a pipe, a batch job)."""
    import sys

    return not args.no_progress and sys.stderr.isatty()
