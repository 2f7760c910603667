"""Real datasets from one spec string, their classes mapped onto a label set, and the k-shot sampler.

Specs: `cub:DIR` (CUB-200-2011), `inat:DIR` (iNaturalist 2021 COCO-style JSON), `imagefolder:DIR`
(DIR/train/<class>/*, DIR/val|test|validation/<class>/*), `hf:ID_OR_DIR` (Hugging Face `datasets`, hub id or a
local dir), `fashion-mnist[:DIR]` (idx files; the toy world's data).

Every dataset's classes are matched to the label set by name (`augment.labels.normalise_name`, so
"001.Black_footed_Albatross" matches "Black footed Albatross"); when some names don't match and every line of
the label file has an index, by that index into the dataset's class order (CUB classes.txt order, iNat category
id order, sorted folder names as torchvision does, the HF ClassLabel order, Fashion-MNIST 0..9) — after checking
that the names which did match agree with those indices. Classes of the dataset outside the label set are
dropped. Labels in a `Split` are label-set positions.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augment.data.images import FileImages, GreyImages, HFImages, ImageSource, Split
from augment.errors import UserError
from augment.labels import LabelSet, normalise_name

KINDS = ("cub", "inat", "imagefolder", "hf", "fashion-mnist")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
FASHION_MNIST_OFFICIAL = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class LabelledDataset:
    """A dataset's train and test splits with labels as positions in `classes` (the label set's names)."""

    spec: str
    kind: str
    classes: list[str]
    train: Split
    test: Split
    matched_by: str  # "name" or "index"


# ---------------------------------------------------------------- loaders: (class aliases, train, test) in dataset terms
@dataclass
class _Raw:
    class_aliases: list[tuple[str, ...]]  # names a dataset class may be matched by, in the dataset's class order
    train: tuple[ImageSource, np.ndarray]
    test: tuple[ImageSource, np.ndarray]


def _read_table(path: Path) -> list[tuple[str, str]]:
    """Lines of 'first rest' (CUB's .txt files)."""
    if not path.is_file():
        raise UserError(f"{path}: not found (is this a CUB_200_2011 directory?)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise UserError(f"{path}:{n}: expected two fields, got {line!r}")
            rows.append((parts[0], parts[1]))
    return rows


def _load_cub(location: str) -> _Raw:
    root = Path(location)
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    classes = _read_table(root / "classes.txt")
    class_index = {cid: i for i, (cid, _) in enumerate(classes)}
    paths = dict(_read_table(root / "images.txt"))
    labels = dict(_read_table(root / "image_class_labels.txt"))
    is_train = dict(_read_table(root / "train_test_split.txt"))
    parts: dict[bool, tuple[list[str], list[int]]] = {True: ([], []), False: ([], [])}
    for image_id, rel in paths.items():
        if image_id not in labels or image_id not in is_train or labels[image_id] not in class_index:
            raise UserError(
                f"{root}: image {image_id} lacks a valid class or split in image_class_labels.txt / "
                "train_test_split.txt"
            )
        files, ys = parts[is_train[image_id].strip() == "1"]
        files.append(str(root / "images" / rel))
        ys.append(class_index[labels[image_id]])
    _check_first_file(parts[True][0] or parts[False][0], root)
    return _Raw(
        [(name,) for _, name in classes],
        *[(FileImages(parts[t][0]), np.array(parts[t][1], dtype=np.int64)) for t in (True, False)],
    )


def _load_inat(location: str) -> _Raw:
    root = Path(location)
    train_json = next((root / n for n in ("train.json", "train_mini.json") if (root / n).is_file()), None)
    if train_json is None or not (root / "val.json").is_file():
        raise UserError(f"{root}: expected train.json (or train_mini.json) and val.json (iNaturalist 2021 layout)")
    splits, categories = [], None
    for path in (train_json, root / "val.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cats = sorted(data["categories"], key=lambda c: c["id"])
            files = {im["id"]: im["file_name"] for im in data["images"]}
            pairs = [(files[a["image_id"]], a["category_id"]) for a in data["annotations"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a COCO-style iNaturalist file ({type(e).__name__}: {e})") from None
        categories = categories or cats
        index = {c["id"]: i for i, c in enumerate(categories)}
        if any(cid not in index for _, cid in pairs):
            raise UserError(f"{path}: annotation with a category id not in {train_json.name}'s categories")
        splits.append(
            (FileImages([str(root / f) for f, _ in pairs]), np.array([index[cid] for _, cid in pairs], dtype=np.int64))
        )
    _check_first_file(splits[0][0].paths, root)
    aliases = [tuple(str(c[k]) for k in ("name", "common_name") if c.get(k)) for c in categories]
    return _Raw(aliases, splits[0], splits[1])


def _load_imagefolder(location: str) -> _Raw:
    """DIR/train/<class>/* with DIR/val|test|validation/<class>/*, or just DIR/<class>/* (the k images a user
    has: a training split only, no test split)."""
    root = Path(location)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    test_dir = next((root / n for n in ("val", "test", "validation") if (root / n).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() else root
    if train_dir == root and test_dir is not None:
        raise UserError(f"{root}: has {test_dir.name}/ but no train/; expected train/ and {test_dir.name}/")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{train_dir}: no class folders (expected DIR/<class>/*, or DIR/train/<class>/*)")
    index = {name: i for i, name in enumerate(classes)}
    splits = []
    for split_dir in (train_dir, test_dir):
        if split_dir is None:  # no test split: an empty one
            splits.append((FileImages([]), np.zeros(0, dtype=np.int64)))
            continue
        files, ys = [], []
        for d in sorted(split_dir.iterdir()):
            if not d.is_dir():
                continue
            if d.name not in index:
                raise UserError(f"{d}: class folder not in {train_dir}")
            for dirpath, dirnames, filenames in os.walk(d):
                dirnames.sort()
                for f in sorted(filenames):
                    if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                        files.append(os.path.join(dirpath, f))
                        ys.append(index[d.name])
        images = FileImages(files)
        bad = images.unreadable()
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise UserError(f"{split_dir}: {len(bad)} file(s) are not readable images: {shown}; remove or replace them")
        splits.append((images, np.array(ys, dtype=np.int64)))
    return _Raw([(c,) for c in classes], splits[0], splits[1])


def _load_hf(location: str) -> _Raw:
    import datasets

    try:
        if Path(location).is_dir() and any(
            (Path(location) / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")
        ):
            data = datasets.load_from_disk(location)
        else:
            data = datasets.load_dataset(location)
    except Exception as e:  # the hub and the loaders raise many types for "not found" / "offline"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise UserError(f"hf:{location}: cannot load dataset ({type(e).__name__}: {first})") from None
    if not isinstance(data, datasets.DatasetDict):
        raise UserError(f"hf:{location}: need a dataset with train and test splits, got a single split")
    test_name = next((n for n in ("test", "validation", "valid", "val") if n in data), None)
    if "train" not in data or test_name is None:
        raise UserError(f"hf:{location}: splits {sorted(data)}; need 'train' and one of test/validation/val")
    features = data["train"].features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise UserError(f"hf:{location}: needs an Image column and a ClassLabel column, has {dict(features)}")
    names = features[label_col].names
    splits = [
        (HFImages(data[s], image_col), np.asarray(data[s][label_col], dtype=np.int64)) for s in ("train", test_name)
    ]
    return _Raw([(n,) for n in names], splits[0], splits[1])


def _load_fashion_mnist(location: str | None) -> _Raw:
    from augment.toy import FINE_NAMES
    from augment.toy.data import load

    splits = []
    for split in ("train", "test"):
        images, labels = load(split, location)
        splits.append((GreyImages(images), labels))
    return _Raw(list(zip(FINE_NAMES, FASHION_MNIST_OFFICIAL)), splits[0], splits[1])


LOADERS = {
    "cub": _load_cub,
    "inat": _load_inat,
    "imagefolder": _load_imagefolder,
    "hf": _load_hf,
    "fashion-mnist": _load_fashion_mnist,
}


def _check_first_file(paths: list[str], root: Path) -> None:
    if paths and not Path(paths[0]).is_file():
        raise UserError(f"{root}: image file {paths[0]} not found")


# ---------------------------------------------------------------- spec, class matching, loading
def parse_spec(spec: str, check_location: bool = True) -> tuple[str, str | None]:
    """('cub', '/data/CUB_200_2011') from 'cub:/data/CUB_200_2011'; checks the kind and (`check_location`) that a
    local dir exists."""
    kind, sep, location = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise UserError(
            f"unknown dataset kind {kind!r} in {spec!r}; expected one of {', '.join(KINDS)} "
            "(e.g. cub:/data/CUB_200_2011)"
        )
    if not location:
        if kind != "fashion-mnist":
            raise UserError(f"dataset spec {spec!r} needs a location: {kind}:PATH")
        return kind, None
    if check_location and kind != "hf" and not Path(location).is_dir():
        raise UserError(f"dataset {spec!r}: directory {location} not found")
    return kind, location


def match_classes(labels: LabelSet, class_aliases: list[tuple[str, ...]], where: str) -> tuple[list[int], str]:
    """Dataset class index for each label-set class, and how they were matched ('name' or 'index')."""
    by_key: dict[str, set[int]] = {}
    shown_name: dict[str, str] = {}
    for i, aliases in enumerate(class_aliases):
        for alias in aliases:
            by_key.setdefault(normalise_name(alias), set()).add(i)
            shown_name.setdefault(normalise_name(alias), alias)
    by_name, unmatched = {}, []
    for c in labels.classes:
        hits = by_key.get(normalise_name(c.name), set())
        if len(hits) == 1:
            by_name[c.position] = next(iter(hits))
        else:
            unmatched.append((c, hits))
    n = len(class_aliases)
    if not unmatched:
        return [by_name[c.position] for c in labels.classes], "name"
    if all(c.index is not None for c in labels.classes):
        outside = [c for c in labels.classes if c.index >= n]
        if outside:
            raise UserError(
                f"{where}: {labels.path} line {outside[0].line} has index {outside[0].index} but the "
                f"dataset has {n} classes (names did not all match either)"
            )
        clash = [
            (c, by_name[c.position]) for c in labels.classes if c.position in by_name and by_name[c.position] != c.index
        ]
        if clash:
            c, d = clash[0]
            raise UserError(
                f"{where}: {labels.path} line {c.line}: {c.name!r} has index {c.index} but is the "
                f"dataset's class {d} {class_aliases[d][0]!r} by name; the indices don't follow "
                "this dataset's class order"
            )
        return [c.index for c in labels.classes], "index"
    keys = list(by_key)
    shown = []
    for c, hits in unmatched[:3]:
        if hits:
            shown.append(f"{c.name!r} (matches several: {sorted(hits)})")
        else:
            near = difflib.get_close_matches(normalise_name(c.name), keys, n=2, cutoff=0.6)
            shown.append(f"{c.name!r} (nearest: {', '.join(repr(shown_name[k]) for k in near) or 'none'})")
    more = f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else ""
    raise UserError(
        f"{where}: {len(unmatched)} of {len(labels)} classes of {labels.path} not found among the "
        f"dataset's {n} classes: {'; '.join(shown)}{more}; fix the names or use 'index<TAB>name' lines"
    )


def load_dataset(spec: str, labels: LabelSet) -> LabelledDataset:
    """Load `spec` and relabel its train and test splits to positions in `labels`."""
    kind, location = parse_spec(spec)
    raw = LOADERS[kind](location)
    mapping, matched_by = match_classes(labels, raw.class_aliases, f"dataset {spec}")
    position = np.full(len(raw.class_aliases), -1, dtype=np.int64)
    position[mapping] = np.arange(len(mapping))
    splits = []
    for name, (source, ys) in (("train", raw.train), ("test", raw.test)):
        pos = position[ys] if len(ys) else ys
        keep = np.flatnonzero(pos >= 0)
        if not len(keep) and (name == "train" or len(ys)):  # an imagefolder of class folders alone: no test split
            raise UserError(f"dataset {spec}: the {name} split has no images of the label set's classes")
        split = Split(source, pos)
        splits.append(split if len(keep) == len(pos) else split.subset(keep))
    empty = [labels.classes[p].name for p in np.flatnonzero(np.bincount(splits[0].labels, minlength=len(labels)) == 0)]
    if empty:  # refused, not skipped: the user asked for these classes (drop them from the label file instead)
        shown = ", ".join(repr(n) for n in empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise UserError(f"dataset {spec}: {len(empty)} class(es) of the label set have no training images: {shown}; "
                        "add images, or remove them from the label file")  # fmt: skip
    return LabelledDataset(spec, kind, labels.names(), splits[0], splits[1], matched_by)


# ---------------------------------------------------------------- k-shot sampling
def trial_seed(seed: int, trial: int) -> int:
    """The seed of one trial, derived from the run's seed and the trial number."""
    return int(np.random.SeedSequence([seed, trial]).generate_state(1)[0])


def sample_kshot(
    labels: np.ndarray, k: int, *, num_classes: int, seed: int, trial: int, class_names: list[str] | None = None
) -> np.ndarray:
    """Sorted indices of exactly k images of every class, the same for the same (seed, trial).

    The picks are nested: for one trial, the 3-shot set is part of the 9-shot set, which is part of the 15-shot
    set, so accuracy across shots differs by the added images only. Raises UserError if a class has fewer than k.
    """
    if k < 0:
        raise UserError(f"shots must be >= 0, got {k}")
    rng = np.random.default_rng(trial_seed(seed, trial))
    picks = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        order = rng.permutation(len(members))  # drawn whatever k is: this makes the picks nested
        if len(members) < k:
            name = f" {class_names[c]!r}" if class_names else ""
            raise UserError(f"class {c}{name} has {len(members)} training image(s), fewer than {k} shots")
        picks.append(members[order[:k]])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class."""
    return np.bincount(labels, minlength=num_classes)
