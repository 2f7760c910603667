"""Learn one discriminative token per class of a label set (tokens only; see `build` for learn + generate).

Writes OUT/tokens/<slug>/{learned_embeds.safetensors,meta.json} and OUT/manifest.json. Classes already
learned in OUT are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from augment.commands.common import (
    add_config_arguments,
    check_out_dir,
    claim_board,
    lock_worker_slot,
    resolve_config,
    update_manifest,
    waiting_note,
    worker_slot,
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
    "seed",
)


def learn(args: argparse.Namespace, cfg=None) -> dict:
    """Validate everything cheap first, then load models and learn the pending classes of this worker."""
    from augment.labels import match_to_guide, read_label_set
    from augment.prompting import check_templates
    from augment.tokens_io import is_learned

    labels = read_label_set(args.labels)  # 1. label set, before any model
    cfg = cfg or resolve_config(args, {f"learn.{k}": getattr(args, k, None) for k in LEARN_FLAGS})
    check_templates(cfg.learn.prompts, need_token=True)
    check_learn_config(cfg.learn)
    index, count = worker_slot(args.worker_index, args.num_workers)
    check_out_dir(args.out)
    board = claim_board(args, "learn", index)  # claim mode: every class is anyone's
    mine = list(labels.classes) if board else list(labels.classes)[index::count]
    pending = [c for c in mine if not is_learned(args.out, c)]
    from augment.resume import checkpoint_path

    if not pending and not checkpoint_path(args.out, (index, count)).is_file():
        print(f"all {len(mine)} classes of this worker already learned in {args.out}")
        return {"learned": 0, "seconds": 0.0}

    from augment.fingerprint import source_identity
    from augment.generator import generator_source, load_generator, resolve_device, text_encoder_fingerprint
    from augment.guide import load_guide
    from augment.resume import LearnerCheckpoint, learn_fingerprint
    from augment.tokens import TokenLearner

    device = resolve_device(cfg.device)
    guide = load_guide(cfg.guide, device)  # 2. guide: names and index range
    guide_indices = match_to_guide(labels, guide.labels)
    pipe = load_generator(cfg.generator, device, cfg.dtype)  # 3. generator
    info = {"generator": generator_source(pipe), "text_encoder": text_encoder_fingerprint(pipe)}
    args.out.mkdir(parents=True, exist_ok=True)
    lock_worker_slot(args.out, index, count)
    update_manifest(
        args.out,
        "learn",
        {
            "labels": labels.names(),
            "label_file": str(args.labels),
            "config": cfg.to_dict(),
            **info,
            "worker": [index, count],
            "claim": board is not None,
        },
    )
    learner = TokenLearner(pipe, guide, labels, guide_indices, cfg.learn, args.out, info)
    checkpoint = LearnerCheckpoint(
        args.out,
        (index, count),
        learn_fingerprint(cfg.learn, labels, source_identity(cfg.guide), info["text_encoder"]),
        device,
        pipe.unet.dtype,
    )
    t0 = time.time()
    with progress_bar(len(pending), args.no_progress) as bar, board or contextlib.nullcontext():

        def report(p: dict) -> None:
            bar.n = p["done"]
            acc = "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.0f}%"
            bar.set_postfix_str(f"active {p['active']} step {p['step']} batch acc {acc}")

        feed = None
        if board is not None:
            from augment.claims import ClaimQueue

            feed = ClaimQueue(
                board, mine, key=lambda c: c.slug, done=lambda c: is_learned(args.out, c), on_wait=waiting_note()
            )
        results = learner.run(mine, report, checkpoint, getattr(args, "overwrite", False), feed=feed)
    if board is not None:  # a dead worker's checkpoint, its classes finished by others
        from augment.resume import clear_finished

        by_pos = {c.position: c for c in labels.classes}
        clear_finished(args.out, lambda p: p in by_pos and is_learned(args.out, by_pos[p]))
    seconds = time.time() - t0
    if checkpoint.note:
        print(f"augment: note: {checkpoint.note}", file=sys.stderr)
        update_manifest(
            args.out,
            "learn",
            {**json.loads((args.out / "manifest.json").read_text())["learn"], "resume": checkpoint.note},
        )
    accs = [m["final_accuracy"] for m in results.values()]
    print(
        f"learned {len(results)} token(s) in {seconds:.1f} s ({seconds / max(len(results), 1):.1f} s/class); "
        f"mean steps {sum(m['steps'] for m in results.values()) / max(len(results), 1):.1f}, "
        f"final batch accuracy {100 * sum(accs) / max(len(accs), 1):.1f}%"
    )
    return {"learned": len(results), "seconds": seconds}


def check_learn_config(c) -> None:
    """Every LearnConfig value a run could trip on later, checked before any model is loaded (UserError)."""
    from augment.sampling import check_scheduler

    mcs = c.max_classes_per_step
    if mcs != "auto" and (not isinstance(mcs, int) or isinstance(mcs, bool)):
        raise_user(f"learn.max_classes_per_step must be a whole number or auto, got {mcs!r}")
    for key in ("batch_size", "max_steps", "num_inference_steps", "grad_steps", "decode_batch") + (
        ("max_classes_per_step",) if mcs != "auto" else ()
    ):
        if getattr(c, key) < 1:
            raise_user(f"learn.{key} must be ≥ 1, got {getattr(c, key)}")
    if c.timestep_spacing not in (None, "leading", "trailing", "linspace"):
        raise_user(f"learn.timestep_spacing must be leading, trailing or linspace, got {c.timestep_spacing!r}")
    if c.steps_offset is not None and c.steps_offset < 0:
        raise_user(f"learn.steps_offset must be ≥ 0, got {c.steps_offset}")
    if c.objective not in ("final", "x0"):
        raise_user(f"learn.objective must be final or x0, got {c.objective!r}")
    if c.noise not in ("fresh", "fixed"):
        raise_user(f"learn.noise must be fresh or fixed, got {c.noise!r}")
    if not 0 < c.stop_accuracy <= 1:
        raise_user(f"learn.stop_accuracy must be in (0, 1], got {c.stop_accuracy}")
    if c.checkpoint_every < 0:
        raise_user(f"learn.checkpoint_every must be ≥ 0, got {c.checkpoint_every}")
    if c.weight_decay < 0:
        raise_user(f"learn.weight_decay must be ≥ 0, got {c.weight_decay}")
    check_scheduler(c.scheduler, "learn.scheduler")


def raise_user(msg: str):
    from augment.errors import UserError

    raise UserError(msg)


def progress_bar(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="class", desc="learning tokens", disable=disable, dynamic_ncols=True)


def run(args: argparse.Namespace) -> int:
    learn(args)
    return 0
