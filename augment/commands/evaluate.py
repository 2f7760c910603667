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

from augment.atomic import write_json
from augment.commands.common import add_label_match_argument
from augment.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, type=Path, help="an `augment generate` output directory")
    p.add_argument("--preset", help="preset whose eval_classifier is the default classifier (e.g. toy)")
    p.add_argument("--config", help="YAML config file (same keys as a preset)")
    p.add_argument("--classifier", help="classifier spec: timm:NAME, torchvision:NAME, hf:ID_OR_DIR, ckpt:DIR")
    p.add_argument("--reference", help="reference images for FID/KID: a shards directory or a dataset spec")
    p.add_argument("--reference-limit", type=int, help="use at most N reference images (a seeded random subset)")
    p.add_argument("--features", help="FID/KID feature extractor: 'inception' or a classifier spec")
    add_label_match_argument(p)
    p.add_argument("--out", type=Path, help="write the results to this JSON file")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (default: the config's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def command_line(args: argparse.Namespace) -> str:
    """The command as it could be typed again (rebuilt from the parsed options)."""
    words = ["augment", "eval"]
    for key, value in vars(args).items():
        if key.startswith("_") or key == "command" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The report of augment.score_set for the parsed options, with the command that made it."""
    from augment.config import load_config
    from augment.jobs.score import score_set

    if args.out is not None:
        parent = args.out.parent if str(args.out.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"--out {args.out}: {parent} is not a writable directory")
        if args.out.is_dir():
            raise UserError(f"--out {args.out}: is a directory, expected a .json file path")
    config = load_config(args.preset, args.config, {"label_match": args.label_match})
    report = score_set(args.shards, config, classifier=args.classifier,
                       reference=args.reference, reference_limit=args.reference_limit, features=args.features,
                       batch_size=args.batch_size, device=args.device, progress=not args.no_progress)  # fmt: skip
    return {**report, "command": command_line(args)}


def format_report(report: dict[str, Any]) -> str:
    """The per-class table and the summary lines, as printed."""
    k = report["topk"]
    width = max([len("class")] + [len(c["name"]) for c in report["classes"]])
    pr = "precision_recall" in report
    lines = [
        f"{'#':>4}  {'class':<{width}}  {'n':>6}  {'top-1 %':>7}  {f'top-{k} %':>7}"
        + ("  precision %  recall %" if pr else "")
    ]
    cell = lambda v, w: f"{v:{w}.2f}" if v is not None else " " * (w - 1) + "-"  # noqa: E731
    for c in report["classes"]:
        t1, t5 = (cell(c["top1"], 7), cell(c["top5"], 7)) if c["n"] else ("      -", "      -")
        extra = f"  {cell(c['precision'], 11)}  {cell(c['recall'], 8)}" if pr else ""
        lines.append(f"{c['position']:>4}  {c['name']:<{width}}  {c['n']:>6}  {t1}  {t5}{extra}")
    lines.append(
        f"macro mean (over classes): top-1 {report['macro']['top1']:.2f} %, top-{k} {report['macro']['top5']:.2f} %"
    )
    lines.append(
        f"micro mean (over {report['images']} images): top-1 {report['micro']['top1']:.2f} %, "
        f"top-{k} {report['micro']['top5']:.2f} %   classifier: {report['classifier']}"
    )
    if "fid" in report:
        lines.append(
            f"FID {report['fid']:.4f}   KID {report['kid']:.6f} ± {report['kid_std']:.6f} "
            f"(subset size {report['kid_subset_size']})   vs {report['reference']} "
            f"({report['reference_images']} images)"
        )
        lines.append(f"features: {report['features']['name']}, {report['features']['dim']}-d")
        p = report["precision_recall"]
        if p["classes"]:
            lines.append(
                f"precision {p['precision']:.2f} %, recall {p['recall']:.2f} % (k = {p['k']}, mean over "
                f"{p['classes']} classes with more than {p['k']} images on both sides)"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from augment.runs import versions

    report = evaluate(args)
    report["versions"] = versions()
    print(format_report(report))
    if args.out is not None:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
