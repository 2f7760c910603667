"""`augment eval`: accuracy against a hand count, FID/KID in a classifier's feature space, CLI errors and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from augment.cli import main
from augment.data import shards
from augment.data.shards import label_set as shard_label_set
from augment.errors import UserError
from augment.jobs.score import score_set
from augment.metrics import (
    extract_features,
    fid_kid,
    per_class_precision_recall,
    precision_recall,
    reference_images,
    score_shards,
)
from augment.models.guides import load_guide

CLASSIFIER_LABELS = [f"kind {i}" for i in range(8)]
SET_LABELS = ["kind 5", "kind 2", "kind 7", "kind 0"]  # label-set order ≠ classifier order
PER_CLASS = [6, 5, 7, 4]
ARCH = dict(architecture="timm:resnet18", model_kwargs={"channels": [8, 8, 16, 16], "stem_width": 8})


def make_classifier(path) -> str:
    """A tiny timm ResNet with fixed random weights, saved in the ckpt: format; its head is scaled up so that
    its predictions differ from image to image."""
    from augment.models.checkpoint import build_model, save_classifier

    torch.manual_seed(0)
    model = build_model(ARCH["architecture"], len(CLASSIFIER_LABELS), ARCH["model_kwargs"])
    with torch.no_grad():
        model.get_classifier().weight.mul_(50.0)
    save_classifier(
        model, path, labels=CLASSIFIER_LABELS, input_size=(3, 16, 16), mean=[0.5] * 3, std=[0.25] * 3, **ARCH
    )
    return f"ckpt:{path}"


def make_shards(out, seed: int, brightness: float = 0.0):
    """A generated-set directory: per class 1-2 shards of 16×16 png noise (a class-dependent tint)."""
    rng = np.random.default_rng(seed)
    for position, count in enumerate(PER_CLASS):
        tint = rng.uniform(0, 1, size=3)
        units = shards.plan_units([position], count, shard_size=4)
        for unit in units:
            unit = shards.ShardUnit(100 * position + unit.number, unit.samples)  # one class per shard here
            samples = []
            for _, i in unit.samples:
                pixels = np.clip(0.5 * rng.uniform(0, 1, (16, 16, 3)) + 0.5 * tint + brightness, 0, 1)
                samples.append(
                    {
                        "__key__": shards.sample_key(position, i),
                        "png": shards.encode_image(pixels, "png"),
                        "cls": str(position).encode(),
                        "json": json.dumps({"class": SET_LABELS[position]}).encode(),
                    }
                )
            shards.write_unit(out, "set", unit, samples, "hash")
    (out / "manifest.json").write_text(json.dumps({"generate": {"labels": SET_LABELS}}))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {
        "spec": make_classifier(root / "clf"),
        "a": make_shards(root / "a", seed=1),
        "b": make_shards(root / "b", seed=2, brightness=0.4),
        "root": root,
    }


def hand_count(directory, spec):
    """Per-class (n, top-1 %, top-5 %) straight from the classifier's logits on every image."""
    guide = load_guide(spec)
    samples = shards.load_samples(directory)
    x = torch.stack([torch.from_numpy(np.array(s["image"])).permute(2, 0, 1).float() / 255 for s in samples])
    with torch.no_grad():
        logits = guide(x)
    target = torch.tensor([CLASSIFIER_LABELS.index(SET_LABELS[s["cls"]]) for s in samples])
    top1 = (logits.argmax(1) == target).numpy()
    top5 = (logits.topk(5, dim=1).indices == target[:, None]).any(1).numpy()
    cls = np.array([s["cls"] for s in samples])
    per_class = [
        (int((cls == c).sum()), 100 * top1[cls == c].mean(), 100 * top5[cls == c].mean())
        for c in range(len(SET_LABELS))
    ]
    return per_class, 100 * top1.mean(), 100 * top5.mean(), logits.argmax(1)


