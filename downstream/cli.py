"""`downstream fewshot` (the Table-2 grid) and `downstream train` (one classifier, optionally saved as `ckpt:`).

Exit 0 ok; 2 for bad input, with one line `downstream: error: ...` on stderr and nothing written (everything is
validated before OUT is created); anything else is a bug and surfaces with its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

from augment.errors import UserError

EXAMPLES = """examples:
  downstream fewshot --dataset fashion-mnist --labels manifests/fashion-mnist.txt \\
      --synthetic plain=runs/toy-plain --synthetic tokens=runs/toy --shots 0,3,9,15 --trials 3 --out runs/fewshot
  downstream train --dataset cub:/data/CUB_200_2011 --labels manifests/cub200.txt --shots all \\
      --epochs 30 --save-classifier runs/cub-guide
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become UserError: one line, exit 2, like every other input mistake."""

    def error(self, message: str):
        raise UserError(message)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        metavar="SPEC",
        help="cub:DIR | inat:DIR | imagefolder:DIR | hf:ID_OR_DIR | fashion-mnist[:DIR]",
    )
    p.add_argument("--labels", required=True, metavar="FILE", help="label set (manifests/*.txt)")
    p.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a synthetic set written by `augment generate` (repeatable); fewshot also takes NAME=learn:PRESET: "
        "for each shot count and trial a guide trained on those shots, tokens learned with it, a set generated",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the shot picks and the training of each trial")
    t = p.add_argument_group("training (defaults depend on the dataset: see downstream/train.py)")
    t.add_argument("--model", help="timm model name (toy: half-width resnet18; real: resnet50)")
    t.add_argument("--model-kwargs", type=json.loads, metavar="JSON", help="extra timm.create_model kwargs")
    t.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="timm's ImageNet weights (real data default: on; needs the hub or its cache)",
    )
    t.add_argument("--image-size", type=int)
    t.add_argument("--steps", type=int, help="optimisation steps per classifier (fixed whatever the data size)")
    t.add_argument("--epochs", type=float, help="instead of --steps: passes over the training images")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument(
        "--real-fraction",
        type=float,
        metavar="F",
        help="share of each batch drawn from the real shots when there are synthetic images too "
        "(default: none, uniform over all images)",
    )
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--optimizer", choices=["sgd", "adamw"])
    t.add_argument("--loader-workers", type=int, dest="workers", help="DataLoader workers (real-size images)")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument(
        "--no-progress", action="store_true", help="no progress bars (the default when stderr is not a terminal)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="downstream",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fewshot,train}")
    f = sub.add_parser(
        "fewshot",
        help="the grid {real, +synthetic sets} × shots × trials → OUT/results.*",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(f)
    f.add_argument("--shots", default="0,3,9,15", help="comma-separated real images per class")
    f.add_argument("--trials", type=int, default=3)
    f.add_argument("--out", required=True, type=Path, help="output directory (resumable)")
    f.add_argument("--overwrite", action="store_true", help="recompute cells made under another configuration")
    f.add_argument(
        "--num-workers",
        type=int,
        default=1,
        help="split the pending cells over N processes (e.g. N one-thread processes on N cores) ...",
    )
    f.add_argument("--worker-index", type=int, default=0, help="... this one being 0..N-1; rerun once to collect")
    t = sub.add_parser(
        "train",
        help="train and score one classifier; optionally save it as a ckpt: guide",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(t)
    t.add_argument("--shots", default="all", help="real images per class, or 'all' (default)")
    t.add_argument("--trial", type=int, default=0, help="which trial's shot picks")
    t.add_argument("--save-classifier", type=Path, metavar="DIR", help="write the model in the ckpt: format")
    t.add_argument("--json", type=Path, metavar="FILE", help="also write the result here")
    return parser


def _train_config(args: argparse.Namespace, kind: str):
    from downstream.train import default_config

    config = default_config(kind)
    if args.model is not None:
        config.model, config.model_kwargs = args.model, {}
    if args.model_kwargs is not None:
        if not isinstance(args.model_kwargs, dict):
            raise UserError("--model-kwargs must be a JSON object")
        config.model_kwargs = args.model_kwargs
    for name in (
        "pretrained",
        "image_size",
        "steps",
        "epochs",
        "batch_size",
        "lr",
        "real_fraction",
        "weight_decay",
        "optimizer",
        "workers",
        "device",
    ):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    for name in ("image_size", "steps", "batch_size"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if config.epochs is not None and config.epochs <= 0:
        raise UserError("--epochs must be > 0")
    if config.real_fraction is not None and not 0 <= config.real_fraction <= 1:
        raise UserError(f"--real-fraction must be between 0 and 1, got {config.real_fraction}")
    return config


def _parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--shots {text!r}: expected comma-separated integers like 0,3,9,15") from None
    if not shots:
        raise UserError("--shots is empty")
    return shots


def _load_inputs(args: argparse.Namespace):
    """Label set, dataset and synthetic sets: everything read, nothing written."""
    from augment.data.datasets import parse_spec
    from augment.labels import read_label_set
    from downstream.synthetic import load_synthetic, parse_synthetic_arg

    parse_spec(args.dataset)  # cheap checks first
    from downstream.learned import LearnedSpec

    synthetic_args = [parse_synthetic_arg(s) for s in args.synthetic]
    labels = read_label_set(args.labels)
    from augment.data.datasets import load_dataset

    dataset = load_dataset(args.dataset, labels)
    synthetic = [a if isinstance(a, LearnedSpec) else load_synthetic(*a, labels) for a in synthetic_args]
    return labels, dataset, synthetic


def _check_pretrained(config, num_classes: int) -> None:
    if config.pretrained:
        from downstream.train import create_model

        create_model(config, num_classes)  # fetches (or finds cached) weights, or fails here


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for dist in ("augment", "torch", "timm", "numpy", "webdataset", "datasets"):  # `downstream` ships in `augment`
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return versions


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cmd_fewshot(args: argparse.Namespace, argv: list[str]) -> None:
    from augment.devices import describe_device, resolve_device
    from augment.run.atomic import write_json
    from downstream.fewshot import GridConfig, check_grid, run_grid

    grid = GridConfig(
        shots=_parse_shots(args.shots),
        trials=args.trials,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress and sys.stderr.isatty(),
        worker_index=args.worker_index,
        num_workers=args.num_workers,
    )
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a directory")
    labels, dataset, synthetic = _load_inputs(args)
    config = _train_config(args, dataset.kind)
    check_grid(dataset, grid, synthetic, config, args.out)
    _check_pretrained(config, len(labels))

    args.out.mkdir(parents=True, exist_ok=True)  # validation is over: from here on, writing
    manifest = {
        "command": ["downstream", *argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": None,
        "dataset": {
            "spec": dataset.spec,
            "kind": dataset.kind,
            "matched_by": dataset.matched_by,
            "train_images": len(dataset.train),
            "test_images": len(dataset.test),
        },
        "labels": {"path": args.labels, "sha256": _sha256(args.labels), "classes": labels.names()},
        "synthetic": [_describe_set(s) for s in synthetic],
        "grid": dataclasses.asdict(grid),
        "train": dataclasses.asdict(config),
        "versions": _versions(),
        "device": describe_device(resolve_device(config.device)),
    }
    write_json(args.out / "manifest.json", manifest, indent=2)
    run_grid(dataset, synthetic, config, grid, args.out, labels=labels)
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(args.out / "manifest.json", manifest, indent=2)
    print((args.out / "results.md").read_text())


def _describe_set(s) -> dict:
    from downstream.learned import LearnedSpec

    if isinstance(s, LearnedSpec):
        return {"name": s.name, **s.describe(), "made_in": "OUT/learned/" + s.name}
    return {"name": s.name, "dir": str(s.directory), "shards": len(s.shards), "images": len(s.split),
            "manifest_sha256": s.manifest_sha256}  # fmt: skip


def cmd_train(args: argparse.Namespace, argv: list[str]) -> None:
    import numpy as np

    from augment.data.datasets import sample_kshot, trial_seed
    from downstream.train import evaluate, num_steps, save, train_classifier

    for path, what in ((args.save_classifier, "--save-classifier"), (args.json, "--json")):
        if path is not None and path.exists() and (path.is_dir() if what == "--json" else not path.is_dir()):
            raise UserError(f"{what} {path}: exists and is a {'directory' if path.is_dir() else 'file'}")
    shots = None if args.shots == "all" else _parse_shots(args.shots)
    if shots is not None and len(shots) != 1:
        raise UserError("--shots for `train` is one number or 'all'")
    labels, dataset, synthetic = _load_inputs(args)
    if any(not hasattr(s, "split") for s in synthetic):
        raise UserError("--synthetic NAME=learn:PRESET is for `downstream fewshot`; `train` takes NAME=DIR")
    config = _train_config(args, dataset.kind)
    real = dataset.train
    if shots is not None:
        real = real.subset(
            sample_kshot(
                real.labels,
                shots[0],
                num_classes=len(labels),
                seed=args.seed,
                trial=args.trial,
                class_names=labels.names(),
            )
        )
    parts = [real] + [s.split for s in synthetic]
    n = sum(len(p) for p in parts)
    if n == 0:
        raise UserError("nothing to train on: 0 shots and no --synthetic set")
    _check_pretrained(config, len(labels))

    t0 = time.time()
    model = train_classifier(
        parts,
        len(labels),
        config,
        seed=trial_seed(args.seed, args.trial),
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    scores = evaluate(model, dataset.test, config) if len(dataset.test) else {"top1": None, "top5": None}
    result = {
        **scores,
        "dataset": dataset.spec,
        "shots": args.shots,
        "trial": args.trial,
        "train_images": {"real": len(real), "synthetic": n - len(real)},
        "test_images": len(dataset.test),
        "steps": num_steps(config, n),
        "seconds": round(time.time() - t0, 2),
    }
    if args.save_classifier is not None:
        trained = {
            "tool": "downstream train",
            "command": ["downstream", *argv],
            "dataset": dataset.spec,
            "labels": args.labels,
            "shots": args.shots,
            "seed": args.seed,
            "trial": args.trial,
            "synthetic": {s.name: str(s.directory) for s in synthetic},
            "test_top1": None if result["top1"] is None else round(result["top1"], 3),
            "test_top5": None if result["top5"] is None else round(result["top5"], 3),
            "config": dataclasses.asdict(config),
            "versions": _versions(),
        }
        save(model, args.save_classifier, config, labels.names(), trained)
        result["classifier"] = str(args.save_classifier)
    line = json.dumps(result, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    if args.json is not None:
        args.json.write_text(line + "\n")
    print(line)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `downstream` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.threads is not None:
            import torch

            torch.set_num_threads(max(1, args.threads))
        {"fewshot": cmd_fewshot, "train": cmd_train}[args.command](args, argv)
    except UserError as e:
        message = " ".join(str(e).split()) or "bad input"
        print(f"downstream: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
