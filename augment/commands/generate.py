"""Generate a synthetic training set into webdataset shards, with learned class tokens (or --no-tokens).

Writes OUT/shards/<set>-c{class:04d}-{shard:04d}.{tar,json}, OUT/manifest.json and, once every unit exists,
OUT/_info.json. Finished units are skipped, so an interrupted run continues where it stopped; workers
(--worker-index/--num-workers, or $RANK/$WORLD_SIZE, or a Slurm array) take every N-th unit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
from pathlib import Path
from typing import Any

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", type=Path, help="directory with learned tokens (a learn/build OUT)")
    src.add_argument("--no-tokens", action="store_true", help="plain prompts: the baseline, same seeds")
    add_generate_arguments(p)
    p.add_argument("--batch-size", type=int, help="images per pipeline call (does not change the images)")
    p.add_argument("--steps", type=int, dest="num_inference_steps", help="denoising steps per image")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance")
    p.add_argument("--seed", type=int, help="global seed")


GENERATE_FLAGS = (
    "images_per_class",
    "shard_size",
    "image_format",
    "batch_size",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "scheduler",
)


MANIFEST_EVERY = 10.0  # seconds between manifest refreshes while generating (it lists every finished shard)

REFINE_FLAGS = {"refine_step_size": "step_size", "refine_every": "every"}


def apply_refine_arguments(args: argparse.Namespace, g) -> None:
    """Fold --refine/--refine-* into the GenerateConfig `g` and check the result (UserError), before any
    model is loaded. Idempotent: `build` calls it before learning, `generate` again."""
    from augment.date import refine_options

    refine = getattr(args, "refine", None)
    if refine is not None:
        g.refine = None if refine == "none" else refine
    opts = {key: getattr(args, flag) for flag, key in REFINE_FLAGS.items() if getattr(args, flag, None) is not None}
    if opts:
        if g.refine is None:
            raise UserError("--refine-step-size / --refine-every need --refine date")
        g.refine_options = {**g.refine_options, **opts}
    refine_options(g.refine, g.refine_options)


def tokens_digest(root: Path, labels) -> str:
    """sha256 over every class's learned embedding file: a changed token changes the config hash."""
    from augment.tokens_io import WEIGHTS, token_dir

    h = hashlib.sha256()
    for c in labels.classes:
        h.update((token_dir(root, c) / WEIGHTS).read_bytes())
    return h.hexdigest()[:16]


