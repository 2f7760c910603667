"""The generated set on disk, owned here: units and shard names, the sample layout, atomic writing, completion
markers, timm's split file, the manifest's class list, and reading it all back.

OUT/shards/<set>-{number:06d}.tar   one finished unit: a webdataset tar holding images of many classes
OUT/shards/<set>-{number:06d}.json  its completion marker: samples, count, sha256, seeds rule, config hash
OUT/_info.json                      timm-style split info, once every unit exists

Shards are mixed: round r holds image indices [r·S, (r+1)·S) of every class (S = shard size), interleaved
index by index with the classes in a seeded order, cut into shards of S and shuffled within each shard. When S
is a multiple or a divisor of the class count (100 images per shard for 10, 100, 200 or 1000 classes) every
shard holds min(S, classes) distinct classes, otherwise at least half as many; so any loader (webdataset with
workers, HF `datasets` streaming, timm's reader) gives batches of many classes from the first batch on. A unit is written as `.tar.<pid>.tmp`, fsynced and renamed; only then is its marker
written, so a unit is done iff its marker exists; a killed run leaves at most `.tmp` files, which the next run
removes. Sample: key `c{position:04d}_{index:06d}`, `jpg`|`png`, `cls` (ASCII position in the label set), `json`.

Reading for training (nothing is ever unpickled):

    augment.data.shards.webdataset_pipeline("OUT", shuffle=1000)   # iterable, streaming
    augment.data.shards.load_samples("OUT")                          # map-style list, small sets only
    datasets.load_dataset("webdataset", data_files={"train": "OUT/shards/*.tar"}, split="train")
    timm: create_dataset("wds/", root="OUT", split="train") reads OUT/_info.json
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import UserError
from augment.labels import LabelClass, LabelSet, read_label_set
from augment.run.atomic import write_bytes, write_json, write_text
from augment.run.storage import out_path

SEEDS_RULE = (
    "torch.Generator().manual_seed(int(numpy.random.SeedSequence([seed, position, i])"
    ".generate_state(1, numpy.uint64)[0] >> 1))"
)
LAYOUT = "mixed/1"  # rounds of S images per class, interleaved across classes (plan_units)
_OLD_UNIT = re.compile(r"-c\d{4}-\d{4}\.json$")  # augment < 0.2: one class per shard


@dataclass(frozen=True)
class ShardUnit:
    """One shard to make: `samples` are (class position, image index) pairs in the order they are written."""

    number: int
    samples: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.samples)

    def name(self, setname: str) -> str:
        return f"{setname}-{self.number:06d}"

    def keys(self) -> list[str]:
        return [sample_key(p, i) for p, i in self.samples]

    def classes(self) -> dict[int, int]:
        """Images per class position in this unit."""
        counts: dict[int, int] = {}
        for p, _ in self.samples:
            counts[p] = counts.get(p, 0) + 1
        return counts


def plan_units(positions: Iterable[int], images_per_class: int, shard_size: int, seed: int = 0) -> list[ShardUnit]:
    """All units of a set (see the module docstring): deterministic for (positions, images per class, shard
    size, seed)."""
    positions = list(positions)
    if images_per_class < 1:
        raise UserError(f"images per class must be ≥ 1, got {images_per_class}")
    if shard_size < 1:
        raise UserError(f"shard size must be ≥ 1, got {shard_size}")
    units: list[ShardUnit] = []
    for r, start in enumerate(range(0, images_per_class, shard_size)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, r, 0x5A4D]))
        order = [(positions[k], i) for i in range(start, min(start + shard_size, images_per_class))
                 for k in rng.permutation(len(positions))]  # fmt: skip
        for lo in range(0, len(order), shard_size):
            chunk = order[lo : lo + shard_size]
            units.append(ShardUnit(len(units), tuple(chunk[k] for k in rng.permutation(len(chunk)))))
    return units


def image_seed(seed: int, position: int, i: int) -> int:
    """The seed of image i of class `position`: independent of batch size, worker, unit and order (63 bits)."""
    return int(np.random.SeedSequence([seed, position, i]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_key(position: int, i: int) -> str:
    return f"c{position:04d}_{i:06d}"


def parse_key(key: str) -> tuple[int, int]:
    """(class position, image index) of a sample key."""
    position, _, index = key[1:].partition("_")
    return int(position), int(index)


def shards_dir(out: str | Path) -> Path:
    return out_path(out) / "shards"


def tar_path(out: str | Path, setname: str, unit: ShardUnit) -> Path:
    return shards_dir(out) / f"{unit.name(setname)}.tar"


def marker_path(out: str | Path, setname: str, unit: ShardUnit) -> Path:
    return shards_dir(out) / f"{unit.name(setname)}.json"


def config_hash(content: dict[str, Any]) -> str:
    """A short stable hash of everything the images depend on."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


