"""downstream from Python: `downstream.fewshot` and `downstream.train` (what the CLI parses flags for)."""

from __future__ import annotations

import pytest

import downstream
from augment.errors import UserError
from tests.test_downstream import make_cub, make_synthetic, write_labels

TRAINING = {"model": "resnet18", "model_kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8}, "pretrained": False,
            "image_size": 16, "steps": 2, "batch_size": 4, "device": "cpu"}  # fmt: skip


def test_fewshot_and_train_from_python(tmp_path):
    cub, labels = make_cub(tmp_path / "data"), write_labels(tmp_path / "labels.txt")
    syn = make_synthetic(tmp_path / "syn", per_class=2)
    result = downstream.fewshot(f"cub:{cub}", labels, tmp_path / "grid", synthetic={"tokens": syn}, shots=[0, 2],
                                trials=1, training=TRAINING, progress=False)  # fmt: skip
    assert isinstance(result, downstream.FewshotResult) and len(result.cells) == 4
    assert "| tokens |" in result.summary() and result.summary_table["tokens"]["2"]["n"] == 1
    trained = downstream.train(f"cub:{cub}", labels, shots=2, training=TRAINING, save_classifier=tmp_path / "guide",
                               progress=False)  # fmt: skip
    assert trained["train_images"] == {"real": 6, "synthetic": 0} and 0 <= trained["top1"] <= 100
    assert (tmp_path / "guide" / "config.json").is_file() and '"top1"' in trained.summary()
    assert downstream.train_config("fashion-mnist", {"model": "resnet50"}).model_kwargs == {}  # the toy's dropped
    assert downstream.train_config("cub").real_fraction == 0.5  # the default the results use
    assert downstream.train_config("cub", {"real_fraction": "uniform"}).real_fraction == "uniform"


def test_library_errors_name_arguments(tmp_path):
    cub, labels = make_cub(tmp_path / "data"), write_labels(tmp_path / "labels.txt")
    with pytest.raises(UserError, match="^steps must be ≥ 1") as info:
        downstream.train(f"cub:{cub}", labels, training={**TRAINING, "steps": 0})
    assert info.value.argument == "steps"
    with pytest.raises(UserError, match="unknown training option"):
        downstream.train(f"cub:{cub}", labels, training={"learning_rate": 1})
    with pytest.raises(UserError, match="learn: sets are made by fewshot"):
        downstream.train(f"cub:{cub}", labels, synthetic={"k": "learn:toy"}, training=TRAINING)
    assert not (tmp_path / "grid").exists()
