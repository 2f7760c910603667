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

from augment.commands.common import add_config_arguments, resolve_config
from augment.commands.generate import add_generate_arguments, apply_refine_arguments, generate
from augment.commands.learn import add_learn_arguments, learn

LEARN_ONLY = {
    "init_word": "init_word",
    "learn_batch_size": "batch_size",
    "max_classes_per_step": "max_classes_per_step",
    "lr": "lr",
    "max_steps": "max_steps",
}
SHARED = ("num_inference_steps", "guidance_scale", "seed")
GENERATE_ONLY = ("images_per_class", "shard_size", "image_format", "batch_size", "scheduler")


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
        wait_for_tokens(args)
    generate(args, cfg, tokens=args.out)
    return 0


def wait_for_tokens(args: argparse.Namespace, poll: float = 5.0) -> None:
    """Block until every class of the label set has its token in OUT (other workers learn theirs), or fail
    with one line after --wait-tokens seconds."""
    import time

    from augment.errors import UserError
    from augment.labels import read_label_set
    from augment.tokens_io import is_learned

    labels = read_label_set(args.labels)
    deadline = time.time() + args.wait_tokens
    shown = False
    while True:
        missing = [c for c in labels.classes if not is_learned(args.out, c)]
        if not missing:
            return
        if time.time() >= deadline:
            raise UserError(
                f"{args.out}: {len(missing)} class(es) still without a token after waiting "
                f"{args.wait_tokens:.0f} s (e.g. {missing[0].name!r}); are the other workers running? "
                "rerun build once they have learned"
            )
        if not shown:
            print(f"waiting for {len(missing)} token(s) from the other workers", file=sys.stderr, flush=True)
            shown = True
        time.sleep(min(poll, max(deadline - time.time(), 0.0)))