OLD_LAYOUT = "class-pure shards of augment < 0.2 (one class per shard, no sample list in the markers)"


def old_layout(out: str | Path) -> Path | None:
    """A marker of the class-pure layout of augment < 0.2 in OUT's shards/, or None."""
    d = shards_dir(out)
    return next((p for p in d.glob("*.json") if _OLD_UNIT.search(p.name)), None) if d.is_dir() else None


def check_layout(out: str | Path) -> None:
    """Refuse a directory holding shards of the class-pure layout of augment < 0.2: new units beside them
    would give every image twice."""
    d = shards_dir(out)
    old = old_layout(out)
    if old is not None:
        raise UserError(
            f"{d} holds class-pure shards of an earlier augment ({old.name}); generate into another --out, "
            f"or delete {d} to make the set again as mixed shards"
        )


def read_marker(out: str | Path, setname: str, unit: ShardUnit) -> dict | None:
    path = marker_path(out, setname, unit)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_markers(out: str | Path, setname: str, units: Iterable[ShardUnit]) -> dict[int, dict]:
    """{unit index: marker} of every unit whose marker and tar exist: one listing of OUT/shards, then the markers
    that are there read together (on an object store one batch of concurrent GETs, not a HEAD and a GET per
    unit in turn: at 10,000 units that is the difference between seconds and many minutes)."""
    d = shards_dir(out)
    names = {p.name for p in d.iterdir()} if d.is_dir() else set()
    there = [u for u in units if f"{u.name(setname)}.json" in names and f"{u.name(setname)}.tar" in names]
    if not there:
        return {}
    paths = [marker_path(out, setname, u) for u in there]
    if isinstance(d, Path):
        blobs = {}
        for u, p in zip(there, paths):
            try:
                blobs[u.number] = p.read_bytes()
            except OSError:
                pass
    else:  # fsspec: cat of many paths runs concurrently (s3fs, gcsfs); a missing one comes back as an error
        got = d.fs.cat([p.path for p in paths], on_error="return")
        blobs = {u.number: got[p.path] for u, p in zip(there, paths) if isinstance(got.get(p.path), bytes)}
    markers = {}
    for i, blob in blobs.items():
        try:
            markers[i] = json.loads(blob)
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass  # unreadable: the unit is redone
    return markers


