"""OUT/manifest.json, the one owner of its reading and writing: how a run was made (config, versions, each
worker's device), one section per stage (`learn`, `generate`, `fewshot`), merged section by section by the
workers and commands that share OUT, with `versions` at the top."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from augment.run.atomic import write_json

MANIFEST = "manifest.json"
PACKAGES = ("torch", "diffusers", "transformers", "timm", "numpy", "webdataset", "datasets")


def versions() -> dict[str, str | None]:
    """The versions a manifest records: augment, Python and the packages the stages use (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    from augment.version import __version__

    found: dict[str, str | None] = {"augment": __version__, "python": platform.python_version()}
    for dist in PACKAGES:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


def read_manifest(out, *, raw: bool = False):
    """OUT/manifest.json as a dict ({} when there is none; UserError when it is not a JSON object); with `raw`,
    (the dict, its bytes) for callers that record its hash."""
    from augment.errors import UserError

    path = out / MANIFEST
    if not path.is_file():
        return ({}, b"") if raw else {}
    data = path.read_bytes()
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a JSON object")
    return (manifest, data) if raw else manifest


def update_manifest(out, section: str, content: dict[str, Any], worker: dict[str, Any] | None = None):
    """Merge one section into OUT/manifest.json (written atomically, under a lock on a local OUT: workers share
    it). With `worker` (index, count and what this worker ran on), it is recorded under
    workers.<section>.<i>of<n>. On object storage there is no lock: workers that merge at the same moment
    may drop each other's `workers` entry (the sections themselves are the same for every worker)."""
    path = out / MANIFEST
    if not isinstance(out, Path):
        return _merge(path, section, content, worker)
    import fcntl

    lock = out / ".locks" / "manifest.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        return _merge(path, section, content, worker)


def _merge(path, section: str, content: dict[str, Any], worker: dict[str, Any] | None):
    data = read_manifest(path.parent)
    data[section] = {**content, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if worker is not None:
        slot = f"{worker['index']}of{worker['count']}"
        data.setdefault("workers", {}).setdefault(section, {})[slot] = {**worker, "host": platform.node()}
    data["versions"] = versions()
    return write_json(path, data)
