"""Learn a token per class, then generate the synthetic training set with them, into one OUT directory.

Equivalent to `augment learn --out OUT` followed by `augment generate --tokens OUT --out OUT`; both steps
skip finished work, so rerunning an interrupted build continues it. With several workers (torchrun, Slurm,
--worker-index/--num-workers) every worker learns its share of groups of classes, then waits until every class's token
is in OUT (up to --wait-tokens seconds, polling the shared directory: no process group needed) and generates
its share of shards. Options both stages have (--steps, --guidance-scale, --guidance-cutoff, --seed) set both.
"""

from __future__ import annotations

import argparse
import sys

from augment.commands.common import add_run_arguments, print_plan, resolve_config, show_progress, workers_from
from augment.commands.generate import add_run_switches, check_refine
from augment.commands.options import add_fields
from augment.config import GenerateConfig, LearnConfig
from augment.run.workers import WAIT_TOKENS


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    add_fields(p, LearnConfig, "learn.", build=True, note=" (learn and generate)")
    add_fields(p, GenerateConfig, "generate.", build=True)
    p.add_argument(
        "--wait-tokens",
        type=float,
        default=WAIT_TOKENS,
        help="with several workers: seconds to wait for the other workers' tokens before generating "
        f"(default {WAIT_TOKENS / 3600:.0f} h)",
    )
    add_run_switches(p)


def run(args: argparse.Namespace) -> int:
    from augment.jobs.build import build

    if args.plan:
        return print_plan(args, ("learn", "generate"))

    cfg = resolve_config(args)
    check_refine(args, cfg)  # a bad option of either stage fails before learning
    result = build(args.labels, args.out, cfg, workers=workers_from(args), wait_tokens=args.wait_tokens,
                   overwrite=args.overwrite, score=args.score, dry_run=args.dry_run,
                   progress=show_progress(args))  # fmt: skip
    for note in (result.learn.note, result.generate.note):
        if note:
            print(f"augment: note: {note}", file=sys.stderr)
    print(result.summary(args.out))
    return 0
