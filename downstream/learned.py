"""Synthetic sets made inside the few-shot grid from the shots a user really has: `--synthetic NAME=learn:PRESET`
(k-shot tokens), `lora:PRESET` (the peers' route) and `lora+learn:PRESET` (both).

The paper's Table 2 learns its tokens with a guide trained on the whole training set. A user with k images per
class has no such guide; this is the protocol they can run: for each shot count k ≥ 1 and trial,
  1. the guide is trained on exactly that trial's k real images per class (the picks the real-only cell
     uses, with the grid's training config and the trial's seed: the real-only cell's own classifier),
  2. the tokens are learned with it (`augment.learn_tokens`, the preset's settings, guide = that classifier),
  3. the set is generated with them (`augment.generate_set`),
  4. the few-shot classifier trains on real + that set, like any other row.
The LoRA routes (DataDream's protocol, ../shared/PEERS-LORA.md): for each k ≥ 1 and trial a LoRA is trained on
the generator from the same k real images per class (augment.adapt_generator, the preset's `lora:` settings;
cached under OUT/learned/_lora/, shared by every LoRA row of the same preset and settings); `lora:` then
generates from plain prompts on the adapted generator, `lora+learn:` learns the k-shot tokens (steps 1-3 above)
on the adapted generator and generates with them there.
Everything is cached per (k, trial) under OUT/learned/NAME/k{k:04d}-t{trial}/ (guide/, then the run directory
with tokens/ and shards/), each step resumable, so a killed grid continues where it stopped. A 0-shot cell has
no image to train a guide on: it is not trained ("—"). With the preset's eval_classifier, each (k, trial)
also records the k-shot guide's top-1 on the real test set and the held-out classifier's top-1 on the images
its tokens generated: how guide quality turns into data quality.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augment.config import load_config
from augment.data.datasets import LabelledDataset, sample_kshot, trial_seed
from augment.errors import UserError
from augment.jobs.adapt import NOT_HASHED as ADAPT_NOT_HASHED
from augment.jobs.adapt import adapt_generator
from augment.jobs.generate import generate_set
from augment.jobs.learn import learn_tokens
from augment.jobs.score import score_set
from augment.labels import LabelSet
from augment.models.fingerprint import manifest_config, source_identity
from augment.run.atomic import write_bytes, write_json
from augment.run.workers import Workers
from augment.settings import require_peft
from downstream.classifier import evaluate, prepare, save, train_classifier
from downstream.synthetic import load_synthetic

PREFIX = "learn:"
ROUTES = ("lora+learn", "learn", "lora")  # each spec's prefix is ROUTE + ":" (the longest first when parsing)


@dataclass(frozen=True)
class LearnedSpec:
    """A synthetic set the grid learns per (shots, trial) with a guide trained on those shots."""

    name: str
    preset: str
    config_file: str | None = None  # overrides on top of the preset, as `augment build --config`
    route: str = "learn"  # "learn": k-shot tokens; "lora": a LoRA on the shots, plain prompts; "lora+learn": both

    @property
    def adapts(self) -> bool:
        return self.route.startswith("lora")

    @property
    def learns(self) -> bool:
        return self.route.endswith("learn")

    def config(self):

        return load_config(self.preset, self.config_file)

    def describe(self) -> dict[str, Any]:
        """What determines its cells (with the training config, the dataset and the seed)."""

        cfg = manifest_config(self.config())
        if not self.adapts:  # (as before the LoRA routes: the learn: rows' cells keep their hashes)
            cfg.pop("lora", None)
        route = {} if self.route == "learn" else {"route": self.route}
        return {**route, "learn": self.preset, "config_file": self.config_file,
                "config": {k: v for k, v in cfg.items() if k not in ("device", "guide")}}  # fmt: skip


def parse_learned(name: str, value: str) -> LearnedSpec | None:
    """`ROUTE:PRESET` or `ROUTE:PRESET+CONFIG.yaml` (ROUTE: learn, lora or lora+learn) as a LearnedSpec
    (checked: UserError otherwise); None for anything else (a directory)."""
    route = next((r for r in ROUTES if value.startswith(r + ":")), None)
    if route is None:
        return None
    preset, _, config_file = value[len(route) + 1 :].partition("+")
    spec = LearnedSpec(name, preset, config_file or None, route)
    cfg = spec.config()  # unknown preset: one line
    cfg.validate()
    if spec.adapts:
        if cfg.lora.weights is not None:
            raise UserError(f"synthetic {name}={value}: the grid trains the LoRA on each trial's shots; "
                            "the preset's lora.weights must be unset", "synthetic")  # fmt: skip
        require_peft()
    return spec


def cache_dir(out: Path, spec: LearnedSpec, shots: int, trial: int, key: dict) -> Path:
    """OUT/learned/NAME/k{shots}-t{trial}-{hash}: the hash of everything the guide, tokens and set depend on
    besides (shots, trial), so a changed preset, training config, seed or dataset never reuses another's."""
    digest = hashlib.sha256(json.dumps({"spec": spec.describe(), **key}, sort_keys=True, default=str).encode())
    return out / "learned" / spec.name / f"k{shots:04d}-t{trial}-{digest.hexdigest()[:8]}"


