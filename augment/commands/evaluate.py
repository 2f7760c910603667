"""Score a generated set: held-out classifier top-1/top-5 per class, and FID/KID against a reference set.

The classifier is --classifier, else the config's eval_classifier (`--preset toy`: the toy world's held-out
classifier). --reference is another shards directory or a dataset spec (`downstream.datasets`, e.g.
`fashion-mnist`, `cub:DIR`; add `:train` for the train split, the test split is the default). FID/KID features
come from --features: `inception` (needs torch-fidelity and its weights) or any classifier spec's penultimate
layer; by default inception when available, else the classifier's own. The extractor is always named in the
output. --out writes everything as JSON (atomically).
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from pathlib import Path
from typing import Any

from augment.atomic import write_json
from augment.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, type=Path, help="an `augment generate` output directory")
    p.add_argument("--preset", help="preset whose eval_classifier is the default classifier (e.g. toy)")
    p.add_argument("--config", help="YAML config file (same keys as a preset)")
    p.add_argument("--classifier", help="classifier spec: timm:NAME, torchvision:NAME, hf:ID_OR_DIR, ckpt:DIR")
    p.add_argument("--reference", help="reference images for FID/KID: a shards directory or a dataset spec")
    p.add_argument("--reference-limit", type=int, help="use at most N reference images (a seeded random subset)")
    p.add_argument("--features", help="FID/KID feature extractor: 'inception' or a classifier spec")
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


def _check_args(args: argparse.Namespace) -> None:
    from augment.shards import tar_files

    if not args.shards.is_dir():
        raise UserError(f"--shards {args.shards}: no such directory")
    if not tar_files(args.shards):
        raise UserError(f"--shards {args.shards}: no .tar shards in it or in its shards/ folder")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if args.reference_limit is not None and args.reference_limit < 2:
        raise UserError(f"--reference-limit must be ≥ 2, got {args.reference_limit}")
    if (args.features or args.reference_limit) and not args.reference:
        raise UserError("--features and --reference-limit are for FID/KID and need --reference")
    if args.out is not None:
        parent = args.out.parent if str(args.out.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"--out {args.out}: {parent} is not a writable directory")
        if args.out.is_dir():
            raise UserError(f"--out {args.out}: is a directory, expected a .json file path")


def _feature_extractor(spec: str | None, classifier, classifier_spec: str, device):
    """(module or Guide, name) for FID/KID features; default: inception when it loads, else the classifier."""
    from augment.evaluate import INCEPTION, InceptionFeatures
    from augment.guide import load_guide

    if spec in (None, INCEPTION):
        try:
            return InceptionFeatures().to(device), "inception (torchmetrics InceptionV3, 2048-d pool features)"
        except UserError:
            if spec == INCEPTION:
                raise
    spec = spec or classifier_spec
    guide = classifier if spec == classifier_spec else load_guide(spec, device)
    return guide, f"{spec} (penultimate layer)"


def _progress(total: int, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=disable, dynamic_ncols=True)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Check every input cheaply, then score the shards and (with --reference) compute FID/KID."""
    import torch

    from augment import evaluate as ev
    from augment.config import load_config
    from augment.generator import resolve_device
    from augment.guide import load_guide

    _check_args(args)
    labels = ev.shard_label_set(args.shards)
    cfg = load_config(args.preset, args.config, {})
    spec = args.classifier or cfg.eval_classifier
    if not spec:
        raise UserError("no classifier: pass --classifier SPEC, or a --preset/--config with eval_classifier")
    device = resolve_device(args.device or cfg.device)
    classifier = load_guide(spec, device)
    features, feature_name, reference = None, None, None
    if args.reference:
        features, feature_name = _feature_extractor(args.features, classifier, spec, device)
        reference = ev.reference_images(args.reference, labels, args.reference_limit)

    t0 = time.time()
    with _progress(ev.shard_count(args.shards), "scoring", args.no_progress) as bar:
        result = ev.score_shards(
            args.shards, classifier, labels, features=features, batch_size=args.batch_size, on_images=bar.update
        )
    report: dict[str, Any] = {
        "shards": str(args.shards),
        "classifier": spec,
        "images": result.images,
        "topk": result.topk,
        "classes": [
            {
                "position": c.position,
                "name": c.name,
                "classifier_index": c.classifier_index,
                "n": c.n,
                "top1": c.top1 if c.n else None,
                "top5": c.top5 if c.n else None,
            }
            for c in result.classes
        ],
        **result.means(),
    }
    if reference is not None:
        count, images = reference
        with _progress(count, "reference", args.no_progress) as bar:
            real, real_classes = ev.extract_features(images, features, device, args.batch_size, on_images=bar.update)
        fake, fake_classes = torch.cat(result.features), torch.cat(result.feature_classes)
        report.update(
            {
                "reference": args.reference,
                "reference_images": len(real),
                "features": {"name": feature_name, "dim": int(fake.shape[1])},
                **ev.fid_kid(fake, real),
            }
        )
        pr = ev.per_class_precision_recall(fake, fake_classes, real, real_classes, len(labels))
        for row, scores in zip(report["classes"], pr):
            row.update(scores or {"precision": None, "recall": None})
        scored = [s for s in pr if s]
        report["precision_recall"] = {
            "k": ev.PR_K,
            "classes": len(scored),
            **({key: sum(s[key] for s in scored) / len(scored) for key in ("precision", "recall")} if scored else {}),
        }
    report.update(
        {
            "seconds": round(time.time() - t0, 2),
            "command": command_line(args),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    return report


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
    from augment.commands.common import versions

    report = evaluate(args)
    report["versions"] = versions()
    print(format_report(report))
    if args.out is not None:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
