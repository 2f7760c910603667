"""Atomic file writes: readers (and other workers sharing OUT) see the old file or the new one, never half.

The content goes to `<name>.<pid>.tmp` beside the target (unique per process: workers write the same manifest,
card or info file at once), then replaces the target with one rename. On any failure (a full disk) the
temporary file is removed before the error goes on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> Path:
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, fsync: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), fsync)


def write_json(path: str | Path, obj: Any, indent: int | None = 1, fsync: bool = False) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n", fsync)
