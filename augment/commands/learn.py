"""Learn one discriminative token per class of a label set (tokens only; see `build` for learn + generate).

Writes OUT/tokens/<slug>/{learned_embeds.safetensors,meta.json} and OUT/manifest.json. Classes already
learned in OUT are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys

from augment.commands.common import add_run_arguments, print_plan, resolve_config, show_progress, workers_from
from augment.commands.options import add_fields
from augment.config import LearnConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    add_fields(p, LearnConfig, "learn.")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a learner checkpoint made with another config instead of refusing",
    )


def run(args: argparse.Namespace) -> int:
    from augment.jobs.learn import learn_tokens

    if args.plan:
        return print_plan(args, ("learn",))

    result = learn_tokens(args.labels, args.out, resolve_config(args), workers=workers_from(args),
                          overwrite=args.overwrite, progress=show_progress(args))  # fmt: skip
    if result.note:
        print(f"augment: note: {result.note}", file=sys.stderr)
    print(result.summary())
    return 0
