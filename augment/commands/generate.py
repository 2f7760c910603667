"""Generate a synthetic training set into webdataset shards, with learned class tokens (or --no-tokens).

Writes OUT/shards/<set>-{number:06d}.{tar,json} (mixed shards: augment.data.shards), OUT/manifest.json and, once every unit exists,
OUT/_info.json. Finished units are skipped, so an interrupted run continues where it stopped; workers
(--worker-index/--num-workers, or $RANK/$WORLD_SIZE, or a Slurm array) take every N-th unit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from augment.commands.common import (
    add_config_arguments,
    add_cutoff_argument,
    resolve_config,
    show_progress,
    workers_from,
)
from augment.errors import UserError


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of generation proper (shared with `build`)."""
    p.add_argument("--images-per-class", type=int, help="images per class (default: preset, else 100)")
    p.add_argument("--shard-size", type=int, help="images per shard (one shard = one unit of work)")
    p.add_argument("--format", dest="image_format", choices=("jpg", "png"), help="image format in the shards")
    p.add_argument("--overwrite", action="store_true", help="redo units made with another config")
    p.add_argument("--dry-run", action="store_true", help="print units total/done/pending and exit")
    p.add_argument("--score", action="store_true", help="record the guide's probability of each image")
    p.add_argument(
        "--refine",
        choices=("none", "date"),
        help="refine the prompt embeddings while sampling: date = DATE, reward = the guide's "
        "log-probability of the class (default: preset, else none)",
    )
    p.add_argument("--refine-step-size", type=float, help="DATE: normalised step on the embeddings (default 0.1)")
    p.add_argument("--refine-every", type=int, help="DATE: refine every k-th sampling step (default 1)")
    p.add_argument(
        "--scheduler",
        help="sampler: pipeline (the generator's own), ddim, pndm, dpmsolver++, unipc, "
        "euler (default: preset, else pipeline)",
    )
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="UNet and VAE in channels-last memory format (default: on CUDA only)")  # fmt: skip
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the UNet: faster batches after a compilation warm-up")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", type=Path, help="directory with learned tokens (a learn/build OUT)")
    src.add_argument("--no-tokens", action="store_true", help="plain prompts: the baseline, same seeds")
    add_generate_arguments(p)
    p.add_argument("--batch-size", type=int, help="images per pipeline call (does not change the images)")
    p.add_argument("--steps", type=int, dest="num_inference_steps", help="denoising steps per image")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance")
    add_cutoff_argument(p)
    p.add_argument("--seed", type=int, help="global seed")


GENERATE_FLAGS = (
    "images_per_class",
    "shard_size",
    "image_format",
    "batch_size",
    "num_inference_steps",
    "guidance_scale",
    "guidance_cutoff",
    "seed",
    "scheduler",
    "channels_last",
    "compile",
)


REFINE_FLAGS = {"refine_step_size": "step_size", "refine_every": "every"}


def apply_refine_arguments(args: argparse.Namespace, g) -> None:
    """Fold --refine/--refine-* into the GenerateConfig `g` and check the result (UserError), before any
    model is loaded. Idempotent: `build` calls it before learning, `generate` again."""
    from dataclasses import asdict

    from augment.config import DateOptions

    refine = getattr(args, "refine", None)
    if refine is not None:
        g.refine = None if refine == "none" else refine
    opts = {key: getattr(args, flag) for flag, key in REFINE_FLAGS.items() if getattr(args, flag, None) is not None}
    if opts:
        if g.refine is None:
            raise UserError("--refine-step-size / --refine-every need --refine date")
        g.refine_options = DateOptions.parse({**asdict(g.refine_options), **opts})
    g.validate()


def generate(args: argparse.Namespace, cfg=None, tokens: Path | None = None):
    """`augment generate` (and build's second stage): the config from the flags, then augment.generate_set."""
    from augment.jobs.generate import generate_set

    cfg = cfg or resolve_config(args, {f"generate.{k}": getattr(args, k, None) for k in GENERATE_FLAGS})
    apply_refine_arguments(args, cfg.generate)
    tokens = None if getattr(args, "no_tokens", False) else (tokens or args.tokens)
    result = generate_set(args.labels, args.out, cfg, tokens=tokens, workers=workers_from(args),
                          overwrite=getattr(args, "overwrite", False), score=getattr(args, "score", False),
                          dry_run=getattr(args, "dry_run", False), progress=show_progress(args))  # fmt: skip
    if result.note:
        print(f"augment: note: {result.note}", file=sys.stderr)
    print(result.summary(args.out))
    return result


def run(args: argparse.Namespace) -> int:
    generate(args)
    return 0
