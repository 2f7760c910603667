"""How units of work reach workers: the engine (this process with its share, or Ray), worker slots under
torchrun and Slurm, the worker lock. Used by every job (augment.jobs)."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from augment.errors import UserError
from augment.run.launcher import env_int

WAIT_TOKENS = 6 * 3600.0  # seconds a `build` worker waits for the others' tokens before generating


RETIRED_CLAIM = (
    "claim mode (--claim, --lease) was retired in augment 0.3: for workers that take units as they go and a "
    "dead worker's unit redone, use --engine ray (one machine or a cluster); for a fixed set of processes, "
    "torchrun, srun, a Slurm array or --worker-index/--num-workers"
)
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Workers:
    """How the work reaches workers. `engine` "local": this process does its share of OUT's units: `index`/
    `count` None: from torchrun's RANK/WORLD_SIZE or a Slurm array, else 0 of 1 (the static split). "ray": this
    process drives a Ray cluster (augment.run.engine) that takes every unit: learning groups as tasks,
    generation units on a pool of actors; `ray_address` (default $RAY_ADDRESS, else a local cluster),
    `ray_gpus` per task or actor (default 1 on a cluster with GPUs, else 0), `ray_workers` at once (default:
    as many as the cluster has GPUs, or 1 without), `retries` of a unit whose worker died."""

    index: int | None = field(default=None, metadata={"flag": "--worker-index", "type": int, "help": "this worker's index (default: $RANK, $SLURM_PROCID or $SLURM_ARRAY_TASK_ID)"})  # fmt: skip
    count: int | None = field(default=None, metadata={"flag": "--num-workers", "type": int, "help": "number of workers (default: $WORLD_SIZE, srun's $SLURM_STEP_NUM_TASKS or $SLURM_ARRAY_TASK_COUNT)"})  # fmt: skip
    engine: str = field(default="local", metadata={"flag": "--engine", "type": str, "choices": ENGINES, "help": "local: this process does its share (alone, or one of torchrun's/Slurm's workers); ray: run every unit on a Ray cluster (needs augment[ray])"})  # fmt: skip
    ray_address: str | None = field(default=None, metadata={"flag": "--ray-address", "type": str, "help": "with --engine ray: the cluster to join (default $RAY_ADDRESS; none: a local cluster on 127.0.0.1)"})  # fmt: skip
    ray_gpus: float | None = field(default=None, metadata={"flag": "--ray-gpus", "type": float, "help": "with --engine ray: GPUs per learning task and generation actor (default 1 when the cluster has GPUs, else 0)"})  # fmt: skip
    ray_workers: int | None = field(default=None, metadata={"flag": "--ray-workers", "type": int, "help": "with --engine ray: learning tasks and generation actors at once (default: the cluster's GPUs / --ray-gpus, or 1 without GPUs)"})  # fmt: skip
    retries: int | None = field(default=None, metadata={"flag": "--retries", "type": int, "help": "with --engine ray: times a unit is retried when its worker process dies (default 3)"})  # fmt: skip
    claim: bool = field(default=False, metadata={"flag": "--claim", "action": "store_true", "help": argparse.SUPPRESS})  # fmt: skip
    lease: float | None = field(default=None, metadata={"flag": "--lease", "type": float, "help": argparse.SUPPRESS})  # fmt: skip

    @classmethod
    def from_flags(cls, values: dict) -> Workers:
        """From parsed flags (unset ones None): the dataclass's defaults where a flag is unset."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None})

    def slot(self) -> tuple[int, int]:
        return (0, 1) if self.engine == "ray" else worker_slot(self.index, self.count)

    def check(self) -> None:
        """Every value checked before any model loads (UserError)."""
        if self.claim or self.lease is not None:
            raise UserError(RETIRED_CLAIM, "claim")
        if self.engine not in ENGINES:
            raise UserError(f"engine must be {' or '.join(ENGINES)}, got {self.engine!r}", "engine")
        if self.engine == "ray":
            if self.index is not None or self.count is not None:
                raise UserError("--engine ray hands out every unit itself: drop --worker-index/--num-workers", "engine")
            if self.ray_gpus is not None and not self.ray_gpus >= 0:
                raise UserError(f"ray_gpus must be ≥ 0, got {self.ray_gpus}", "ray_gpus")
            if self.ray_workers is not None and self.ray_workers < 1:
                raise UserError(f"ray_workers must be ≥ 1, got {self.ray_workers}", "ray_workers")
            if self.retries is not None and self.retries < 0:
                raise UserError(f"retries must be ≥ 0, got {self.retries}", "retries")
            from augment.run.engine import preflight

            preflight(self)  # the extra is installed, the cluster answers: before anything is written
        else:
            for name in ("ray_address", "ray_gpus", "ray_workers", "retries"):
                if getattr(self, name) is not None:
                    raise UserError(f"--{name.replace('_', '-')} needs --engine ray", name)
        self.slot()
        from augment.devices import local_rank

        local_rank()  # the launcher's variables are whole numbers in range (a UserError naming one, now)


def worker_slot(index: int | None, count: int | None) -> tuple[int, int]:
    """(index, count) from the flags, else torchrun/accelerate's RANK/WORLD_SIZE, else Slurm: the tasks of an
    srun step (SLURM_PROCID/SLURM_STEP_NUM_TASKS; a batch script alone is one task), of an array (SLURM_ARRAY_TASK_ID/COUNT), or both (an array of
    multi-task steps: array task a, task p → a·ntasks + p)."""
    env = os.environ
    if count is not None and count < 1:
        raise UserError(f"--num-workers must be ≥ 1, got {count}", "count")
    if index is None and count is None:
        if ("RANK" in env) != ("WORLD_SIZE" in env):
            given, missing = ("RANK", "WORLD_SIZE") if "RANK" in env else ("WORLD_SIZE", "RANK")
            raise UserError(f"${given} is set but ${missing} is not: a launcher sets both")
        if "RANK" in env and "WORLD_SIZE" in env:
            index, count = env_int("RANK"), env_int("WORLD_SIZE", minimum=1)
            if index is None or count is None:
                raise UserError("$RANK and $WORLD_SIZE must both be whole numbers (one is empty)")
        else:
            index, count = 0, 1
            if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
                first = env_int("SLURM_ARRAY_TASK_MIN", 0)
                task, tasks_in_array = (
                    env_int("SLURM_ARRAY_TASK_ID", minimum=first),
                    env_int("SLURM_ARRAY_TASK_COUNT", minimum=1),
                )
                if task is None or tasks_in_array is None:
                    raise UserError(
                        "$SLURM_ARRAY_TASK_ID and $SLURM_ARRAY_TASK_COUNT must both be whole numbers (one is empty)"
                    )
                index, count = task - first, tasks_in_array
            tasks = env_int("SLURM_STEP_NUM_TASKS", 1, minimum=1)  # srun sets it for a step, sbatch does not
            if tasks > 1 and "SLURM_PROCID" in env:
                index, count = index * tasks + env_int("SLURM_PROCID", 0), count * tasks
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
