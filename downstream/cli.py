"""`downstream fewshot` (the Table-2 grid) and `downstream train` (one classifier, optionally saved as `ckpt:`):
the flags of downstream.api's library calls, parsed; the training flags derived from TrainConfig's fields.

Exit statuses and errors as `augment`'s (augment.commands.shell): 0 ok; 2 for bad input, with one line
`downstream: error: ...` on stderr and nothing written (everything is validated before OUT is created); 1 a full
disk or a refused write (one line; finished cells are kept); 130/143 interrupted; a bug: its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from augment.commands.shell import Parser, run_command
from augment.errors import UserError

EXAMPLES = """examples:
  downstream fewshot --dataset fashion-mnist --labels manifests/fashion-mnist.txt \\
      --synthetic plain=runs/toy-plain --synthetic tokens=runs/toy --shots 0,3,9,15 --trials 3 --out runs/fewshot
  downstream train --dataset cub:/data/CUB_200_2011 --labels manifests/cub200.txt --shots all \\
      --epochs 30 --save-classifier runs/cub-guide
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    from augment.commands.options import add_fields
    from downstream.classifier import TrainConfig

    p.add_argument("--dataset", required=True, metavar="SPEC",
                   help="cub:DIR | inat:DIR | imagefolder:DIR | hf:ID_OR_DIR | fashion-mnist[:DIR]")  # fmt: skip
    p.add_argument("--labels", required=True, metavar="FILE", help="label set (manifests/*.txt)")
    p.add_argument("--synthetic", action="append", default=[], metavar="NAME=DIR",
                   help="a synthetic set written by `augment generate` (repeatable); fewshot also takes "
                   "NAME=learn:PRESET[+CONFIG.yaml]: for each shot count and trial a guide trained on those shots, "
                   "tokens learned with it, a set generated; NAME=lora:PRESET: a LoRA trained on the generator from "
                   "those shots, a set generated from plain prompts (DataDream's route); NAME=lora+learn:PRESET: "
                   "both, the k-shot tokens learned on the adapted generator (needs augment[lora])")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the shot picks and the training of each trial")
    t = p.add_argument_group("training (defaults depend on the dataset: downstream.classifier.default_config)")
    add_fields(t, TrainConfig, "training.")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (the default when stderr is not a terminal)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="downstream", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fewshot,train}", parser_class=Parser)
    f = sub.add_parser("fewshot", help="the grid {real, +synthetic sets} × shots × trials → OUT/results.*",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_common(f)
    f.add_argument("--shots", default="0,3,9,15", help="comma-separated real images per class")
    f.add_argument("--trials", type=int, default=3)
    f.add_argument("--out", required=True, help="output directory (resumable): a path, or a URL (s3://bucket/grid)")
    f.add_argument("--overwrite", action="store_true", help="recompute cells made under another configuration")
    f.add_argument("--num-workers", type=int, dest="count",
                   help="split the pending cells over N processes (e.g. N one-thread processes on N cores) ...")  # fmt: skip
    f.add_argument("--worker-index", type=int, dest="index", help="... this one being 0..N-1; rerun once to collect")
    from augment.commands.options import add_fields
    from augment.run.workers import Workers

    add_fields(f, Workers, only=("engine", "ray_address", "ray_gpus", "ray_workers", "retries"))
    t = sub.add_parser("train", help="train and score one classifier; optionally save it as a ckpt: guide",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_common(t)
    t.add_argument("--shots", default="all", help="real images per class, or 'all' (default)")
    t.add_argument("--trial", type=int, default=0, help="which trial's shot picks")
    t.add_argument("--save-classifier", metavar="DIR", help="write the model in the ckpt: format")
    t.add_argument("--json", metavar="FILE", help="also write the result here")
    return parser


def _shots(text: str) -> list[int]:
    items = text.split(",")
    try:
        shots = [int(s, 10) for s in items]
    except ValueError:
        raise UserError(f"--shots {text!r}: expected comma-separated integers like 0,3,9,15") from None
    if any(s < 0 for s in shots):
        raise UserError(f"--shots {text!r}: a shot count is ≥ 0")
    return shots


def _synthetic(args: argparse.Namespace) -> dict[str, str]:
    sets: dict[str, str] = {}
    for text in args.synthetic:
        name, sep, value = text.partition("=")
        if not sep or not value:
            raise UserError(f"--synthetic {text!r}: expected NAME=DIR or NAME=learn:PRESET, e.g. tokens=runs/toy")
        if name in sets:
            raise UserError(f"--synthetic names must be distinct, got {name!r} twice")
        sets[name] = value
    return sets


def _workers(args: argparse.Namespace):
    """The flags as an augment.Workers: a slot of the static split (default 0 of 1), or every cell on Ray."""
    from augment.run.workers import Workers

    values = vars(args)
    if values.get("engine") != "ray":
        values = {
            **values,
            "index": 0 if args.index is None else args.index,
            "count": 1 if args.count is None else args.count,
        }
    return Workers.from_flags(values)


def _training(args: argparse.Namespace) -> dict:
    prefix = "training."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `downstream` console script; returns the exit status (augment.commands.shell: one line
    and 2 for bad input, 1 for a full disk or a refused write, 143 on SIGTERM, as `augment`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command("downstream", build_parser, lambda args: _run(args, argv), argv)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be ≥ 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    progress = not args.no_progress and sys.stderr.isatty()
    from downstream import api

    if args.command == "fewshot":
        result = api.fewshot(args.dataset, args.labels, args.out, synthetic=_synthetic(args),
                             shots=_shots(args.shots), trials=args.trials, seed=args.seed,
                             training=_training(args), overwrite=args.overwrite,
                             workers=_workers(args), progress=progress,
                             command=["downstream", *argv])  # fmt: skip
        print(result.summary())
        return 0
    if args.json is not None and not args.json.strip():
        raise UserError("--json: an empty path")
    args.json = None if args.json is None else Path(args.json)
    if args.json is not None:
        from augment.run.storage import check_out

        check_out(args.json.parent if str(args.json.parent) else Path("."), "json")  # writable, before training
    if args.json is not None and args.json.is_dir():
        raise UserError(f"--json {args.json}: exists and is a directory")
    shots = None if args.shots == "all" else _shots(args.shots)
    if shots is not None and len(shots) != 1:
        raise UserError("--shots for `train` is one number or 'all'")
    result = api.train(args.dataset, args.labels, shots=None if shots is None else shots[0],
                       trial=args.trial, seed=args.seed, synthetic=_synthetic(args),
                       training=_training(args), save_classifier=args.save_classifier, progress=progress,
                       command=["downstream", *argv])  # fmt: skip
    if args.json is not None:
        from augment.run.atomic import write_text

        write_text(args.json, result.summary() + "\n")
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
