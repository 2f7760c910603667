"""The launchers' environment variables (torchrun/accelerate: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE;
Slurm: SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS, SLURM_ARRAY_TASK_*), read in one place: a value that is
not a whole number in range is a UserError naming the variable, never a traceback."""

from __future__ import annotations

import os

from augment.errors import UserError


def env_int(name: str, default: int | None = None, minimum: int = 0) -> int | None:
    """$name as a whole number ≥ `minimum`; `default` when unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        raise UserError(f"${name}={os.environ[name]!r}: expected a whole number (set by the launcher)") from None
    if value < minimum:
        raise UserError(f"${name}={value}: must be ≥ {minimum}")
    return value
