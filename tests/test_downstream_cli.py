"""`downstream fewshot` / `downstream train` end to end on tiny fixture data: outputs, resuming, errors."""

from __future__ import annotations

import json

import pytest

from downstream.cli import main
from tests.helpers import TINY_CLASSIFIER as TINY
from tests.test_downstream import make_cub, make_synthetic, write_labels


@pytest.fixture
def inputs(tmp_path):
    return {
        "cub": make_cub(tmp_path / "data"),
        "labels": write_labels(tmp_path / "labels.txt"),
        "syn": make_synthetic(tmp_path / "syn", per_class=2),
    }


def _fewshot(inputs, out, *extra):
    return main(
        [
            "fewshot",
            "--dataset",
            f"cub:{inputs['cub']}",
            "--labels",
            str(inputs["labels"]),
            "--synthetic",
            f"tokens={inputs['syn']}",
            "--shots",
            "0,2",
            "--trials",
            "2",
            "--out",
            str(out),
            *TINY,
            *extra,
        ]
    )


def _count_training(monkeypatch) -> list[int]:
    import downstream.grid as fewshot

    calls, real = [], fewshot.train_classifier

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fewshot, "train_classifier", counting)
    return calls


def test_fewshot_writes_results_and_resumes(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    calls = _count_training(monkeypatch)
    assert _fewshot(inputs, out) == 0
    assert len(calls) == 6  # 8 cells; real-only at 0 shots is not trained
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 8
    cell = next(c for c in results["cells"] if c["set"] == "tokens" and c["shots"] == 2)
    assert {"set", "shots", "trial", "top1", "top5", "seconds"} <= set(cell)
    assert cell["train_images"] == {"real": 6, "synthetic": 6}
    empty = [c for c in results["cells"] if c["set"] == "real" and c["shots"] == 0]
    assert [c["top1"] for c in empty] == [0.0, 0.0] and not any(c["trained"] for c in empty)
    assert results["summary"]["tokens"]["2"]["n"] == 2
    table = (out / "results.md").read_text()
    assert "| set | 0 shots | 2 shots |" in table and "| real | — |" in table and "| tokens |" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fewshot"]["synthetic"][0]["manifest_sha256"] and manifest["fewshot"]["finished"]
    assert (
        manifest["fewshot"]["dataset"]["spec"] == f"cub:{inputs['cub']}" and manifest["fewshot"]["train"]["steps"] == 2
    )
    assert "timm" in manifest["versions"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(mtimes) == 8 and not list((out / "cells").glob("*.tmp"))

    calls.clear()  # rerun: nothing recomputed
    assert _fewshot(inputs, out) == 0
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == mtimes

    (out / "cells" / "tokens__0002shot__trial1.json").unlink()  # a lost cell is the only one redone
    assert _fewshot(inputs, out) == 0
    assert len(calls) == 1

    capsys.readouterr()
    assert _fewshot(inputs, out, "--lr", "0.5") == 2  # other config: refused, not mixed in
    assert "another configuration" in capsys.readouterr().err


def test_train_saves_a_classifier_that_scores_the_same(inputs, tmp_path, capsys):
    import torch

    from augment.data.datasets import load_dataset
    from augment.labels import read_label_set
    from augment.models.checkpoint import load_classifier
    from downstream.classifier import TrainConfig, evaluate

    ckpt = tmp_path / "ckpt"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"cub:{inputs['cub']}",
                "--labels",
                str(inputs["labels"]),
                "--synthetic",
                f"tokens={inputs['syn']}",
                "--save-classifier",
                str(ckpt),
                *TINY,
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["train_images"] == {"real": 12, "synthetic": 6}
    model, cfg = load_classifier(ckpt)
    assert cfg["labels"] == ["Red bird", "Green bird", "Blue bird"] and cfg["trained"]["tool"] == "downstream train"
    config = TrainConfig(
        image_size=cfg["input_size"][1],
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        crop_pct=cfg["crop_pct"],
        device="cpu",
    )
    ds = load_dataset(f"cub:{inputs['cub']}", read_label_set(inputs["labels"]))
    with torch.no_grad():
        assert evaluate(model, ds.test, config)["top1"] == pytest.approx(result["top1"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--dataset": "mnist:/data"}, "unknown dataset kind 'mnist'"),
        ({"--dataset": "cub:/no/such/dir"}, "directory /no/such/dir not found"),
        ({"--shots": "0,5"}, "5 shots asked for but class 'Red bird' has only 4"),
        ({"--shots": "0,three"}, "expected comma-separated integers"),
        ({"--synthetic": "tokens"}, "expected NAME=DIR"),
        ({"--synthetic": "tokens=/no/such/dir"}, "not found"),
        ({"--labels": "/no/such/labels.txt"}, "label file not found"),
        ({"--steps": "zero"}, "invalid int value"),
        ({"--real-fraction": "1.5"}, "--real-fraction must be between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(inputs, tmp_path, capsys, change, message):
    args = {
        "--dataset": f"cub:{inputs['cub']}",
        "--labels": str(inputs["labels"]),
        "--synthetic": f"tokens={inputs['syn']}",
        "--shots": "0,3",
        "--out": str(tmp_path / "out"),
        **change,
    }
    argv = ["fewshot", *[x for kv in args.items() for x in kv], *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("downstream: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_missing_subcommand_and_unknown_option(capsys):
    assert main([]) == 2
    assert main(["fewshot", "--bogus"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("downstream: error: ") for line in lines)


def test_fewshot_workers_split_the_cells(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = _count_training(monkeypatch)
    assert _fewshot(inputs, out, "--num-workers", "2", "--worker-index", "1") == 0
    first = len(calls)
    assert 0 < first < 6 and len(json.loads((out / "results.json").read_text())["cells"]) < 8
    assert _fewshot(inputs, out, "--num-workers", "2", "--worker-index", "0") == 0
    assert len(calls) == 6  # together: every trained cell exactly once
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 8
    assert _fewshot(inputs, out, "--num-workers", "2", "--worker-index", "2") == 2


def test_pretrained_weights_offline_is_one_line_error(inputs, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    import downstream.classifier

    monkeypatch.setattr(downstream.classifier, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    argv = [
        "fewshot",
        "--dataset",
        f"cub:{inputs['cub']}",
        "--labels",
        str(inputs["labels"]),
        "--shots",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--model",
        "resnet10t",
        "--pretrained",
        "--steps",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("downstream: error: could not get pretrained weights for resnet10t") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _small_learned_world(tmp_path, extra: str = ""):
    """Three Fashion-MNIST classes and a config that makes the grid's learned rows tiny (+ `extra` YAML)."""
    labels = tmp_path / "fm3.txt"
    labels.write_text("0\tt-shirt\n2\tpullover\n4\tcoat\n")
    small = tmp_path / "small.yaml"
    small.write_text(
        "learn:\n  max_steps: 1\n  batch_size: 1\n  num_inference_steps: 2\n"
        "generate:\n  images_per_class: 2\n  shard_size: 2\n  num_inference_steps: 2\n  batch_size: 6\n" + extra
    )
    return labels, small


def test_fewshot_learns_a_set_per_shot_count_from_a_guide_trained_on_those_shots(tmp_path, monkeypatch):
    """--synthetic kshot=learn:toy+small.yaml: per (shots ≥ 1, trial) a guide trained on the trial's shots,
    tokens learned with it and a set generated, cached and resumable; 0 shots: not run."""
    labels, small = _small_learned_world(tmp_path)
    out = tmp_path / "out"
    argv = ["fewshot", "--dataset", "fashion-mnist", "--labels", str(labels), "--synthetic",
            f"kshot=learn:toy+{small}", "--shots", "0,2", "--trials", "1", "--out", str(out), *TINY]  # fmt: skip
    calls = _count_training(monkeypatch)
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    cells = {(c["set"], c["shots"]): c for c in results["cells"]}
    made = cells[("kshot", 2)]
    assert made["trained"] and made["train_images"] == {"real": 6, "synthetic": 6}
    assert 0 <= made["guide_top1"] <= 100 and 0 <= made["synthetic_heldout_top1"] <= 100
    assert not cells[("kshot", 0)]["trained"]
    (root,) = (out / "learned" / "kshot").glob("k0002-t0-*")  # keyed by the config too
    guide = json.loads((root / "guide" / "config.json").read_text())
    assert guide["trained"]["shots"] == 2 and guide["labels"] == ["t-shirt", "pullover", "coat"]
    meta = json.loads((root / "run" / "tokens" / "000-t-shirt" / "meta.json").read_text())
    assert meta["guide"].startswith("ckpt:guide (content:")
    assert (out / "results.md").read_text().count("| kshot |") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fewshot"]["synthetic"][0]["learn"] == "toy"

    first = made["top1"]
    (out / "cells" / "kshot__0002shot__trial0.json").unlink()  # lost cell: redone from the cached set
    calls.clear()
    assert main(argv) == 0
    assert len(calls) == 1  # the cell's classifier only: the guide, tokens and set were cached
    again = {(c["set"], c["shots"]): c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert again[("kshot", 2)]["top1"] == first


def test_fewshot_lora_rows_share_one_adapter_per_trial_and_the_combined_row_learns_on_it(tmp_path, monkeypatch):
    """--synthetic lora=lora:toy+small.yaml --synthetic both=lora+learn:toy+small.yaml: one LoRA per (shots,
    trial) trained on that trial's shots and shared by both rows; the lora row generates from plain prompts
    on it, the combined row learns its tokens on it (recorded in their meta) and generates with them."""
    pytest.importorskip("peft")
    from augment.models.lora import lora_identity

    labels, small = _small_learned_world(tmp_path, "lora:\n  max_steps: 2\n  batch_size: 3\n")
    out = tmp_path / "out"
    argv = ["fewshot", "--dataset", "fashion-mnist", "--labels", str(labels), "--synthetic", f"lora=lora:toy+{small}",
            "--synthetic", f"both=lora+learn:toy+{small}", "--shots", "2", "--trials", "1", "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    cells = {c["set"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    (adapter,) = (out / "learned" / "_lora").glob("k0002-t0-*")  # one adapter for both rows
    identity = lora_identity(str(adapter))
    made = json.loads((adapter / "manifest.json").read_text())["adapt"]
    assert made["images_per_class"] == [2, 2, 2] and made["steps"] == 2
    assert cells["lora"]["lora"] == cells["both"]["lora"] == identity
    assert cells["lora"]["train_images"] == cells["both"]["train_images"] == {"real": 6, "synthetic": 6}
    assert "guide_top1" not in cells["lora"] and 0 <= cells["both"]["guide_top1"] <= 100
    (lora_run,) = (out / "learned" / "lora").glob("k0002-t0-*/run")
    (both_run,) = (out / "learned" / "both").glob("k0002-t0-*/run")
    assert not (lora_run / "tokens").exists()  # plain prompts
    meta = json.loads((both_run / "tokens" / "000-t-shirt" / "meta.json").read_text())
    assert meta["lora"]["identity"] == identity  # learned on the adapted generator
    for run in (lora_run, both_run):
        assert json.loads((run / "manifest.json").read_text())["generate"]["lora"]["identity"] == identity


def test_learned_set_needs_a_shot_count_and_a_known_preset(tmp_path, capsys):
    labels = tmp_path / "fm3.txt"
    labels.write_text("t-shirt\npullover\n")
    base = ["fewshot", "--dataset", "fashion-mnist", "--labels", str(labels), "--trials", "1", "--out",
            str(tmp_path / "out"), *TINY]  # fmt: skip
    assert main([*base, "--synthetic", "k=learn:nope", "--shots", "2"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main([*base, "--synthetic", "k=learn:toy", "--shots", "0"]) == 2
    assert "needs a shot count ≥ 1" in capsys.readouterr().err
    assert main([*base, "--synthetic", "k=lora+learn:toy", "--shots", "0"]) == 2
    assert "k=lora+learn:toy needs a shot count ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _folder(root, classes, per_class=3, size=16):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")


def test_an_image_folder_with_a_non_image_or_an_empty_class_is_refused_naming_them(tmp_path, capsys):
    """Decided: refused, not skipped (README "Datasets"): the user asked for these classes and these files."""
    _folder(tmp_path / "d", ["t-shirt", "trouser"])
    (tmp_path / "d" / "train" / "pullover").mkdir()
    labels = tmp_path / "l.txt"
    labels.write_text("t-shirt\ntrouser\npullover\n")
    argv = ["train", "--dataset", f"imagefolder:{tmp_path / 'd'}", "--labels", str(labels), "--steps", "1",
            "--no-pretrained", "--model", "resnet18", "--image-size", "16", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no training images: 'pullover'" in err
    labels.write_text("t-shirt\ntrouser\n")
    (tmp_path / "d" / "train" / "trouser" / "notes.jpg").write_text("not an image")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.jpg; remove or replace them" in err


def test_a_truncated_image_is_one_line_naming_it_even_from_a_loader_worker(tmp_path, capsys):
    """A JPEG cut in half passes the header check; decoding it fails in the DataLoader's worker process, and
    the line is still the file's, not the worker's traceback."""
    import io

    import numpy as np
    from PIL import Image

    _folder(tmp_path / "d", ["t-shirt", "trouser"], size=96)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "d" / "train" / "trouser" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    labels = tmp_path / "l.txt"
    labels.write_text("t-shirt\ntrouser\n")
    argv = ["train", "--dataset", f"imagefolder:{tmp_path / 'd'}", "--labels", str(labels), "--steps", "1",
            "--no-pretrained", "--model", "resnet18", "--image-size", "72", "--loader-workers", "1",
            "--batch-size", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut.jpg: not a readable image" in err and "Traceback" not in err
