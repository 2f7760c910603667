"""Generate a synthetic training set into webdataset shards, with learned class tokens (or --no-tokens).

Writes OUT/shards/<set>-{number:06d}.{tar,json} (mixed shards: augment.data.shards), OUT/manifest.json and,
once every unit exists, OUT/_info.json. Finished units are skipped, so an interrupted run continues where it
stopped; workers (--worker-index/--num-workers, or $RANK/$WORLD_SIZE, or Slurm) take every N-th unit.
"""

from __future__ import annotations

import argparse
import sys

from augment.commands.common import add_run_arguments, print_plan, resolve_config, show_progress, workers_from
from augment.commands.options import add_fields
from augment.config import GenerateConfig
from augment.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="directory with learned tokens (a learn/build OUT: a path or a URL)")
    src.add_argument("--no-tokens", action="store_true", help="plain prompts: the baseline, same seeds")
    add_fields(p, GenerateConfig, "generate.")
    add_run_switches(p)


def add_run_switches(p: argparse.ArgumentParser) -> None:
    """How generation runs, beside its config (shared with `build`)."""
    p.add_argument("--overwrite", action="store_true", help="redo units made with another config")
    p.add_argument("--dry-run", action="store_true", help="print units total/done/pending and exit")
    p.add_argument("--score", action="store_true", help="record the guide's probability of each image")


def check_refine(args: argparse.Namespace, cfg) -> None:
    """DATE's own flags mean nothing without DATE: refused before any model loads."""
    given = [d for d in vars(args) if d.startswith("generate.refine_options.") and getattr(args, d) is not None]
    if given and cfg.generate.refine is None:
        raise UserError("--refine-step-size / --refine-every need --refine date")


def run(args: argparse.Namespace) -> int:
    if args.plan:
        return print_plan(args, ("generate",))
    from augment.jobs.generate import generate_set

    cfg = resolve_config(args)
    check_refine(args, cfg)
    tokens = None if args.no_tokens else args.tokens
    result = generate_set(args.labels, args.out, cfg, tokens=tokens, workers=workers_from(args),
                          overwrite=args.overwrite, score=args.score, dry_run=args.dry_run,
                          progress=show_progress(args))  # fmt: skip
    if result.note:
        print(f"augment: note: {result.note}", file=sys.stderr)
    print(result.summary(args.out))
    return 0
