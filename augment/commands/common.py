"""Options and steps shared by the subcommands: config resolution, output checks, workers, manifests."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from augment.atomic import write_json
from augment.config import RunConfig, load_config
from augment.errors import UserError


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="label set file (manifests/*.txt format)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--preset", help="preset name from augment/presets (toy, sd14-cub, sd14-cub-original, sd14-imagenet, sd21-base)"
    )
    p.add_argument("--config", help="YAML config file (same keys as a preset)")
    p.add_argument("--generator", help="diffusers Stable Diffusion pipeline: hub id or local directory")
    p.add_argument("--guide", help="guide classifier spec: timm:NAME, torchvision:NAME, hf:ID_OR_DIR, ckpt:DIR")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", help="auto, fp32, fp16, bf16")
    p.add_argument("--worker-index", type=int, help="this worker's index (default: $RANK or $SLURM_ARRAY_TASK_ID)")
    p.add_argument(
        "--num-workers", type=int, help="number of workers (default: $WORLD_SIZE or $SLURM_ARRAY_TASK_COUNT)"
    )
    p.add_argument(
        "--claim",
        action="store_true",
        help="claim mode: workers take classes and shards from OUT one at a time (no static split; "
        "a dead worker's unit is taken over once its lease expires)",
    )
    p.add_argument(
        "--lease",
        type=float,
        default=300.0,
        help="claim mode: seconds without a heartbeat after which a claim is taken over (default 300)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> RunConfig:
    overrides = {"generator": args.generator, "guide": args.guide, "device": args.device, "dtype": args.dtype}
    return load_config(args.preset, args.config, {**overrides, **(extra or {})})


def worker_slot(index: int | None, count: int | None) -> tuple[int, int]:
    """(index, count) from the flags, else torchrun/accelerate's RANK/WORLD_SIZE, else a Slurm array."""
    env = os.environ
    if index is None and count is None:
        if "RANK" in env and "WORLD_SIZE" in env:
            index, count = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            index, count = int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    index, count = (index or 0), (count or 1)
    if count < 1 or not 0 <= index < count:
        raise UserError(f"worker index {index} is not in 0..{count - 1}")
    return index, count


def check_out_dir(out: Path) -> None:
    """Refuse an output path that can't be a writable directory, before anything is written."""
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{out}: {existing} is not writable")


_HELD: dict[str, Any] = {}  # worker locks this process holds (released by the OS when it exits)


def lock_worker_slot(out: Path, index: int, count: int) -> None:
    """Refuse to run when another live process holds the same worker slot of OUT (two copies of one Slurm
    task, a doubled launch): they would interleave the same classes and shards. An advisory flock on
    OUT/.locks/worker-{index}of{count}.lock, released by the OS when its process dies, kill -9 included."""
    import fcntl

    path = out / ".locks" / f"worker-{index}of{count}.lock"
    if str(path) in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(
            f"{out}: another process is running worker {index} of {count} here "
            f"(lock {path}); give each process its own --worker-index"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()} {platform.node()}\n")
    f.flush()
    _HELD[str(path)] = f


def versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    from augment import __version__

    return {
        "augment": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def update_manifest(out: Path, section: str, content: dict[str, Any]) -> Path:
    """Merge one section into OUT/manifest.json (written atomically)."""
    path = out / "manifest.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[section] = {**content, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data["versions"] = versions()
    return write_json(path, data)


def claim_board(args: argparse.Namespace, stage: str, index: int):
    """The ClaimBoard of this worker for `stage` (learn, generate) with --claim, else None."""
    if not getattr(args, "claim", False):
        return None
    if not args.lease > 0:
        raise UserError(f"--lease must be > 0 seconds, got {args.lease}")
    from augment.claims import ClaimBoard

    return ClaimBoard(args.out, stage, index, args.lease)


def waiting_note():
    """on_wait for a ClaimQueue: one line on stderr the first time this worker waits for others' units."""
    import sys

    shown = []

    def note(n: int) -> None:
        if not shown:
            print(
                f"waiting for {n} unit(s) other workers hold (taken over if their lease expires)",
                file=sys.stderr,
                flush=True,
            )
            shown.append(n)

    return note
