"""The workers sharing a run directory (OUT): worker slots, output checks, the worker lock, claim mode. Used by
every job (augment.jobs); no argparse here."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from augment.errors import UserError
from augment.run.claims import DEFAULT_LEASE

WAIT_TOKENS = 6 * 3600.0  # seconds a `build` worker waits for the others' tokens before generating


@dataclass(frozen=True)
class Workers:
    """How this process shares OUT with others. `index`/`count` None: from torchrun's RANK/WORLD_SIZE or a
    Slurm array, else 0 of 1. `claim`: take units as they come (augment.run.claims) instead of every count-th."""

    index: int | None = field(default=None, metadata={"flag": "--worker-index", "type": int, "help": "this worker's index (default: $RANK, $SLURM_PROCID or $SLURM_ARRAY_TASK_ID)"})  # fmt: skip
    count: int | None = field(default=None, metadata={"flag": "--num-workers", "type": int, "help": "number of workers (default: $WORLD_SIZE, srun's $SLURM_STEP_NUM_TASKS or $SLURM_ARRAY_TASK_COUNT)"})  # fmt: skip
    claim: bool = field(default=False, metadata={"flag": "--claim", "action": "store_true", "help": "claim mode: workers take classes and shards from OUT one at a time (no static split; a dead worker's unit is taken over once its lease expires)"})  # fmt: skip
    lease: float = field(default=DEFAULT_LEASE, metadata={"flag": "--lease", "type": float, "help": f"claim mode: seconds without a heartbeat after which a claim is taken over (default {DEFAULT_LEASE:.0f})"})  # fmt: skip

    @classmethod
    def from_flags(cls, values: dict) -> Workers:
        """From parsed flags (unset ones None): the dataclass's defaults where a flag is unset."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None})

    def slot(self) -> tuple[int, int]:
        return worker_slot(self.index, self.count)

    def check(self) -> None:
        self.slot()
        if self.claim and not self.lease > 0:
            raise UserError(f"lease must be > 0 seconds, got {self.lease}", "lease")


def worker_slot(index: int | None, count: int | None) -> tuple[int, int]:
    """(index, count) from the flags, else torchrun/accelerate's RANK/WORLD_SIZE, else Slurm: the tasks of an
    srun step (SLURM_PROCID/SLURM_STEP_NUM_TASKS; a batch script alone is one task), of an array (SLURM_ARRAY_TASK_ID/COUNT), or both (an array of
    multi-task steps: array task a, task p → a·ntasks + p)."""
    env = os.environ
    if index is None and count is None:
        if "RANK" in env and "WORLD_SIZE" in env:
            index, count = int(env["RANK"]), int(env["WORLD_SIZE"])
        else:
            index, count = 0, 1
            if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
                first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
                index, count = int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
            tasks = int(env.get("SLURM_STEP_NUM_TASKS", 1) or 1)  # srun sets it for a step, sbatch does not
            if tasks > 1 and "SLURM_PROCID" in env:
                index, count = index * tasks + int(env["SLURM_PROCID"]), count * tasks
    index, count = (index or 0), (count or 1)
    if count < 1 or not 0 <= index < count:
        raise UserError(f"worker index {index} is not in 0..{count - 1}")
    return index, count


_HELD: dict[str, Any] = {}  # worker locks this process holds (released by the OS when it exits)


def lock_worker_slot(out: Path, index: int, count: int) -> None:
    """Refuse to run when another live process holds the same worker slot of OUT (two copies of one Slurm
    task, a doubled launch): they would interleave the same classes and shards. An advisory flock on
    OUT/.locks/worker-{index}of{count}.lock, released by the OS when its process dies, kill -9 included."""
    import fcntl

    if not isinstance(out, Path):  # an object store has no locks: the launcher or engine gives each slot once
        return
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


def claim_board(out: Path, stage: str, workers: Workers):
    """The ClaimBoard of this worker for `stage` (learn, generate) in claim mode, else None."""
    if not workers.claim:
        return None
    workers.check()
    if not isinstance(out, Path):
        raise UserError(
            f"{out}: claim mode needs OUT on a shared POSIX filesystem (its leases are files); on object "
            "storage use the static split (torchrun, srun, a Slurm array, --worker-index/--num-workers)",
            "claim",
        )
    from augment.run.claims import ClaimBoard

    return ClaimBoard(out, stage, workers.slot()[0], workers.lease)


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
