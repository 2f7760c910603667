"""`downstream` as library calls: `fewshot` (the paper's Table 2 grid) and `train` (one classifier, optionally
saved as an augment `ckpt:` guide). The CLI (downstream.cli) only parses flags for them.


    result = downstream.fewshot("fashion-mnist", "manifests/fashion-mnist.txt", "runs/fewshot",
                                synthetic={"tokens": "runs/toy", "kshot": "learn:toy"}, shots=[0, 3, 9, 15])
    print(result.summary())
    print(downstream.train("imagefolder:my_photos", "my_classes.txt", save_classifier="runs/my-guide").summary())

Bad input raises augment.UserError (one line) before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from augment.data.datasets import load_dataset, parse_spec, sample_kshot, trial_seed
from augment.devices import describe_device, resolve_device
from augment.errors import UserError
from augment.labels import LabelSet, read_label_set
from augment.run.atomic import write_json
from augment.run.manifest import read_manifest, update_manifest, versions
from augment.run.storage import check_out, converts_storage_errors, out_path
from augment.run.workers import Workers
from downstream.classifier import TrainConfig, create_model, default_config, evaluate, num_steps, save, train_classifier
from downstream.grid import GridConfig, check_grid, run_grid
from downstream.learned import LearnedSpec, parse_learned
from downstream.synthetic import check_directory, check_name, load_synthetic


@dataclass
class FewshotResult:
    """The grid as it stands in OUT: every finished cell and the results table (OUT/results.md)."""

    out: Path
    cells: list[dict]
    summary_table: dict

    def summary(self) -> str:
        return (self.out / "results.md").read_text()


class TrainResult(dict):
    """`train`'s result: top-1/top-5 on the test split (None without one), sizes, steps, seconds."""

    def summary(self) -> str:
        return json.dumps(self, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def train_config(kind: str, options: TrainConfig | dict[str, Any] | None = None) -> TrainConfig:
    """The training config: a dataset kind's defaults (downstream.classifier.default_config) with `options` (a
    TrainConfig as it is, or a mapping of fields; a new `model` without `model_kwargs` drops the defaults')."""
    if isinstance(options, TrainConfig):
        config = options
    else:
        options = dict(options or {})
        base = default_config(kind)
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}", unknown[0])
        if "model" in options and "model_kwargs" not in options:
            options["model_kwargs"] = {}
        config = replace(base, **options)
    config.validate()
    return config


def load_sets(synthetic: dict[str, str | Path] | None, labels: LabelSet, *, learned: bool):
    """Each NAME → DIR (a generated set, read) or NAME → learn:PRESET[+CONFIG] (made inside the grid)."""
    sets = []
    for name, value in (synthetic or {}).items():
        check_name(name)
        spec = parse_learned(name, str(value))
        if spec is not None:
            if not learned:
                raise UserError(
                    f"synthetic {name}={value}: {spec.route}: sets are made by fewshot; train takes a DIR", "synthetic"
                )
            sets.append(spec)
        else:
            sets.append(load_synthetic(name, check_directory(name, value), labels))
    return sets


LEGACY_KEYS = (
    "command",
    "started",
    "finished",
    "dataset",
    "labels",
    "synthetic",
    "grid",
    "train",
    "versions",
    "device",
)


def _whole(**values) -> None:
    """Whole-number arguments in range: name=(value, minimum)."""
    for name, (value, minimum) in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"{name} must be a whole number ≥ {minimum}, got {value!r}", name)


def _inputs(dataset: str, labels, synthetic, training, *, learned: bool):
    """Every input checked, the cheap checks first (the options, the names), then the files, then the data."""
    kind, _ = parse_spec(dataset, check_location=False)
    config = train_config(kind, training)
    for name, value in (synthetic or {}).items():
        check_name(name)
        parse_learned(name, str(value))  # a learn:/lora:/lora+learn:PRESET's form and preset
    parse_spec(dataset)
    labels = labels if isinstance(labels, LabelSet) else read_label_set(labels)
    for name, value in (synthetic or {}).items():  # the cheap part of each set before the dataset loads
        if parse_learned(name, str(value)) is None:
            check_directory(name, value)
    data = load_dataset(dataset, labels)
    return labels, data, load_sets(synthetic, labels, learned=learned), config


def _check_pretrained(config: TrainConfig, num_classes: int) -> None:
    """The model builds (a timm name, its kwargs, the pretrained weights fetched or cached), before anything is
    written: UserError naming what does not."""
    try:
        create_model(config, num_classes)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (timm: unknown model, unexpected kwargs)
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(
            f"model {config.model!r} with {config.model_kwargs}: {type(e).__name__}: {first}", "model"
        ) from None


def _describe(s) -> dict:
    if isinstance(s, LearnedSpec):
        return {"name": s.name, **s.describe(), "made_in": "OUT/learned/" + s.name}
    return {"name": s.name, "dir": str(s.directory), "shards": len(s.shards), "images": len(s.split),
            "manifest_sha256": s.manifest_sha256}  # fmt: skip