def _tokens_root(tokens: Path, labels) -> Path:
    """Check the tokens directory before any model is loaded (load_tokens checks the generator later)."""
    from augment.tokens_io import is_learned

    if not tokens.is_dir():
        raise UserError(f"tokens directory {tokens} does not exist")
    root = tokens.parent if tokens.name == "tokens" and not (tokens / "tokens").is_dir() else tokens
    missing = [c.name for c in labels.classes if not is_learned(root, c)]
    if missing:
        raise UserError(
            f"{root}: no learned token for {len(missing)} class(es): "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return root


def generate(args: argparse.Namespace, cfg=None, tokens: Path | None = None) -> dict[str, Any]:
    """Validate everything cheap first (labels, config, tokens, out dir, units), then load models and
    generate this worker's pending units. `tokens=None` with `args.no_tokens` is the plain baseline."""
    from augment import shards
    from augment.labels import read_label_set
    from augment.prompting import check_templates

    labels = read_label_set(args.labels)
    cfg = cfg or resolve_config(args, {f"generate.{k}": getattr(args, k, None) for k in GENERATE_FLAGS})
    g = cfg.generate
    check_templates(g.prompts)
    apply_refine_arguments(args, g)
    for key in ("batch_size", "num_inference_steps"):
        if getattr(g, key) < 1:
            raise UserError(f"generate.{key} must be ≥ 1, got {getattr(g, key)}")
    if g.image_format not in ("jpg", "png"):
        raise UserError(f"generate.image_format must be jpg or png, got {g.image_format!r}")
    from augment.sampling import check_scheduler

    check_scheduler(g.scheduler, "generate.scheduler")
    units = shards.plan_units(range(len(labels)), g.images_per_class, g.shard_size)
    root = None if getattr(args, "no_tokens", False) else _tokens_root(Path(tokens or args.tokens), labels)
    index, count = worker_slot(args.worker_index, args.num_workers)
    check_out_dir(args.out)
    gen_dict = {k: v for k, v in cfg.to_dict()["generate"].items() if k != "batch_size"}
    from augment.fingerprint import source_identity

    chash = shards.config_hash(
        {
            "generate": gen_dict,
            "generator": source_identity(cfg.generator),
            "labels": labels.names(),
            "tokens": None if root is None else tokens_digest(root, labels),
        }
    )
    board = claim_board(args, "generate", index)  # claim mode: every unit is anyone's
    mine = units if board else units[index::count]
    overwrite = getattr(args, "overwrite", False)
    pending = [u for u in mine if not shards.unit_done(args.out, labels.name, u, chash, overwrite)]
    all_done = sum(shards.unit_done(args.out, labels.name, u, chash, True) for u in units)
    if getattr(args, "dry_run", False):
        print(
            f"units: total {len(units)}, done {all_done}, pending {len(units) - all_done}; "
            + (
                "claim mode: workers take pending units as they go"
                if board
                else f"this worker ({index}/{count}): {len(mine)} units, {len(pending)} pending, "
                f"{sum(u.count for u in pending)} images"
            )
        )
        return {"units": 0, "images": 0}
    if not pending:
        shards.write_info(args.out, labels.name, units)
        print(f"all {len(mine)} units of this worker already done in {args.out}")
        return {"units": 0, "images": 0}

    from augment.generator import generator_source, load_generator, resolve_device, text_encoder_fingerprint

    if args.no_progress:
        quiet_loading()
    device = resolve_device(cfg.device)
    guide = guide_indices = None
    if getattr(args, "score", False) or g.refine is not None:  # DATE's reward is the guide's
        from augment.guide import load_guide
        from augment.labels import match_to_guide

        guide = load_guide(cfg.guide, device)
        guide_indices = match_to_guide(labels, guide.labels)
    pipe = load_generator(cfg.generator, device, cfg.dtype)
    from augment.sampling import make_scheduler

    pipe.scheduler = make_scheduler(pipe.scheduler, g.scheduler)
    token_map = None
    if root is not None:
        from augment.tokens_io import load_tokens

        token_map = load_tokens(pipe, root, labels, text_encoder_fingerprint(pipe))
    return _run_units(
        args,
        cfg,
        labels,
        units,
        pending,
        chash,
        pipe,
        token_map,
        guide,
        guide_indices,
        {
            "generator": generator_source(pipe),
            "tokens": None if root is None else str(root),
            "worker": [index, count],
            "claim": board is not None,
        },
        board,
    )


def quiet_loading() -> None:
    """No loading bars from diffusers/transformers (with --no-progress, stderr stays for errors)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _run_units(
    args, cfg, labels, units, pending, chash, pipe, token_map, guide, guide_indices, info: dict[str, Any], board=None
) -> dict[str, Any]:
    import time

    from tqdm import tqdm

    from augment import shards
    from augment.generate import generate_units

    args.out.mkdir(parents=True, exist_ok=True)
    lock_worker_slot(args.out, *info["worker"])
    work = pending
    if board is None:
        shards.remove_stale_tmp(args.out, labels.name, pending)
    else:  # claim mode: other workers write their units' .tmp files right now; clean a unit's when claimed
        work = _claimed(board, labels.name, pending, args.out, chash, getattr(args, "overwrite", False))
    done: dict[str, dict] = {}

    last = [0.0]

    def record(final: bool = False) -> None:
        if not final and time.time() - last[0] < MANIFEST_EVERY:
            return  # the markers are the record; the manifest's copy is refreshed at most every few seconds
        last[0] = time.time()
        if final:  # rescan: other workers' units too
            for u in units:
                m = shards.read_marker(args.out, labels.name, u)
                if m is not None and m.get("config_hash") == chash:
                    done[m["unit"]] = m
        update_manifest(
            args.out,
            "generate",
            {
                "labels": labels.names(),
                "label_file": str(args.labels),
                "set": labels.name,
                "config": cfg.to_dict(),
                "config_hash": chash,
                "seeds": shards.SEEDS_RULE,
                **info,
                "shards": {k: {"sha256": m["sha256"], "count": m["count"]} for k, m in sorted(done.items())},
            },
        )

    record(final=True)
    t0 = time.time()
    n_images = sum(u.count for u in pending)
    n_units = 0
    with (
        tqdm(total=n_images, unit="img", desc="generating", disable=args.no_progress, dynamic_ncols=True) as bar,
        board or contextlib.nullcontext(),
    ):

        def on_unit(unit, marker) -> None:
            nonlocal n_units
            n_units += 1
            done[marker["unit"]] = marker
            if board is not None:
                board.release(marker["unit"])
            record()

        markers = generate_units(
            pipe,
            labels,
            token_map,
            cfg.generate,
            work,
            args.out,
            chash,
            guide,
            guide_indices,
            on_images=bar.update,
            on_unit=on_unit,
        )
    n_images = sum(m["count"] for m in markers)
    record(final=True)
    info_path = shards.write_info(args.out, labels.name, units)
    if info_path is not None:
        from augment.card import write_card

        write_card(args.out, labels, info)
    seconds = time.time() - t0
    print(
        f"generated {n_images} images in {n_units} shard(s) in {seconds:.1f} s "
        f"({n_images / max(seconds, 1e-9):.2f} img/s)" + ("" if info_path else "; other units still pending")
    )
    return {"units": n_units, "images": n_images, "seconds": seconds}


def _claimed(board, setname: str, pending: list, out: Path, chash: str, overwrite: bool):
    """The pending units this worker claims, one at a time, each with what a dead owner left removed."""
    from augment import shards
    from augment.claims import ClaimQueue

    queue = ClaimQueue(
        board,
        pending,
        key=lambda u: u.name(setname),
        on_wait=waiting_note(),
        done=lambda u: shards.unit_done(out, setname, u, chash, overwrite),
    )
    for unit in queue:
        shards.remove_stale_tmp(out, setname, [unit])
        yield unit


def run(args: argparse.Namespace) -> int:
    generate(args)
    return 0