def pending_units(
    out: str | Path, setname: str, units: list[ShardUnit], chash: str, overwrite: bool = False
) -> list[ShardUnit]:
    """The units without a finished marker of this config, as `unit_done` decides each, from `read_markers`."""
    markers = read_markers(out, setname, units)
    pending = []
    for u in units:
        marker = markers.get(u.number)
        if marker is None:
            pending.append(u)
        elif marker.get("config_hash") != chash:
            if not overwrite:
                raise UserError(
                    f"{marker_path(out, setname, u)} was made with another config "
                    f"(hash {marker.get('config_hash')} ≠ {chash}); use --overwrite or another --out"
                )
            pending.append(u)
    return pending


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
    theirs right now); returns how many. An object store has none (every object is one whole PUT)."""
    n = 0
    if not isinstance(out_path(out), Path):
        return 0
    for u in units:
        for p in (tar_path(out, setname, u), marker_path(out, setname, u)):
            for tmp in p.parent.glob(f"{p.name}.*tmp"):  # name.tmp (older runs) and name.<pid>.tmp
                tmp.unlink(missing_ok=True)
                n += 1
    return n


def remove_unplanned(out: str | Path, setname: str, units: list[ShardUnit]) -> list[str]:
    """Delete this set's shards and markers that the plan no longer has (a smaller set made with --overwrite),
    so no reader mixes them in; returns their names."""
    planned = {u.name(setname) for u in units}
    gone = []
    d = shards_dir(out)
    for marker in sorted(d.glob(f"{setname}-*.json")) if d.is_dir() else []:
        if marker.stem not in planned and re.fullmatch(rf"{re.escape(setname)}-\d{{6}}", marker.stem):
            marker.unlink(missing_ok=True)
            marker.with_suffix(".tar").unlink(missing_ok=True)
            gone.append(marker.stem)
    return gone


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


def encode_sample(position: int, i: int, image: bytes, image_format: str, meta: dict[str, Any]) -> dict[str, Any]:
    """One webdataset sample: the encoded image, `cls` and the json record (class, position, index, ...)."""
    return {
        "__key__": sample_key(position, i),
        image_format: image,
        "cls": str(position).encode("ascii"),
        "json": json.dumps({"position": position, "index": i, **meta}, sort_keys=True).encode(),
    }


def write_unit(
    out: str | Path, setname: str, unit: ShardUnit, samples: list[dict[str, Any]], chash: str
) -> dict[str, Any]:
    """Write one unit atomically: `.tar.<pid>.tmp` → fsync → rename → marker. Returns the marker."""
    from webdataset import TarWriter

    final = tar_path(out, setname, unit)
    final.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # one shard: megabytes; written to disk in one piece below
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
        "layout": LAYOUT,
        "count": len(samples),
        "sha256": hashlib.sha256(data).hexdigest(),
        "classes": {str(p): n for p, n in sorted(unit.classes().items())},
        "samples": [list(s) for s in unit.samples],
        "seeds": SEEDS_RULE,
        "config_hash": chash,
    }
    probs: dict[str, float] = {}
    for s in samples:
        meta = json.loads(s["json"])
        if meta.get("guide_prob") is not None:  # scored (--score, DATE): the card's per-class mean
            probs[str(meta["position"])] = probs.get(str(meta["position"]), 0.0) + meta["guide_prob"]
    if probs:
        marker["guide_prob_sum"] = {k: round(v, 6) for k, v in sorted(probs.items())}
    write_text(mpath, json.dumps(marker, indent=1) + "\n", fsync=True)
    if isinstance(final, Path):
        _fsync_dir(final.parent)
    return marker


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


def write_info(out: str | Path, setname: str, units: list[ShardUnit], split: str = "train") -> Path | None:
    """timm-style OUT/_info.json once every unit has its marker; None (nothing written) before that."""
    found = read_markers(out, setname, units)
    if len(found) < len(units):
        return None
    markers = [found[u.number] for u in units]
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
    return write_json(out_path(out) / "_info.json", info)


def class_counts(out: str | Path) -> tuple[dict[int, int], dict[int, float]]:
    """Images per class position and the sum of their guide probabilities (scored sets), from the markers."""
    counts: dict[int, int] = {}
    probs: dict[int, float] = {}
    for marker in sorted(shards_dir(out).glob("*.json")):
        m = json.loads(marker.read_text())
        for p, n in m.get("classes", {}).items():
            counts[int(p)] = counts.get(int(p), 0) + n
        for p, v in m.get("guide_prob_sum", {}).items():
            probs[int(p)] = probs.get(int(p), 0.0) + v
    return counts, probs


def manifest_labels(directory: str | Path) -> tuple[list[str] | None, str | None, str | None]:
    """(class names in `cls` order, the label file it was made from, sha256 of manifest.json) of a generated
    set; (None, None, None) without a manifest. UserError for a manifest that cannot be read."""
    from augment.run.manifest import read_manifest

    path = out_path(directory) / "manifest.json"
    manifest, data = read_manifest(out_path(directory), raw=True)
    if not data:
        return None, None, None
    generate = manifest.get("generate") if isinstance(manifest.get("generate"), dict) else {}
    labels, label_file = manifest.get("labels", generate.get("labels")), generate.get("label_file")
    if labels is not None:
        if not isinstance(labels, list) or not labels:
            raise UserError(f"{path}: the class list ('labels') is not a non-empty list")
        labels = [x["name"] if isinstance(x, dict) else str(x) for x in labels]
    return labels, label_file, hashlib.sha256(data).hexdigest()


def label_set(directory: str | Path) -> LabelSet:
    """The label set a generated directory was made from: its recorded label file when that still lists the
    same names (so explicit 'index<TAB>name' lines keep working), else the names in manifest.json."""
    path = out_path(directory) / "manifest.json"
    names, label_file, _ = manifest_labels(directory)
    if names is None:
        raise UserError(
            f"{path}: cannot read the generated set's class list; is this an `augment generate` output directory?"
        )
    if label_file and Path(label_file).is_file():
        try:
            labels = read_label_set(label_file)
            if labels.names() == names:
                return labels
        except UserError:
            pass
    classes = tuple(LabelClass(i, n, None, f"{i:04d}") for i, n in enumerate(names))
    return LabelSet(path=str(path), name="labels", classes=classes)


def sample_count(directory: str | Path) -> int:
    """Samples in a directory's shards (counted from the tar headers, nothing decoded)."""
    import tarfile

    n = 0
    for url in tar_files(directory):
        try:
            with out_path(url).open("rb") as f, tarfile.open(fileobj=f) as tar:  # headers only: no member is read
                n += sum(1 for m in tar if m.name.endswith(".cls"))
        except (tarfile.TarError, EOFError) as e:
            raise ShardError(f"{url}: not a readable tar ({e}); `augment verify` on its directory says more") from None
    return n