@converts_storage_errors()
def fewshot(
    dataset: str,
    labels: str | Path | LabelSet,
    out: str | Path,
    *,
    synthetic: dict[str, str | Path] | None = None,
    shots: list[int] = (0, 3, 9, 15),
    trials: int = 3,
    seed: int = 0,
    training: TrainConfig | dict[str, Any] | None = None,
    overwrite: bool = False,
    workers: tuple[int, int] | Workers = (0, 1),
    progress: bool = True,
    command: list[str] | None = None,
) -> FewshotResult:
    """The grid {real, + each synthetic set} × shots × trials into OUT (resumable: finished cells are kept;
    `workers` (index, count) splits the pending cells over processes; `augment.Workers(engine="ray")` runs
    every cell as a Ray task, the `learn:` rows' sets made inside their cells). Returns the cells and the
    table."""
    _whole(trials=(trials, 1), seed=(seed, 0))
    if not shots or any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in shots):
        raise UserError(f"shots must be whole numbers ≥ 0, got {list(shots)!r}", "shots")
    engine = workers if isinstance(workers, Workers) else Workers(*workers)
    engine.check()
    index, count = (0, 1) if engine.engine == "ray" else (engine.index or 0, engine.count or 1)

    out = out_path(out, "out")  # a directory or a bucket: cells, results, manifest and the learned rows' caches
    grid = GridConfig(shots=list(shots), trials=trials, seed=seed, overwrite=overwrite, progress=progress,
                      worker_index=index, num_workers=count)  # fmt: skip
    if out.exists() and not out.is_dir():
        raise UserError(f"out {out} exists and is not a directory", "out")
    labels, data, sets, config = _inputs(dataset, labels, synthetic, training, learned=True)
    check_grid(data, grid, sets, config, out)
    _check_pretrained(config, len(labels))
    check_out(out)  # a bucket that refuses writes: one line before any training
    out.mkdir(parents=True, exist_ok=True)  # validation is over: from here on, writing
    label_bytes = Path(labels.path).read_bytes() if Path(labels.path).is_file() else b""
    manifest = {
        "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None,
        "dataset": {"spec": data.spec, "kind": data.kind, "matched_by": data.matched_by,
                    "train_images": len(data.train), "test_images": len(data.test)},
        "labels": {"path": labels.path, "sha256": hashlib.sha256(label_bytes).hexdigest(), "classes": labels.names()},
        "synthetic": [_describe(s) for s in sets], "grid": dataclasses.asdict(grid),
        "train": dataclasses.asdict(config),
        "device": describe_device(resolve_device(config.device)),
    }  # fmt: skip
    legacy = read_manifest(out)
    if "grid" in legacy:  # written by augment < 0.3 at the top level: now the section "fewshot"
        write_json(out / "manifest.json", {k: v for k, v in legacy.items() if k not in LEGACY_KEYS})
    update_manifest(out, "fewshot", manifest)
    cells = run_grid(data, sets, config, grid, out, labels=labels, engine=engine)
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    update_manifest(out, "fewshot", manifest)
    return FewshotResult(out, cells, json.loads((out / "results.json").read_text())["summary"])


def train(
    dataset: str,
    labels: str | Path | LabelSet,
    *,
    shots: int | None = None,
    trial: int = 0,
    seed: int = 0,
    synthetic: dict[str, str | Path] | None = None,
    training: TrainConfig | dict[str, Any] | None = None,
    save_classifier: str | Path | None = None,
    progress: bool = True,
    command: list[str] | None = None,
) -> TrainResult:
    """One classifier on `shots` real images per class (None: all) of the trial's picks plus the synthetic sets,
    scored on the test split; with `save_classifier` saved in augment's `ckpt:` format (a guide)."""

    _whole(trial=(trial, 0), seed=(seed, 0))
    if save_classifier is not None and not str(save_classifier).strip():
        raise UserError("save_classifier: an empty path", "save_classifier")
    if save_classifier is not None:
        target = Path(save_classifier)
        if target.is_dir() and any(target.iterdir()) and not (target / "model.safetensors").is_file():
            raise UserError(f"save_classifier {target}: a directory holding something else; give a new one",
                            "save_classifier")  # fmt: skip
        check_out(target, "save_classifier")  # writable, before training
    if save_classifier is not None and Path(save_classifier).is_file():
        raise UserError(f"save_classifier {save_classifier}: exists and is a file", "save_classifier")
    if shots is not None and shots < 0:
        raise UserError(f"shots must be ≥ 0 or None (all), got {shots}", "shots")
    labels, data, sets, config = _inputs(dataset, labels, synthetic, training, learned=False)
    real = data.train
    if shots is not None:
        picks = sample_kshot(real.labels, shots, num_classes=len(labels), seed=seed, trial=trial,
                             class_names=labels.names())  # fmt: skip
        real = real.subset(picks)
    parts = [real] + [s.split for s in sets]
    n = sum(len(p) for p in parts)
    if n == 0:
        raise UserError("nothing to train on: 0 shots and no synthetic set", "shots")
    _check_pretrained(config, len(labels))
    t0 = time.time()
    model = train_classifier(parts, len(labels), config, seed=trial_seed(seed, trial), progress=progress)
    scores = evaluate(model, data.test, config) if len(data.test) else {"top1": None, "top5": None}
    result = TrainResult({**scores, "dataset": data.spec, "shots": "all" if shots is None else shots, "trial": trial,
                          "train_images": {"real": len(real), "synthetic": n - len(real)},
                          "test_images": len(data.test), "steps": num_steps(config, n),
                          "seconds": round(time.time() - t0, 2)})  # fmt: skip
    if save_classifier is not None:
        rounded = {k: None if result[k] is None else round(float(result[k]), 3) for k in ("top1", "top5")}
        trained = {"tool": "downstream train", "command": command, "dataset": data.spec, "labels": labels.path,
                   "shots": result["shots"], "seed": seed, "trial": trial,
                   "synthetic": {s.name: str(s.directory) for s in sets}, "test_top1": rounded["top1"],
                   "test_top5": rounded["top5"], "config": dataclasses.asdict(config), "versions": versions()}  # fmt: skip
        save(model, save_classifier, config, labels.names(), trained)
        result["classifier"] = str(save_classifier)
    return result
