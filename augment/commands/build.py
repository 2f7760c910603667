"""Learn a token per class, then generate the synthetic training set with them, into one OUT directory.

Equivalent to `augment learn --out OUT` followed by `augment generate --tokens OUT --out OUT`; both steps
skip finished work, so rerunning an interrupted build continues it. With several workers, every worker
learns its share of classes first; generation needs every class's token, so run `learn` on all workers
before `generate` (or rerun build once all have learned).
"""

from __future__ import annotations

import argparse

from augment.commands.common import add_config_arguments, resolve_config
from augment.commands.generate import add_generate_arguments, apply_refine_arguments, generate
from augment.commands.learn import add_learn_arguments, learn

LEARN_ONLY = {"init_word": "init_word", "learn_batch_size": "batch_size", "max_classes_per_step":
              "max_classes_per_step", "lr": "lr", "max_steps": "max_steps"}
SHARED = ("num_inference_steps", "guidance_scale", "seed")
GENERATE_ONLY = ("images_per_class", "shard_size", "image_format", "batch_size", "scheduler")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_learn_arguments(p, batch_flag="--learn-batch-size", shared_note=" (learn and generate)")
    p.add_argument("--batch-size", type=int, help="images per pipeline call when generating")
    add_generate_arguments(p)


def run(args: argparse.Namespace) -> int:
    overrides = {f"learn.{v}": getattr(args, k) for k, v in LEARN_ONLY.items()}
    overrides.update({f"{s}.{k}": getattr(args, k) for k in SHARED for s in ("learn", "generate")})
    overrides.update({f"generate.{k}": getattr(args, k) for k in GENERATE_ONLY})
    cfg = resolve_config(args, overrides)
    apply_refine_arguments(args, cfg.generate)  # a bad refine option fails before learning
    args.no_tokens = False
    if args.dry_run:
        from augment.labels import read_label_set
        from augment.tokens_io import is_learned

        labels = read_label_set(args.labels)
        pending = [c for c in labels.classes if not is_learned(args.out, c)]
        print(f"learn: {len(labels)} classes, {len(pending)} pending")
        if pending:
            return 0
    else:
        learn(args, cfg)
    generate(args, cfg, tokens=args.out)
    return 0
