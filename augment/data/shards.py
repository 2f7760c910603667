"""Shards on disk: work units, per-image seeds, atomic writing, completion markers, and reading back.

OUT/shards/<set>-c{position:04d}-{shard:04d}.tar   one finished unit (webdataset tar, class-pure)
OUT/shards/<set>-c{position:04d}-{shard:04d}.json  completion marker: count, sha256, seeds rule, config hash
OUT/_info.json                                     timm-style split info, once every unit exists

A unit is written as `.tar.<pid>.tmp`, flushed, fsynced and renamed; only then is its marker written (also via a
temporary name). So a unit is done iff its marker exists; a failed write (a full disk) removes its `.tmp` files and a
killed run leaves at most `.tmp` files, which the next run removes. Samples: key `c0017_000042`, extensions `jpg`|`png`, `cls` (ASCII position), `json`.

Reading the shards for training::

    augment.data.shards.webdataset_pipeline("OUT/shards", shuffle=1000)   # iterable, streaming
    augment.data.shards.load_samples("OUT/shards")                         # map-style list, small sets only
    datasets.load_dataset("webdataset", data_files={"train": "OUT/shards/*.tar"}, split="train")
    timm: create_dataset("wds/", root="OUT", split="train") reads OUT/_info.json

Each shard holds one class only, so a training loop must mix: shuffle the shard list (`shardshuffle`) *and*
keep a sample buffer (`shuffle`) bigger than a shard; otherwise batches are one or two classes at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.atomic import write_bytes, write_json, write_text
from augment.errors import UserError

SEEDS_RULE = (
    "torch.Generator().manual_seed(int(numpy.random.SeedSequence([seed, position, i])"
    ".generate_state(1, numpy.uint64)[0] >> 1))"
)


@dataclass(frozen=True)
class ShardUnit:
    """Images [start, stop) of class `position`: shard number `shard` of that class."""

    position: int
    shard: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start

    def name(self, setname: str) -> str:
        return f"{setname}-c{self.position:04d}-{self.shard:04d}"


def plan_units(positions: Iterable[int], images_per_class: int, shard_size: int) -> list[ShardUnit]:
    """All units, class-major: (c0, s0), (c0, s1), ..., (c1, s0), ..."""
    if images_per_class < 1:
        raise UserError(f"images per class must be ≥ 1, got {images_per_class}")
    if shard_size < 1:
        raise UserError(f"shard size must be ≥ 1, got {shard_size}")
    units = []
    for p in positions:
        for s, start in enumerate(range(0, images_per_class, shard_size)):
            units.append(ShardUnit(p, s, start, min(start + shard_size, images_per_class)))
    return units


def image_seed(seed: int, position: int, i: int) -> int:
    """The seed of image i of class `position`: independent of batch size, worker and order (63 bits)."""
    return int(np.random.SeedSequence([seed, position, i]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_key(position: int, i: int) -> str:
    return f"c{position:04d}_{i:06d}"


def shards_dir(out: str | Path) -> Path:
    return Path(out) / "shards"


def tar_path(out: str | Path, setname: str, unit: ShardUnit) -> Path:
    return shards_dir(out) / f"{unit.name(setname)}.tar"


def marker_path(out: str | Path, setname: str, unit: ShardUnit) -> Path:
    return shards_dir(out) / f"{unit.name(setname)}.json"


def config_hash(content: dict[str, Any]) -> str:
    """A short stable hash of everything the images depend on."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def read_marker(out: str | Path, setname: str, unit: ShardUnit) -> dict | None:
    path = marker_path(out, setname, unit)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def unit_done(out: str | Path, setname: str, unit: ShardUnit, chash: str, overwrite: bool = False) -> bool:
    """True iff the unit's marker exists with this config hash (and its tar is there). A marker with another
    hash is refused (UserError) unless `overwrite`, in which case the unit counts as pending."""
    marker = read_marker(out, setname, unit)
    if marker is None or not tar_path(out, setname, unit).is_file():
        return False
    if marker.get("config_hash") != chash:
        if overwrite:
            return False
        raise UserError(
            f"{marker_path(out, setname, unit)} was made with another config "
            f"(hash {marker.get('config_hash')} ≠ {chash}); use --overwrite or another --out"
        )
    return True