def test_accuracy_matches_hand_count(world):
    per_class, micro1, micro5, predicted = hand_count(world["a"], world["spec"])
    assert len(set(predicted.tolist())) > 1, "degenerate fixture: the classifier predicts one class only"
    assert 0 < micro5 < 100 or 0 < micro1 < 100, "degenerate fixture: nothing to count"
    result = score_shards(world["a"], load_guide(world["spec"]), shard_label_set(world["a"]), batch_size=3)
    got = [(c.n, c.top1, c.top5) for c in result.classes]
    assert np.array(got) == pytest.approx(np.array(per_class))
    assert [c.classifier_index for c in result.classes] == [5, 2, 7, 0]
    means = result.means()
    assert means["micro"]["top1"] == pytest.approx(micro1)
    assert means["micro"]["top5"] == pytest.approx(micro5)
    assert means["macro"]["top1"] == pytest.approx(np.mean([t1 for _, t1, _ in per_class]))
    assert means["macro"]["top5"] == pytest.approx(np.mean([t5 for _, _, t5 in per_class]))


def test_fid_kid_in_classifier_features(world):
    guide = load_guide(world["spec"])
    labels = shard_label_set(world["a"])
    scored = score_shards(world["a"], guide, labels, features=guide)
    a, a_classes = torch.cat(scored.features), torch.cat(scored.feature_classes)
    assert a.shape == (sum(PER_CLASS), 16)  # resnet's pooled 16 channels
    count, images = reference_images(str(world["a"]), labels)
    a_again, again_classes = extract_features(images, guide, "cpu", batch_size=5)
    assert count == len(a_again) and torch.allclose(a, a_again, atol=1e-5)
    assert a_classes.tolist() == again_classes.tolist() == [c for c, n in enumerate(PER_CLASS) for _ in range(n)]
    same = fid_kid(a, a_again)
    count, images = reference_images(str(world["b"]), labels)
    other = fid_kid(a, extract_features(images, guide, "cpu")[0])
    scale = a.var(0).sum().item()  # FID is in squared feature units
    assert abs(same["fid"]) < 1e-6 * scale + 1e-6
    assert abs(same["kid"]) < other["kid"] / 3  # unbiased MMD²: ≈ 0, may be slightly negative
    assert other["fid"] > 0.1 * scale and other["kid"] > 0
    assert same["kid_subset_size"] == sum(PER_CLASS)  # capped by the smaller set


def test_precision_recall_separates_fidelity_from_diversity():
    """Reference: a 2-d blob. A generated set collapsed onto a small part of it is faithful but not diverse
    (precision high, recall low); one spread far outside it is the reverse; a fresh draw of the same blob
    scores high on both."""
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(400, 2, generator=g, dtype=torch.float64)
    same = precision_recall(torch.randn(400, 2, generator=g, dtype=torch.float64), reference)
    collapsed = precision_recall(0.1 * torch.randn(400, 2, generator=g, dtype=torch.float64), reference)
    scattered = precision_recall(4.0 * torch.randn(400, 2, generator=g, dtype=torch.float64), reference)
    assert same["precision"] > 85 and same["recall"] > 85
    assert collapsed["precision"] > 95 and collapsed["recall"] < 20
    assert scattered["precision"] < 50 and scattered["recall"] > 90
    assert precision_recall(reference[:5], reference) is None  # k = 5 needs more than 5 points


def test_precision_recall_is_per_class():
    """Class 0 generated from its own reference blob, class 1 collapsed: only class 1's recall drops; a class
    with too few images is None."""
    g = torch.Generator().manual_seed(1)
    blob = lambda n, centre, scale=1.0: centre + scale * torch.randn(n, 2, generator=g, dtype=torch.float64)  # noqa: E731
    reference = torch.cat([blob(200, 0.0), blob(200, 20.0), blob(3, -20.0)])
    reference_classes = torch.tensor([0] * 200 + [1] * 200 + [2] * 3)
    generated = torch.cat([blob(200, 0.0), blob(200, 20.0, 0.1), blob(10, -20.0)])
    generated_classes = torch.tensor([0] * 200 + [1] * 200 + [2] * 10)
    pr = per_class_precision_recall(generated, generated_classes, reference, reference_classes, 3)
    assert pr[0]["recall"] > 85 and pr[1]["recall"] < 20 and pr[1]["precision"] > 95
    assert pr[2] is None


