"""downstream: dataset loaders on tiny fixture directories, the k-shot sampler, synthetic shards, training."""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.data.datasets import load_dataset, parse_spec, sample_kshot
from augment.errors import UserError
from augment.labels import read_label_set
from downstream.synthetic import check_directory, check_name, load_synthetic

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
CUB_NAMES = ["001.Red_bird", "002.Green_bird", "003.Blue_bird"]


# ---------------------------------------------------------------- fixture writers (shared with test_downstream_cli)
def write_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 8, fmt: str = "PNG") -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-25, 26, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def write_labels(path: Path, names=("Red bird", "Green bird", "Blue bird")) -> Path:
    path.write_text("\n".join(names) + "\n")
    return path


def make_cub(root: Path, train: int = 4, test: int = 2) -> Path:
    """CUB_200_2011 layout with 3 colour classes of 8×8 images."""
    root = root / "CUB_200_2011"
    images, labels, split = [], [], []
    image_id = 0
    for c, (folder, colour) in enumerate(zip(CUB_NAMES, COLOURS.values()), start=1):
        for i in range(train + test):
            image_id += 1
            rel = f"{folder}/img_{i:03d}.jpg"
            write_image(root / "images" / rel, colour, image_id, fmt="JPEG")
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i < train)}")
    for name, rows in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", [f"{i} {n}" for i, n in enumerate(CUB_NAMES, start=1)]),
    ):
        (root / name).write_text("\n".join(rows) + "\n")
    return root


def make_imagefolder(root: Path, train: int = 4, test: int = 2, names=("red bird", "green bird", "blue bird")) -> Path:
    for name, colour in zip(names, COLOURS.values()):
        for i in range(train):
            write_image(root / "train" / name / f"{i}.png", colour, i)
        for i in range(test):
            write_image(root / "val" / name / f"{i}.png", colour, 100 + i)
    return root


