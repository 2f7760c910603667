"""Synthetic image sets written by `augment generate`: DIR/shards/*.tar WebDataset shards plus DIR/manifest.json.

A sample has `__key__` (e.g. c0003_000042), an image under `jpg`/`jpeg`/`png`, `cls` (ASCII integer: position of
the class in the label set used to generate) and `json` ({"class": name, ...}). DIR/manifest.json's generate "labels"
(names in position order) maps `cls` to the label set used here, by name; without a manifest each sample's
json "class" is used. Samples are read with `webdataset` without its decoders: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augment.data.images import EncodedImages, Split
from augment.data.shards import image_bytes, iter_samples, manifest_labels, tar_files
from augment.errors import UserError
from augment.labels import LabelSet, normalise_name
from augment.run.storage import out_path

SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RESERVED = {"real"}


@dataclass
class SyntheticSet:
    """One named synthetic set, relabelled to the label set's positions."""

    name: str
    directory: Path
    split: Split
    shards: list[str]
    manifest_sha256: str | None


def check_name(name: str) -> None:
    if not SET_NAME.fullmatch(name) or name in RESERVED:
        raise UserError(
            f"synthetic {name!r}: a set's name is letters, digits, '_', '.', '-' and not 'real'", "synthetic"
        )


def check_directory(name: str, directory: str | Path) -> Path:
    """A synthetic set's directory (a path or a URL): it exists and holds shards (UserError naming the set
    otherwise)."""
    path = out_path(directory, "synthetic")
    if not path.is_dir():
        raise UserError(f"synthetic {name}={directory}: directory {directory} not found", "synthetic")
    if not shard_paths(path):
        raise UserError(f"synthetic {name}={directory}: no shards in {path / 'shards'} (*.tar)", "synthetic")
    return path


def shard_paths(directory: Path) -> list[Path]:
    """Finished shards: DIR/shards/*.tar (else DIR/*.tar), sorted; `*.tmp` files are unfinished and ignored."""
    return [out_path(p) for p in tar_files(directory)]


def load_synthetic(name: str, directory: Path, labels: LabelSet) -> SyntheticSet:
    """Read every sample of DIR's shards into memory (encoded bytes) with labels as positions in `labels`."""

    shards = shard_paths(directory)
    if not shards:
        raise UserError(f"synthetic set {name}: no shards in {directory / 'shards'}")
    generated_names, _, manifest_sha = manifest_labels(directory)
    position = {normalise_name(n): i for i, n in enumerate(labels.names())}

    def to_position(class_name: str, where: str) -> int:
        p = position.get(normalise_name(class_name))
        if p is None:
            raise UserError(f"synthetic set {name} ({where}): class {class_name!r} is not in {labels.path}")
        return p

    cls_map = None
    if generated_names is not None:
        cls_map = [to_position(n, "manifest.json") for n in generated_names]

    blobs, ys = [], []
    for url, key, sample in iter_samples(directory):
        where = f"{out_path(url).name}:{key}"
        image = image_bytes(sample)
        if image is None or "cls" not in sample:
            raise UserError(f"synthetic set {name} ({where}): sample has no jpg/png image or no cls")
        try:
            cls = int(bytes(sample["cls"]).decode("ascii").strip())
            meta = json.loads(bytes(sample["json"]).decode("utf-8")) if "json" in sample else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"synthetic set {name} ({where}): unreadable cls/json ({e})") from None
        if cls_map is not None:
            if not 0 <= cls < len(cls_map):
                raise UserError(
                    f"synthetic set {name} ({where}): cls {cls} outside manifest.json's {len(cls_map)} labels"
                )
            if (
                isinstance(meta, dict)
                and "class" in meta
                and normalise_name(str(meta["class"])) != normalise_name(generated_names[cls])
            ):
                raise UserError(
                    f"synthetic set {name} ({where}): json class {meta['class']!r} but cls {cls} is "
                    f"{generated_names[cls]!r} in manifest.json"
                )
            ys.append(cls_map[cls])
        elif isinstance(meta, dict) and "class" in meta:
            ys.append(to_position(str(meta["class"]), where))
        else:
            raise UserError(f"synthetic set {name}: no manifest.json labels and sample {where} has no json class")
        blobs.append(bytes(image))
    if not blobs:
        raise UserError(f"synthetic set {name}: the shards in {directory} hold no samples")
    ys_arr = np.array(ys, dtype=np.int64)
    missing = [n for i, n in enumerate(labels.names()) if not (ys_arr == i).any()]
    if missing:
        raise UserError(
            f"synthetic set {name}: no images of {len(missing)} class(es) of {labels.path}, e.g. {missing[0]!r}"
        )
    return SyntheticSet(name, directory, Split(EncodedImages(blobs), ys_arr), [str(s) for s in shards], manifest_sha)