def test_reference_shards_classes_are_matched_by_name(world, tmp_path):
    """A reference set made from another label file (other order, one class the scored set lacks) yields
    positions in the scored set's label set, -1 for the missing class."""
    other = make_shards(tmp_path / "other", seed=3)
    order = ["kind 0", "kind 7", "Kind 2", "kind 6"]  # its cls 0..3; names matched case-insensitively
    (other / "manifest.json").write_text(json.dumps({"generate": {"labels": order}}))
    count, pairs = reference_images(str(other), shard_label_set(world["a"]))
    positions = [p for _, p in pairs]
    expected = {0: 3, 1: 2, 2: 1, 3: -1}  # SET_LABELS = kind 5, kind 2, kind 7, kind 0
    assert count == sum(PER_CLASS) and positions == [expected[c] for c, n in enumerate(PER_CLASS) for _ in range(n)]


def test_reference_limit_is_a_subset(world):
    count, images = reference_images(str(world["b"]), shard_label_set(world["b"]), limit=5)
    assert count == 5 and len(list(images)) == 5


def test_cli_writes_json_with_feature_name(world, capsys):
    out = world["root"] / "result.json"
    code = main(
        [
            "eval",
            "--shards",
            str(world["a"]),
            "--classifier",
            world["spec"],
            "--reference",
            str(world["b"]),
            "--features",
            world["spec"],
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["features"]["name"].startswith(world["spec"]) and "penultimate" in report["features"]["name"]
    assert report["classifier"] == world["spec"] and report["images"] == sum(PER_CLASS)
    assert [c["n"] for c in report["classes"]] == PER_CLASS and report["fid"] > 0
    pr = report["precision_recall"]  # classes with > 5 images on both sides: 0, 2
    assert pr["k"] == 5 and pr["classes"] == 2 and 0 <= pr["precision"] <= 100 and 0 <= pr["recall"] <= 100
    assert [c["recall"] is None for c in report["classes"]] == [False, True, False, True]
    per_class, micro1, _, _ = hand_count(world["a"], world["spec"])
    assert report["micro"]["top1"] == pytest.approx(micro1)
    assert "--reference" in report["command"] and "torch" in report["versions"]
    printed = capsys.readouterr().out
    assert "kind 7" in printed and "features:" in printed and "FID" in printed and "recall" in printed
    assert not list(world["root"].glob("*.tmp"))


def test_cli_default_features_are_named(world, tmp_path):
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--shards",
                str(world["a"]),
                "--classifier",
                world["spec"],
                "--reference",
                str(world["a"]),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    name = json.loads(out.read_text())["features"]["name"]
    assert name.startswith("inception") or name.startswith(world["spec"])


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("augment: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors(world, tmp_path, capsys):
    assert "no such directory" in _one_line_error(
        capsys, ["eval", "--shards", str(tmp_path / "nope"), "--classifier", world["spec"]]
    )
    assert "no .tar shards" in _one_line_error(
        capsys, ["eval", "--shards", str(tmp_path), "--classifier", world["spec"]]
    )
    assert "--classifier: none given" in _one_line_error(capsys, ["eval", "--shards", str(world["a"])])
    # the library names its arguments; the command line shows them as flags (`score`, alias `eval`)
    argv = ["score", "--shards", str(world["a"]), "--classifier", world["spec"], "--batch-size", "0"]
    assert "--batch-size must be ≥ 1" in _one_line_error(capsys, argv)
    with pytest.raises(UserError, match="^batch_size must be ≥ 1"):
        score_set(world["a"], classifier=world["spec"], batch_size=0)
    assert "no such directory" in _one_line_error(
        capsys, ["eval", "--shards", str(world["a"]), "--classifier", f"ckpt:{tmp_path / 'missing'}"]
    )
    assert "dataset" in _one_line_error(
        capsys,
        [
            "eval",
            "--shards",
            str(world["a"]),
            "--classifier",
            world["spec"],
            "--reference",
            "cub:/nonexistent/dir",
            "--features",
            world["spec"],
        ],
    )
    out = tmp_path / "never.json"
    _one_line_error(
        capsys,
        [
            "eval",
            "--shards",
            str(world["a"]),
            "--features",
            "inception",
            "--classifier",
            world["spec"],
            "--reference",
            "nosuchkind:x",
            "--out",
            str(out),
        ],
    )
    assert not out.exists()
