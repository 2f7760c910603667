"""Identities of models that do not depend on where they lie, so a run directory and the models it used can
move (another checkout, another mount point) and still continue."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
EDGE = 1 << 20  # bytes read from each end of a weights file


def source_identity(spec: str) -> str:
    """A generator spec (hub id or directory) or guide spec (`ckpt:DIR`, `hf:DIR?...`, `timm:NAME`...) as
    an identity: for a local directory a hash of its JSON configs and of each weights file's size and first
    and last MiB (cheap at any model size, and different for models of the same architecture); for anything
    else the spec itself."""
    from augment.models.guides import spec_location

    prefix, target = spec_location(spec)
    path_part, q, query = target.partition("?")
    path = Path(path_part).expanduser()
    if not path.is_dir():
        return spec
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if f.suffix == ".json":
            h.update(rel.encode() + b"\0" + f.read_bytes())
        elif f.suffix in WEIGHT_SUFFIXES:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(EDGE)
                fh.seek(max(size - EDGE, 0))
                tail = fh.read(EDGE)
            h.update(rel.encode() + b"\0" + str(size).encode() + head + tail)
    return f"{prefix}content:{h.hexdigest()[:16]}{q}{query}"


def source_name(spec: str) -> str:
    """How manifests and token metadata name a model: a hub id or guide spec as it is; a local directory by
    its name and content identity ("stable-diffusion-v1-4 (content:1f2e...)"), never by its absolute path."""
    from augment.models.guides import spec_location

    prefix, target = spec_location(spec)
    path = Path(target.partition("?")[0]).expanduser()
    if not path.is_dir():
        return spec
    return f"{prefix}{path.name} ({source_identity(spec).removeprefix(prefix)})"


def manifest_config(config) -> dict:
    """A RunConfig as manifests record it: local models named by directory and content, not absolute path."""
    data = config.to_dict()
    for key in ("generator", "guide", "eval_classifier"):
        if data.get(key):
            data[key] = source_name(data[key])
    if (data.get("lora") or {}).get("weights"):
        data["lora"]["weights"] = source_name(data["lora"]["weights"])
    return data