def learned_set(
    spec: LearnedSpec,
    dataset: LabelledDataset,
    labels: LabelSet,
    train,
    shots: int,
    trial: int,
    seed: int,
    out: Path,
    progress: bool = False,
):
    """(SyntheticSet, info) of one (shots, trial): made, or found where a previous run left it."""

    skip = ("device", "workers", "eval_batch_size")
    key = {"train": {k: v for k, v in dataclasses.asdict(train).items() if k not in skip}, "seed": seed,
           "dataset": dataset.spec, "classes": labels.names()}  # fmt: skip
    root = cache_dir(out, spec, shots, trial, key)
    guide_dir, run = root / "guide", root / "run"
    info_path = root / "info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    picks = sample_kshot(dataset.train.labels, shots, num_classes=len(labels), seed=seed, trial=trial,
                         class_names=dataset.classes)  # fmt: skip
    if spec.learns and (not (guide_dir / "config.json").is_file() or "guide_top1" not in info):
        model = train_classifier([dataset.train.subset(picks)], len(labels), train, seed=trial_seed(seed, trial),
                                 progress=progress)  # fmt: skip
        scores = evaluate(model, prepare(dataset.test, train), train)
        info["guide_top1"] = round(scores["top1"], 3)
        trained = {"tool": "downstream fewshot (learn:)", "shots": shots, "trial": trial, "seed": seed,
                   "test_top1": info["guide_top1"], "config": dataclasses.asdict(train)}  # fmt: skip
        _write(info_path, info)
        _save_guide(model, guide_dir, train, labels.names(), trained)
    cfg = spec.config()
    if spec.learns:
        cfg.guide = f"ckpt:{guide_dir}"
        cfg.label_match = "by-name"  # the guide was trained on this label set: its outputs are the classes, in order
    alone = Workers(index=0, count=1)  # one grid cell owns this set: not the launcher's worker split
    if spec.adapts:
        lora_dir = lora_cache_dir(out, cfg, shots, trial, key)
        made = adapt_generator(labels, dataset.train.subset(picks), lora_dir, cfg, progress=progress)
        cfg.lora.weights = str(lora_dir)
        if "lora" not in info:
            info["lora"] = made.identity
            _write(info_path, info)
    if spec.learns:
        learn_tokens(labels, run, cfg, workers=alone, progress=progress)
    generate_set(labels, run, cfg, tokens=run if spec.learns else None, workers=alone, progress=progress)
    if cfg.eval_classifier and "synthetic_heldout_top1" not in info:
        report = score_set(run, cfg, progress=progress)
        info["synthetic_heldout_top1"] = round(report["macro"]["top1"], 3)
        _write(info_path, info)
    return load_synthetic(spec.name, run, labels), info


def lora_cache_dir(out: Path, cfg, shots: int, trial: int, key: dict) -> Path:
    """OUT/learned/_lora/k{shots}-t{trial}-{hash}: one adapter per (shots, trial), preset generator and LoRA
    settings, dataset and seed, whichever row asks for it."""
    lora = {k: v for k, v in dataclasses.asdict(cfg.lora).items() if k not in ADAPT_NOT_HASHED}
    blob = {"generator": source_identity(cfg.generator), "dtype": cfg.dtype, "lora": lora,
            **{k: key[k] for k in ("seed", "dataset", "classes")}}  # fmt: skip
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return out / "learned" / "_lora" / f"k{shots:04d}-t{trial}-{digest}"


def _save_guide(model, guide_dir, train, classes: list[str], trained: dict) -> None:
    """The guide appears whole or not at all (a kill mid-save): saved under a temporary name and renamed on a
    disk; in a bucket saved locally, then uploaded file by file with config.json last (what marks it whole)."""
    if isinstance(guide_dir, Path):
        tmp = guide_dir.parent / f"guide.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save(model, tmp, train, classes, trained)
        shutil.rmtree(guide_dir, ignore_errors=True)
        tmp.rename(guide_dir)
        return
    with tempfile.TemporaryDirectory(prefix="augment-guide-") as local:
        save(model, Path(local), train, classes, trained)
        for name in ("model.safetensors", "config.json"):
            write_bytes(guide_dir / name, (Path(local) / name).read_bytes())


def _write(path: Path, info: dict) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, info, indent=2)


def check_shots(specs: list[LearnedSpec], shots: list[int], out=None) -> None:
    if specs and not any(k >= 1 for k in shots):
        raise UserError(
            f"synthetic {specs[0].name}={specs[0].route}:{specs[0].preset} needs a shot count ≥ 1 to train on",
            "synthetic",
        )
    adapts = [s for s in specs if s.adapts]
    if adapts and out is not None and not isinstance(out, Path):
        raise UserError(f"synthetic {adapts[0].name}={adapts[0].route}:{adapts[0].preset}: the LoRA routes need a "
                        "local OUT (the adapter is a local directory)", "synthetic")  # fmt: skip
