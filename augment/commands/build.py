"""Learn a token per class, then generate the synthetic training set with them, into one OUT directory.

Equivalent to `augment learn --out OUT` followed by `augment generate --tokens OUT --out OUT`; both steps
skip finished work, so rerunning an interrupted build continues it. With several workers (torchrun, a Slurm
array, --worker-index/--num-workers) every worker learns its share of classes, then waits until every
class's token is in OUT (up to --wait-tokens seconds, polling the shared directory: no process group
needed) and generates its share of shards.
"""

from __future__ import annotations

import argparse
import sys

from augment.commands.common import add_config_arguments, resolve_config, show_progress, workers_from
from augment.commands.generate import add_generate_arguments, apply_refine_arguments
from augment.commands.learn import add_learn_arguments
from augment.labels import read_label_set

LEARN_ONLY = {
    "init_word": "init_word",
    "learn_batch_size": "batch_size",
    "max_classes_per_step": "max_classes_per_step",
    "lr": "lr",
    "max_steps": "max_steps",
}
SHARED = ("num_inference_steps", "guidance_scale", "guidance_cutoff", "seed")
GENERATE_ONLY = (
    "images_per_class",
    "shard_size",
    "image_format",
    "batch_size",
    "scheduler",
    "channels_last",
    "compile",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_learn_arguments(p, batch_flag="--learn-batch-size", shared_note=" (learn and generate)")
    p.add_argument("--batch-size", type=int, help="images per pipeline call when generating")
    p.add_argument(
        "--wait-tokens",
        type=float,
        default=6 * 3600.0,
        help="with several workers: seconds to wait for the other workers' tokens before generating (default 6 h)",
    )
    add_generate_arguments(p)


def run(args: argparse.Namespace) -> int:
    from augment.jobs.build import build

    overrides = {f"learn.{v}": getattr(args, k) for k, v in LEARN_ONLY.items()}
    overrides.update({f"{s}.{k}": getattr(args, k) for k in SHARED for s in ("learn", "generate")})
    overrides.update({f"generate.{k}": getattr(args, k) for k in GENERATE_ONLY})
    cfg = resolve_config(args, overrides)
    apply_refine_arguments(args, cfg.generate)  # a bad refine option fails before learning
    result = build(args.labels, args.out, cfg, workers=workers_from(args), wait_tokens=args.wait_tokens,
                   overwrite=args.overwrite, score=args.score, dry_run=args.dry_run,
                   progress=show_progress(args))  # fmt: skip
    if args.dry_run:
        print(f"learn: {len(read_label_set(args.labels))} classes, {result.pending_classes} pending")
        if result.pending_classes:
            return 0
    else:
        if result.learn.note:
            print(f"augment: note: {result.learn.note}", file=sys.stderr)
        print(result.learn.summary())
    if result.generate.note:
        print(f"augment: note: {result.generate.note}", file=sys.stderr)
    print(result.generate.summary(args.out))
    return 0