def make_inat(root: Path, train: int = 4, test: int = 2) -> Path:
    categories = [
        {"id": 0, "name": "Rubra avis", "common_name": "Red bird"},
        {"id": 1, "name": "Viridis avis", "common_name": "Green bird"},
        {"id": 2, "name": "Caerulea avis", "common_name": "Blue bird"},
    ]
    for split, n in (("train", train), ("val", test)):
        images, annotations = [], []
        for cat, colour in zip(categories, COLOURS.values()):
            for i in range(n):
                image_id = len(images) + (0 if split == "train" else 1000)
                rel = f"{split}/{cat['id']:05d}_{cat['name'].replace(' ', '_')}/{i}.jpg"
                write_image(root / rel, colour, image_id, fmt="JPEG")
                images.append({"id": image_id, "file_name": rel, "width": 8, "height": 8})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": cat["id"]})
        (root / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return root


def make_synthetic(
    root: Path, per_class: int = 2, names=("Red bird", "Green bird", "Blue bird"), size: int = 8
) -> Path:
    """A synthetic DIR as `augment generate` writes it: shards/*.tar + manifest.json."""
    import webdataset as wds
    from PIL import Image

    (root / "shards").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"labels": list(names)}))
    for c, (name, colour) in enumerate(zip(names, COLOURS.values())):
        with wds.TarWriter(str(root / "shards" / f"syn-c{c:04d}-0000.tar")) as sink:
            for i in range(per_class):
                rng = np.random.default_rng(c * 100 + i)
                pixels = np.clip(np.array(colour) + rng.integers(-25, 26, (size, size, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG")
                sink.write(
                    {
                        "__key__": f"c{c:04d}_{i:06d}",
                        "jpg": buf.getvalue(),
                        "cls": str(c).encode(),
                        "json": json.dumps({"class": name, "seed": i}).encode(),
                    }
                )
    (root / "shards" / "syn-c0000-0001.tar.tmp").write_bytes(b"unfinished")
    return root


def make_fashion_mnist(root: Path, per_class: int = 3) -> Path:
    """The four gzipped idx files with `per_class` 28×28 images per class in each split."""
    root.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    images = (np.random.default_rng(0).random((len(labels), 28, 28)) * 255).astype(np.uint8)
    for prefix in ("train", "t10k"):
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBIII", 0, 8, 3, len(images), 28, 28) + images.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.tobytes())
    return root


# ---------------------------------------------------------------- sampler
def test_kshot_exact_counts_and_determinism():
    labels = np.repeat(np.arange(4), [20, 16, 15, 30])
    picks = sample_kshot(labels, 15, num_classes=4, seed=0, trial=0)
    assert np.bincount(labels[picks], minlength=4).tolist() == [15, 15, 15, 15]
    assert len(set(picks.tolist())) == 60
    assert np.array_equal(picks, sample_kshot(labels, 15, num_classes=4, seed=0, trial=0))
    assert not np.array_equal(picks, sample_kshot(labels, 15, num_classes=4, seed=0, trial=1))
    assert not np.array_equal(picks, sample_kshot(labels, 15, num_classes=4, seed=1, trial=0))
    three = sample_kshot(labels, 3, num_classes=4, seed=0, trial=0)  # nested within a trial
    assert set(three.tolist()) <= set(picks.tolist())
    assert len(sample_kshot(labels, 0, num_classes=4, seed=0, trial=0)) == 0
    with pytest.raises(UserError, match="class 2 'c' has 15 training image"):
        sample_kshot(labels, 16, num_classes=4, seed=0, trial=0, class_names=["a", "b", "c", "d"])


# ---------------------------------------------------------------- loaders
def _check_colour_dataset(ds, train: int = 4, test: int = 2):
    assert ds.classes == ["Red bird", "Green bird", "Blue bird"]
    assert np.bincount(ds.train.labels).tolist() == [train] * 3
    assert np.bincount(ds.test.labels).tolist() == [test] * 3
    for split in (ds.train, ds.test):  # each image's colour says its class
        for i in range(len(split)):
            im = np.asarray(split.images(i), dtype=float)
            assert im.shape == (8, 8, 3)
            assert int(im.mean(axis=(0, 1)).argmax()) == split.labels[i]


def test_cub_loader(tmp_path):
    root = make_cub(tmp_path)
    labels = read_label_set(write_labels(tmp_path / "l.txt"))
    ds = load_dataset(f"cub:{root.parent}", labels)  # the parent of CUB_200_2011 works too
    _check_colour_dataset(ds)
    assert ds.matched_by == "name" and ds.kind == "cub"


def test_cub_subset_and_order(tmp_path):
    """A label set may be a reordered subset of the dataset's classes; images of other classes are dropped."""
    root = make_cub(tmp_path)
    labels = read_label_set(write_labels(tmp_path / "l.txt", ["Blue bird", "Red bird"]))
    ds = load_dataset(f"cub:{root}", labels)
    assert len(ds.train) == 8 and len(ds.test) == 4
    im = np.asarray(ds.train.images(int(np.flatnonzero(ds.train.labels == 0)[0])), dtype=float)
    assert im.mean(axis=(0, 1)).argmax() == 2  # position 0 is the blue class


def test_inat_loader_matches_common_names(tmp_path):
    root = make_inat(tmp_path / "inat")
    _check_colour_dataset(load_dataset(f"inat:{root}", read_label_set(write_labels(tmp_path / "l.txt"))))


def test_imagefolder_loader(tmp_path):
    root = make_imagefolder(tmp_path / "if")
    _check_colour_dataset(load_dataset(f"imagefolder:{root}", read_label_set(write_labels(tmp_path / "l.txt"))))


def test_imagefolder_by_index(tmp_path):
    """Folder names that are ids (like ImageNet's wnids) match an indexed label file by sorted-folder index."""
    root = make_imagefolder(tmp_path / "if", names=("n001", "n002", "n003"))
    path = tmp_path / "l.txt"
    path.write_text("0\tRed bird\n1\tGreen bird\n2\tBlue bird\n")
    ds = load_dataset(f"imagefolder:{root}", read_label_set(path))
    assert ds.matched_by == "index"
    _check_colour_dataset(ds)


def test_hf_loader_from_disk(tmp_path):
    import datasets
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["red_bird", "green_bird", "blue_bird"])}
    )
    rows = {s: {"image": [], "label": []} for s in ("train", "test")}
    for s, n in (("train", 4), ("test", 2)):
        for c, colour in enumerate(COLOURS.values()):
            for _ in range(n):
                rows[s]["image"].append(Image.new("RGB", (8, 8), colour))
                rows[s]["label"].append(c)
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(rows[s], features=features) for s in rows})
    dd.save_to_disk(str(tmp_path / "hf"))
    _check_colour_dataset(load_dataset(f"hf:{tmp_path / 'hf'}", read_label_set(write_labels(tmp_path / "l.txt"))))


