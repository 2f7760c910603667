"""OUT/manifest.json: how a run was made (config, versions, each worker's device), merged section by section
by the workers that share OUT."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from augment.run.atomic import write_json


def versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    from augment.version import __version__

    return {
        "augment": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def update_manifest(out, section: str, content: dict[str, Any], worker: dict[str, Any] | None = None):
    """Merge one section into OUT/manifest.json (written atomically, under a lock on a local OUT: workers share
    it). With `worker` (index, count and what this worker ran on), it is recorded under
    workers.<section>.<i>of<n>. On object storage there is no lock: workers that merge at the same moment
    may drop each other's `workers` entry (the sections themselves are the same for every worker)."""
    path = out / "manifest.json"
    if not isinstance(out, Path):
        return _merge(path, section, content, worker)
    import fcntl

    lock = out / ".locks" / "manifest.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        return _merge(path, section, content, worker)


def _merge(path, section: str, content: dict[str, Any], worker: dict[str, Any] | None):
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[section] = {**content, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if worker is not None:
        slot = f"{worker['index']}of{worker['count']}"
        data.setdefault("workers", {}).setdefault(section, {})[slot] = {**worker, "host": platform.node()}
    data["versions"] = versions()
    return write_json(path, data)
