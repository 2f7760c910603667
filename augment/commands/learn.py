"""Learn one discriminative token per class of a label set (tokens only; see `build` for learn + generate).

Writes OUT/tokens/<slug>/{learned_embeds.safetensors,meta.json} and OUT/manifest.json. Classes already
learned in OUT are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys

from augment.commands.common import (
    add_config_arguments,
    add_cutoff_argument,
    resolve_config,
    show_progress,
    workers_from,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_learn_arguments(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a learner checkpoint made with another config instead of refusing",
    )


def add_learn_arguments(p: argparse.ArgumentParser, batch_flag: str = "--batch-size", shared_note: str = "") -> None:
    """The learning options; `build` names the batch flag apart and marks the options generation shares."""
    p.add_argument("--init-word", help="word that initialises every token (default: preset, else 'a')")
    p.add_argument(batch_flag, type=int, help="images per class per learning step (paper: 5)")
    p.add_argument(
        "--classes-per-step",
        type=classes_per_step,
        dest="max_classes_per_step",
        help="classes learned together in one UNet batch, or auto (as many as fit in memory)",
    )
    p.add_argument("--lr", type=float, help="learning rate (default 0.00025 × learning batch size)")
    p.add_argument("--max-steps", type=int, help="learning steps per class at most (paper: 200)")
    p.add_argument("--steps", type=int, dest="num_inference_steps", help=f"denoising steps (paper: 50){shared_note}")
    p.add_argument("--guidance-scale", type=float, help=f"classifier-free guidance (paper: 7){shared_note}")
    add_cutoff_argument(p, shared_note)
    p.add_argument("--seed", type=int, help=f"seed{shared_note}")


def classes_per_step(value: str) -> int | str:
    return value if value == "auto" else int(value)


LEARN_FLAGS = (
    "init_word",
    "batch_size",
    "max_classes_per_step",
    "lr",
    "max_steps",
    "num_inference_steps",
    "guidance_scale",
    "guidance_cutoff",
    "seed",
)


def learn(args: argparse.Namespace, cfg=None):
    """`augment learn` (and build's first stage): the config from the flags, then augment.learn_tokens."""
    from augment.jobs.learn import learn_tokens

    cfg = cfg or resolve_config(args, {f"learn.{k}": getattr(args, k, None) for k in LEARN_FLAGS})
    result = learn_tokens(args.labels, args.out, cfg, workers=workers_from(args),
                          overwrite=getattr(args, "overwrite", False), progress=show_progress(args))  # fmt: skip
    if result.note:
        print(f"augment: note: {result.note}", file=sys.stderr)
    print(result.summary())
    return result


def run(args: argparse.Namespace) -> int:
    learn(args)
    return 0
