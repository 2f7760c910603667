"""CUB scale end to end on CPU: all 200 CUB classes by their real names flow from a dataset in CUB-200-2011's
layout through a 200-class `ckpt:` guide, `augment build` (tokens and shards) and `downstream fewshot`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from augment.cli import main as augment_main
from augment.labels import read_label_set
from downstream.cli import main as downstream_main
from tests.helpers import REPO, TINY_CLASSIFIER, tar_samples
from tests.test_downstream import write_image

CUB200 = REPO / "manifests" / "cub200.txt"


def make_cub200(root, train: int = 1, test: int = 1):
    """CUB_200_2011 with the dataset's own 200 folder names ("001.Black_footed_Albatross" …), tiny images."""
    root = root / "CUB_200_2011"
    rows = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "classes.txt": []}
    image_id = 0
    for c in read_label_set(CUB200).classes:
        folder = f"{c.index + 1:03d}.{c.name.replace(' ', '_')}"
        rows["classes.txt"].append(f"{c.index + 1} {folder}")
        colour = tuple(int(v) for v in np.random.default_rng(c.index).integers(0, 256, 3))
        for i in range(train + test):
            image_id += 1
            write_image(root / "images" / folder / f"img_{i}.jpg", colour, image_id, fmt="JPEG")
            rows["images.txt"].append(f"{image_id} {folder}/img_{i}.jpg")
            rows["image_class_labels.txt"].append(f"{image_id} {c.index + 1}")
            rows["train_test_split.txt"].append(f"{image_id} {int(i < train)}")
    for name, lines in rows.items():
        (root / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.timeout(1800)
def test_200_cub_classes_flow_by_name_and_index_from_guide_to_tokens_shards_and_fewshot(tmp_path, capsys):
    labels = read_label_set(CUB200)
    assert len(labels) == 200
    cub = make_cub200(tmp_path / "data")
    guide = tmp_path / "guide"
    assert (
        downstream_main(
            [
                "train",
                "--dataset",
                f"cub:{cub}",
                "--labels",
                str(CUB200),
                "--shots",
                "all",
                "--save-classifier",
                str(guide),
                *TINY_CLASSIFIER,
                "--batch-size",
                "32",  # 200 classes: bigger batches (the last --batch-size wins)
            ]
        )
        == 0
    )
    assert json.loads((guide / "config.json").read_text())["labels"] == labels.names()

    out = tmp_path / "run"
    assert (
        augment_main(
            [
                "build",
                "--preset",
                "toy",
                "--labels",
                str(CUB200),
                "--guide",
                f"ckpt:{guide}",
                "--out",
                str(out),
                "--max-steps",
                "1",
                "--learn-batch-size",
                "1",
                "--classes-per-step",
                "200",
                "--steps",
                "2",
                "--images-per-class",
                "1",
                "--shard-size",
                "1",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    metas = {p.parent.name: json.loads(p.read_text()) for p in (out / "tokens").glob("*/meta.json")}
    assert len(metas) == 200
    for c in labels.classes:  # each token was learned towards its own guide class
        meta = metas[c.slug]
        assert meta["class"] == c.name and meta["guide_index"] == c.index, meta
    samples = tar_samples(out)
    assert len(samples) == 200
    for key, s in samples.items():  # shard c{position}: cls = position, json names the class
        record = json.loads(s["json"])
        position = int(s["cls"])
        assert key == f"c{position:04d}_000000" and record["class"] == labels.classes[position].name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generate"]["labels"] == labels.names() and len(manifest["generate"]["shards"]) == 200
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 200
    assert augment_main(["verify", str(out)]) == 0

    fs = tmp_path / "fewshot"
    assert (
        downstream_main(
            [
                "fewshot",
                "--dataset",
                f"cub:{cub}",
                "--labels",
                str(CUB200),
                "--synthetic",
                f"tokens={out}",
                "--shots",
                "0,1",
                "--trials",
                "1",
                "--out",
                str(fs),
                *TINY_CLASSIFIER,
                "--batch-size",
                "32",  # 200 classes: bigger batches (the last --batch-size wins)
            ]
        )
        == 0
    )
    cells = json.loads((fs / "results.json").read_text())["cells"]
    by = {(c["set"], c["shots"]): c for c in cells}
    assert by[("tokens", 0)]["train_images"] == {"real": 0, "synthetic": 200}
    assert by[("real", 1)]["train_images"] == {"real": 200, "synthetic": 0}
    assert by[("tokens", 1)]["test_images"] == 200