def iter_images(directory: str | Path, keep: set[int] | None = None) -> Iterator[tuple[object, int]]:
    """(PIL image, cls) of every sample in shard order (only sample numbers in `keep`, when given)."""
    from PIL import Image

    if not tar_files(directory):
        raise UserError(f"{directory}: no .tar shards")
    i = 0  # sample number among those with an image and a cls
    for _, _, members in iter_samples(directory):
        image = image_bytes(members)
        if image is None or "cls" not in members:
            continue
        if keep is None or i in keep:
            with Image.open(io.BytesIO(image)) as im:
                rgb = im.convert("RGB")
            yield rgb, int(members["cls"])
        i += 1


def tar_files(directory: str | Path) -> list[str]:
    """The finished shards of a directory (OUT or OUT/shards; a path or a URL), sorted: paths or URLs."""
    d = out_path(directory)
    if (d / "shards").is_dir():
        d = d / "shards"
    return sorted(str(p) for p in d.glob("*.tar"))


def webdataset_pipeline(
    directory: str | Path, shuffle: int = 1000, seed: int = 0, decode: str = "pil", meta: bool = True
):
    """A streaming `webdataset.WebDataset` over the shards, yielding (image, cls, meta) tuples, or (image, cls)
    with `meta=False` (what a DataLoader's default collate takes: meta holds None and nested values); with
    `shuffle > 0` the shard list is shuffled and samples pass a buffer of `shuffle`; 0 reads in order."""
    import webdataset as wds

    urls = tar_files(directory)
    if not urls:
        raise UserError(f"{directory}: no .tar shards")
    if not isinstance(out_path(directory), Path):
        webdataset_reads(str(directory).split("://", 1)[0])
    ds = wds.WebDataset(urls, shardshuffle=(len(urls) if shuffle else False), seed=seed, empty_check=False,
                        workersplitter=wds.split_by_worker, nodesplitter=wds.split_by_node)  # fmt: skip
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    # raw bytes first, then our own decoders: webdataset's default handlers would unpickle a `.pickle` member
    image = _decode_pil if decode == "pil" else (lambda b: b)
    if not meta:
        return ds.to_tuple("jpg;png", "cls").map_tuple(image, lambda b: int(b))
    return ds.to_tuple("jpg;png", "cls", "json").map_tuple(image, lambda b: int(b), lambda b: json.loads(b))


def _open_with_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    return out_path(url).open(mode)


def webdataset_reads(scheme: str = "s3") -> None:
    """Let webdataset (and so timm's `wds/` reader) open `scheme://` URLs through fsspec, as augment does.
    webdataset opens shards by URL scheme (`webdataset.gopen.gopen_schemes`, its table for new schemes) and
    has none for s3://; schemes it handles itself keep its handler. `webdataset_pipeline(URL)` calls this."""
    from webdataset.gopen import gopen_schemes

    gopen_schemes.setdefault(scheme, _open_with_fsspec)


def _decode_pil(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


class ShardError(UserError):
    """A shard that cannot be read (truncated, not a tar): one line naming it."""


def read_tar(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of every sample of one shard, in order. Raw bytes: nothing is decoded, so
    nothing is unpickled. A member's extension is everything after the key's first dot."""
    import tarfile

    key, members = None, {}
    try:
        with out_path(path).open("rb") as f, tarfile.open(fileobj=f) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, ext = member.name.partition(".")
                if k != key and members:
                    yield key, members
                    members = {}
                key = k
                members[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as e:
        raise ShardError(f"{path}: not a readable tar ({e}); `augment verify` on its directory says more") from None
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