def remove_stale_tmp(out: str | Path, setname: str, units: Iterable[ShardUnit]) -> int:
    """Delete the `.tmp` files a killed run left for these units (only these: other workers may be writing
    theirs right now); returns how many."""
    n = 0
    for u in units:
        for p in (tar_path(out, setname, u), marker_path(out, setname, u)):
            for tmp in p.parent.glob(f"{p.name}.*tmp"):  # name.tmp (older runs) and name.<pid>.tmp
                tmp.unlink(missing_ok=True)
                n += 1
    return n


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def encode_image(array: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """HWC float in [0, 1] (or uint8) → jpg/png bytes (deterministic)."""
    from PIL import Image

    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(array).save(buf, format="PNG")
    elif image_format == "jpg":
        Image.fromarray(array).save(buf, format="JPEG", quality=jpeg_quality)
    else:
        raise UserError(f"image format {image_format!r}: use jpg or png")
    return buf.getvalue()


def write_unit(
    out: str | Path, setname: str, unit: ShardUnit, samples: list[dict[str, Any]], chash: str
) -> dict[str, Any]:
    """Write one unit atomically: `.tar.<pid>.tmp` → fsync → rename → marker. Samples are webdataset dicts with
    bytes values (`__key__`, `jpg`|`png`, `cls`, `json`). Returns the marker."""
    from webdataset import TarWriter

    final = tar_path(out, setname, unit)
    final.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # one class's shard: megabytes; written to disk in one piece below
    writer = TarWriter(buf, encoder=False, mtime=0.0)
    for s in samples:
        writer.write(s)
    writer.close()
    data = buf.getvalue()
    mpath = marker_path(out, setname, unit)
    mpath.unlink(missing_ok=True)  # (--overwrite) never an old marker next to a new tar
    write_bytes(final, data, fsync=True)  # <name>.<pid>.tmp → fsync → rename; removed on failure (a full disk)
    marker = {
        "unit": unit.name(setname),
        "position": unit.position,
        "shard": unit.shard,
        "first_index": unit.start,
        "count": len(samples),
        "sha256": hashlib.sha256(data).hexdigest(),
        "seeds": SEEDS_RULE,
        "config_hash": chash,
    }
    probs = [json.loads(s["json"]).get("guide_prob") for s in samples if "json" in s]
    if probs and all(p is not None for p in probs):  # scored (--score, DATE): for the dataset card
        marker["guide_prob_mean"] = round(sum(probs) / len(probs), 6)
    write_text(mpath, json.dumps(marker, indent=1) + "\n", fsync=True)
    _fsync_dir(final.parent)
    return marker


def write_info(out: str | Path, setname: str, units: list[ShardUnit], split: str = "train") -> Path | None:
    """timm-style OUT/_info.json once every unit has its marker; None (nothing written) before that."""
    markers = [read_marker(out, setname, u) for u in units]
    if any(m is None for m in markers):
        return None
    info = {
        "name": setname,
        "splits": {
            split: {
                "name": split,
                "num_samples": sum(m["count"] for m in markers),
                "filenames": [f"shards/{u.name(setname)}.tar" for u in units],
                "shard_lengths": [m["count"] for m in markers],
            }
        },
    }
    path = Path(out) / "_info.json"
    return write_json(path, info)


def tar_files(directory: str | Path) -> list[str]:
    """The finished shards of a directory (OUT or OUT/shards), sorted."""
    d = Path(directory)
    if (d / "shards").is_dir():
        d = d / "shards"
    return sorted(str(p) for p in d.glob("*.tar"))


def webdataset_pipeline(directory: str | Path, shuffle: int = 1000, seed: int = 0, decode: str = "pil"):
    """A streaming `webdataset.WebDataset` over the shards, yielding (image, cls, meta) tuples.

    Shards are class-pure, so with `shuffle > 0` the shard list is shuffled *and* samples pass a buffer of
    `shuffle` samples (make it larger than a shard); `shuffle=0` reads in order (evaluation)."""
    import webdataset as wds

    urls = tar_files(directory)
    if not urls:
        raise UserError(f"{directory}: no .tar shards")
    ds = wds.WebDataset(
        urls,
        shardshuffle=(len(urls) if shuffle else False),
        seed=seed,
        empty_check=False,
        workersplitter=wds.split_by_worker,
        nodesplitter=wds.split_by_node,
    )
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    # raw bytes first, then our own decoders: webdataset's default handlers would unpickle a `.pickle` member
    image = _decode_pil if decode == "pil" else (lambda b: b)
    return ds.to_tuple("jpg;png", "cls", "json").map_tuple(image, lambda b: int(b), lambda b: json.loads(b))


def _decode_pil(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def read_tar(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of every sample of one shard, in order. Raw bytes: nothing is decoded, so
    nothing is unpickled. A member's extension is everything after the key's first dot."""
    import tarfile

    key, members = None, {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = member.name.partition(".")
            if k != key and members:
                yield key, members
                members = {}
            key = k
            members[ext] = tar.extractfile(member).read()
    if members:
        yield key, members


def iter_samples(directory: str | Path) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """(shard path, key, {extension: bytes}) over every finished shard of a directory, in shard order."""
    for url in tar_files(directory):
        for key, members in read_tar(url):
            yield url, key, members


def image_bytes(members: dict[str, bytes]) -> bytes | None:
    return next((members[e] for e in ("jpg", "jpeg", "png") if e in members), None)


def load_samples(directory: str | Path) -> list[dict[str, Any]]:
    """Every sample as a dict {key, image (PIL), cls (int), meta (dict)}, in shard order: for small sets."""
    samples = []
    for _, key, m in iter_samples(directory):
        s: dict[str, Any] = {"key": key}
        if image_bytes(m) is not None:
            s["image"] = _decode_pil(image_bytes(m))
        if "cls" in m:
            s["cls"] = int(m["cls"])
        if "json" in m:
            s["meta"] = json.loads(m["json"])
        samples.append(s)
    return samples