def test_fashion_mnist_loader(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm")
    labels = read_label_set(Path(__file__).resolve().parent.parent / "manifests" / "fashion-mnist.txt")
    ds = load_dataset(f"fashion-mnist:{root}", labels)
    assert len(ds.classes) == 10 and np.bincount(ds.train.labels).tolist() == [3] * 10
    x = ds.test.to_uint8(32)
    from augment.toy.data import load, to_rgb32

    images, _ = load("test", root)
    assert torch.equal(x.float() / 255, torch.from_numpy(to_rgb32(images)))


def test_class_mismatch_is_one_clear_error(tmp_path):
    root = make_cub(tmp_path)
    labels = read_label_set(write_labels(tmp_path / "l.txt", ["Red bird", "Gren bird"]))
    with pytest.raises(UserError, match=r"1 of 2 classes .* 'Gren bird' \(nearest: '002.Green_bird'"):
        load_dataset(f"cub:{root}", labels)


@pytest.mark.parametrize(
    "spec, message",
    [("mnist:/x", "unknown dataset kind"), ("cub:/nonexistent", "not found"), ("cub", "needs a location")],
)
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_spec(spec)


# ---------------------------------------------------------------- synthetic shards
def test_synthetic_shards_map_by_name(tmp_path):
    syn = make_synthetic(tmp_path / "syn", per_class=2)
    labels = read_label_set(write_labels(tmp_path / "l.txt", ["Blue bird", "Green bird", "Red bird"]))
    s = load_synthetic("tokens", check_directory("tokens", syn), labels)
    assert s.name == "tokens" and len(s.split) == 6 and s.manifest_sha256
    for i in range(6):  # generated cls 0 (red) is position 2 here
        colour = np.asarray(s.split.images(i), dtype=float).mean(axis=(0, 1)).argmax()
        assert s.split.labels[i] == 2 - colour


def test_synthetic_errors(tmp_path):
    syn = make_synthetic(tmp_path / "syn")
    with pytest.raises(UserError, match="not 'real'"):
        check_name("real")
    with pytest.raises(UserError, match="not found"):
        check_directory("x", tmp_path / "nope")
    with pytest.raises(UserError, match="no shards"):
        check_directory("x", tmp_path)
    labels = read_label_set(write_labels(tmp_path / "l.txt", ["Red bird", "Green bird", "Purple bird"]))
    with pytest.raises(UserError, match="'Blue bird' is not in"):
        load_synthetic("x", syn, labels)


# ---------------------------------------------------------------- training
def _tiny_config(**changes):
    from downstream.classifier import TrainConfig

    base = dict(
        model="resnet18",
        model_kwargs={"channels": [8, 8, 16, 16], "stem_width": 8},
        pretrained=False,
        image_size=16,
        steps=3,
        batch_size=4,
        lr=1e-2,
        optimizer="adamw",
        workers=0,
        device="cpu",
    )
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("image_size", [16, 72])  # in-memory path and DataLoader path
def test_train_is_deterministic_and_evaluates(tmp_path, image_size):
    from downstream.classifier import evaluate, train_classifier

    ds = load_dataset(f"cub:{make_cub(tmp_path)}", read_label_set(write_labels(tmp_path / "l.txt")))
    config = _tiny_config(image_size=image_size, steps=2)
    a = train_classifier([ds.train], 3, config, seed=5)
    b = train_classifier([ds.train], 3, config, seed=5)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    result = evaluate(a, ds.test, config)
    assert 0 <= result["top1"] <= result["top5"] == 100.0  # top-5 of 3 classes is always right
    with pytest.raises(UserError, match="nothing to train on"):
        train_classifier([ds.train.subset(np.zeros(0, dtype=np.int64))], 3, config, seed=0)


def test_saved_classifier_loads_with_same_logits(tmp_path):
    from augment.models.checkpoint import load_classifier
    from downstream.classifier import save, train_classifier

    ds = load_dataset(f"cub:{make_cub(tmp_path)}", read_label_set(write_labels(tmp_path / "l.txt")))
    config = _tiny_config()
    model = train_classifier([ds.train], 3, config, seed=0)
    save(model, tmp_path / "ckpt", config, ds.classes, {"test": True})
    loaded, cfg = load_classifier(tmp_path / "ckpt")
    assert cfg["labels"] == ds.classes and cfg["input_size"] == [3, 16, 16]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_real_fraction_fixes_the_real_share_of_every_batch():
    from augment.data.mixing import mixed_batches as _mixed_batches

    g = torch.Generator().manual_seed(0)
    batches = _mixed_batches(n_real=6, n=106, batch=8, steps=30, real_fraction=0.25, g=g)
    assert len(batches) == 30 and all(len(b) == 8 for b in batches)
    real = torch.cat([b[b < 6] for b in batches])
    assert all(int((b < 6).sum()) == 2 for b in batches)  # round(0.25 · 8) real images per batch
    assert torch.bincount(real, minlength=6).tolist() == [10] * 6  # 60 draws walk whole permutations
    assert int(torch.cat(batches).max()) < 106
    everything = _mixed_batches(6, 106, 8, 3, 1.0, torch.Generator().manual_seed(0))
    assert all(bool((b < 6).all()) for b in everything)


def test_mixed_batch_sampler_feeds_a_dataloader_over_real_and_synthetic():
    """The helper for users' own loops: ConcatDataset([real, synthetic]) + MixedBatchSampler."""
    from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

    from augment.data.mixing import MixedBatchSampler

    real = TensorDataset(torch.zeros(6, 1), torch.zeros(6, dtype=torch.long))  # label 0 = real
    synthetic = TensorDataset(torch.ones(100, 1), torch.ones(100, dtype=torch.long))  # label 1 = synthetic
    sampler = MixedBatchSampler(len(real), len(synthetic), batch_size=8, real_fraction=0.5, steps=12, seed=3)
    loader = DataLoader(ConcatDataset([real, synthetic]), batch_sampler=sampler, num_workers=2)
    batches = [y for _, y in loader]
    assert len(batches) == 12 and all(int((y == 0).sum()) == 4 and len(y) == 8 for y in batches)
    assert list(sampler) == list(sampler)  # deterministic per seed
    with pytest.raises(ValueError):
        MixedBatchSampler(0, 10, 8, 0.5, 1)
