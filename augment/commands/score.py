"""Score a generated set: held-out classifier top-1/top-5 per class, and FID/KID against a reference set.

The classifier is --classifier, else the config's eval_classifier (`--preset toy`: the toy world's held-out
classifier). --reference is another shards directory or a dataset spec (`augment.data.datasets`, e.g.
`fashion-mnist`, `cub:DIR`; add `:train` for the train split, the test split is the default). FID/KID features
come from --features: `inception` (needs torch-fidelity and its weights) or any classifier spec's penultimate
layer; by default inception when available, else the classifier's own. The extractor is always named in the
output. --out writes everything as JSON (atomically).
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

from augment.commands.common import add_progress_argument, show_progress
from augment.commands.options import add_fields
from augment.config import RunConfig
from augment.errors import UserError
from augment.run.atomic import write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, help="an `augment generate` output directory (a path or a URL)")
    p.add_argument("--preset", help="preset whose eval_classifier is the default classifier (e.g. toy)")
    p.add_argument("--config", help="YAML config file (same keys as a preset)")
    p.add_argument(
        "--classifier", help="classifier spec: timm:NAME, torchvision:NAME, hf:ID_OR_DIR, ckpt:DIR, clip:ID_OR_DIR"
    )
    p.add_argument("--reference", help="reference images for FID/KID: a shards directory or a dataset spec")
    p.add_argument("--reference-limit", type=int, help="use at most N reference images (a seeded random subset)")
    p.add_argument("--features", help="FID/KID feature extractor: 'inception' or a classifier spec")
    add_fields(p, RunConfig, recurse=False, only=("label_match", "device"))
    p.add_argument("--out", type=Path, help="write the results to this JSON file")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_progress_argument(p)


def command_line(args: argparse.Namespace) -> str:
    """The command as it could be typed again (rebuilt from the parsed options)."""
    words = ["augment", "score"]
    for key, value in vars(args).items():
        if key.startswith("_") or key == "command" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def score(args: argparse.Namespace) -> dict[str, Any]:
    """The report of augment.score_set for the parsed options, with the command that made it."""
    from augment.config import load_config
    from augment.jobs.score import score_set

    if args.out is not None and not str(args.out).strip():
        raise UserError("--out: an empty path")
    if args.out is not None:
        parent = args.out.parent if str(args.out.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"--out {args.out}: {parent} is not a writable directory")
        from augment.run.storage import check_out

        check_out(parent, "out")  # a write really works there (/proc, a read-only mount), before scoring
        if args.out.is_dir():
            raise UserError(f"--out {args.out}: is a directory, expected a .json file path")
    config = load_config(args.preset, args.config, {"label_match": args.label_match})
    report = score_set(args.shards, config, classifier=args.classifier,
                       reference=args.reference, reference_limit=args.reference_limit, features=args.features,
                       batch_size=args.batch_size, device=args.device, progress=show_progress(args))  # fmt: skip
    report["command"] = command_line(args)
    return report


def run(args: argparse.Namespace) -> int:
    from augment.run.manifest import versions

    report = score(args)
    report["versions"] = versions()
    print(report.summary())
    if args.out is not None:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
