"""What every run command shares: the label set, OUT, the preset or config file, the config's top-level
flags and the workers' (both derived from their dataclasses: augment.commands.options), and turning the parsed
flags into a RunConfig and a Workers."""

from __future__ import annotations

import argparse
import sys

from augment.commands.options import add_fields, overrides
from augment.config import LoraConfig, RunConfig, list_presets, load_config
from augment.run.workers import Workers


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="label set file (manifests/*.txt format)")
    p.add_argument(
        "--out",
        required=True,
        help="output directory: a path, or a URL (s3://bucket/run; needs the extra of its scheme)",
    )
    p.add_argument("--preset", help=f"preset name from augment/presets ({', '.join(list_presets())})")
    p.add_argument("--config", help="YAML config file (same keys as a preset)")
    add_fields(p, RunConfig, recurse=False)
    add_fields(p, LoraConfig, "lora.", only=("weights",))  # --lora DIR: an adapter `augment adapt` trained
    add_fields(p, Workers)
    add_progress_argument(p)
    p.add_argument("--plan", action="store_true",
                   help="print the UNet evaluations this would cost, per class, in total and per worker, and exit "
                   "(no model loads, nothing written)")  # fmt: skip
    p.add_argument("--rates", metavar="FILE",
                   help="with --plan: a JSON of measured UNet rates on your device (benchmarks/gpu_check.py --out "
                   "writes one): the plan adds the time they give")  # fmt: skip


def print_plan(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    """`--plan`: the run's cost (augment.jobs.plan) on stdout."""
    from augment.jobs.plan import plan_run, read_rates

    rates = None if args.rates is None else read_rates(args.rates)
    plan = plan_run(args.labels, resolve_config(args), workers=workers_from(args), stages=stages, rates=rates)
    print(plan.summary())
    return 0


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (the default when stderr is not a terminal)"
    )


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Defaults ← preset ← config file ← the flags given."""
    if getattr(args, "rates", None) is not None and not getattr(args, "plan", False):
        from augment.errors import UserError

        raise UserError("--rates goes with --plan (it turns the plan's counts into time)", "rates")
    return load_config(args.preset, args.config, overrides(args))


def workers_from(args: argparse.Namespace) -> Workers:
    return Workers.from_flags(vars(args))


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar unless --no-progress, or stderr is not a terminal (a log file, a pipe, a batch job)."""
    return not args.no_progress and sys.stderr.isatty()
