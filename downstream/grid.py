"""The few-shot grid of Schwartz et al. 2023, Table 2: {real only, + each synthetic set} × shots × trials.

Cells share what should be shared: within a trial every set trains on the same real shots (picked by
`sample_kshot`, nested across shot counts) from the same initial weights, so rows differ only by the synthetic
images. Each finished cell is written atomically to OUT/cells/<id>.json with a hash of everything that determines
it; a rerun skips finished cells, and refuses cells made under another configuration unless told to overwrite.
A cell with 0 shots and no synthetic images has nothing to train on: it is recorded as 0% without training, the
way the paper's table leaves the real-only 0-shot entry empty/zero, and the report marks it "—".
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.data.datasets import LabelledDataset, class_counts, sample_kshot, trial_seed
from augment.errors import UserError
from augment.run.atomic import write_bytes, write_json, write_text
from augment.run.storage import out_path, storage_errors
from downstream.classifier import TrainConfig, evaluate, num_steps, prepare, train_classifier
from downstream.learned import LearnedSpec, check_shots, learned_set
from downstream.synthetic import SyntheticSet

REAL = "real"


@dataclass
class GridConfig:
    shots: list[int]
    trials: int = 3
    seed: int = 0
    overwrite: bool = False  # recompute cells made under another configuration
    progress: bool = True
    worker_index: int = 0  # this process runs cells[worker_index::num_workers] not yet done ...
    num_workers: int = 1  # ... so N one-thread processes can share N cores


@dataclass(frozen=True)
class Cell:
    set_name: str
    shots: int
    trial: int

    @property
    def id(self) -> str:
        return f"{self.set_name}__{self.shots:04d}shot__trial{self.trial}"


def plan_cells(set_names: list[str], shots: list[int], trials: int) -> list[Cell]:
    """Every cell, trial-major so that a partial run already has complete trials to look at."""
    return [Cell(s, k, t) for t in range(trials) for k in shots for s in set_names]


def cell_hash(
    dataset: LabelledDataset, synthetic: SyntheticSet | LearnedSpec | None, train: TrainConfig, seed: int
) -> str:
    """What determines a cell besides (set, shots, trial); devices and worker counts don't count."""
    cfg = {k: v for k, v in dataclasses.asdict(train).items() if k not in ("device", "workers", "eval_batch_size")}
    if cfg.get("real_fraction") in (None, "uniform") or synthetic is None:  # no effect there; cells made
        cfg.pop("real_fraction", None)  # before the option existed (uniform then) keep their hash
    if synthetic is None:
        described = None
    elif isinstance(synthetic, LearnedSpec):
        described = synthetic.describe()
    else:
        described = {"dir": str(synthetic.directory.resolve()), "manifest_sha256": synthetic.manifest_sha256,
                     "images": len(synthetic.split)}  # fmt: skip
    payload = {"dataset": dataset.spec, "classes": dataset.classes, "seed": seed, "train": cfg, "synthetic": described}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:16]


def check_grid(
    dataset: LabelledDataset, grid: GridConfig, synthetic: list[SyntheticSet], train: TrainConfig, out: Path
) -> None:
    """Everything that can be wrong with the inputs, before OUT is touched."""
    if not len(dataset.test):
        raise UserError(f"{dataset.spec}: no test split to score the grid on (imagefolder: DIR/train/ and DIR/val/)")
    if not grid.shots or any(k < 0 for k in grid.shots) or len(set(grid.shots)) != len(grid.shots):
        raise UserError(f"shots must be distinct non-negative integers, got {grid.shots}", "shots")
    if grid.trials < 1:
        raise UserError(f"trials must be ≥ 1, got {grid.trials}", "trials")
    if not 0 <= grid.worker_index < grid.num_workers:
        raise UserError(f"worker_index {grid.worker_index} is not in 0..{grid.num_workers - 1}", "worker_index")
    names = [s.name for s in synthetic]
    if len(set(names)) != len(names):
        raise UserError(f"synthetic names must be distinct, got {names}", "synthetic")
    check_shots([s for s in synthetic if isinstance(s, LearnedSpec)], grid.shots, out)
    counts = class_counts(dataset.train.labels, len(dataset.classes))
    k = max(grid.shots)
    if k > counts.min():
        c = int(counts.argmin())
        raise UserError(
            f"{k} shots asked for but class {dataset.classes[c]!r} has only {counts[c]} training "
            f"image(s) in {dataset.spec}"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"out {out} exists and is not a directory", "out")
    if not grid.overwrite:
        hashes = {REAL: cell_hash(dataset, None, train, grid.seed)}
        hashes.update({s.name: cell_hash(dataset, s, train, grid.seed) for s in synthetic})
        for cell in plan_cells([REAL] + names, grid.shots, grid.trials):
            done = _read_cell(out / "cells" / f"{cell.id}.json")
            if done is not None and done.get("config_hash") != hashes[cell.set_name]:
                raise UserError(
                    f"{out}/cells/{cell.id}.json was made with another configuration; "
                    "use a new --out or pass --overwrite"
                )


def _read_cell(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # unreadable: recompute (atomic writes make this unlikely)


def run_grid(
    dataset: LabelledDataset,
    synthetic: list[SyntheticSet | LearnedSpec],
    train: TrainConfig,
    grid: GridConfig,
    out: Path,
    labels=None,
    engine=None,
) -> list[dict]:
    """Run (or resume) every cell and write OUT/cells/*.json and the reports; returns the cell records.
    A LearnedSpec's set is made per (shots, trial) inside its cell (downstream.learned; needs `labels`).
    `engine`: an augment.Workers with engine "ray" runs every pending cell as a Ray task (augment.run.engine);
    else this process runs its share (`grid.worker_index` of `grid.num_workers`)."""
    from tqdm import tqdm

    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    sets = [REAL] + [s.name for s in synthetic]
    hashes = {REAL: cell_hash(dataset, None, train, grid.seed)}
    hashes.update({s.name: cell_hash(dataset, s, train, grid.seed) for s in synthetic})
    cells = plan_cells(sets, grid.shots, grid.trials)
    records = _collect(cells_dir, cells, hashes)
    ray = engine is not None and engine.engine == "ray"
    mine = set(cells if ray else cells[grid.worker_index :: grid.num_workers])  # by position: timing-independent
    pending = [c for c in cells if c not in records and c in mine]
    bar = tqdm(total=len(cells), initial=len(records), desc="cells", disable=not grid.progress)
    if ray and pending:
        _run_on_ray(dataset, synthetic, train, grid, out, labels, pending, hashes, engine, bar)
    cache: dict[str, Any] = {}
    for cell in [] if ray else pending:
        bar.set_postfix_str(cell.id)
        record = run_cell(dataset, synthetic, train, grid, out, labels, cell, hashes[cell.set_name], cache)
        bar.update(1)
        bar.set_postfix_str(f"{cell.id} top1 {record['top1']:.1f}")
        records = _collect(cells_dir, cells, hashes)  # other workers' cells too
        write_results(out, [records[c] for c in cells if c in records], sets, grid.shots, plot=False)
    bar.close()
    records = _collect(cells_dir, cells, hashes)
    ordered = [records[c] for c in cells if c in records]
    write_results(out, ordered, sets, grid.shots, plot=True)
    return ordered


def run_cell(
    dataset: LabelledDataset,
    synthetic: list[SyntheticSet | LearnedSpec],
    train: TrainConfig,
    grid: GridConfig,
    out: Path,
    labels,
    cell: Cell,
    config_hash: str,
    cache: dict[str, Any] | None = None,
) -> dict:
    """One cell: its real shots (+ its synthetic set, made first for a learned row), a classifier trained and
    evaluated, the record written atomically to OUT/cells/<id>.json and returned. `cache` keeps the decoded
    test and synthetic images between the cells of one process."""
    cache = {} if cache is None else cache
    by_name = {s.name: s for s in synthetic}
    if "test" not in cache:  # decode once per process, and only if there is work to do
        cache["test"] = prepare(dataset.test, train)
        cache["synthetic"] = {s.name: prepare(s.split, train) for s in synthetic if isinstance(s, SyntheticSet)}
    test, synthetic_data = cache["test"], cache["synthetic"]
    t0 = time.time()
    real = dataset.train.subset(
        sample_kshot(
            dataset.train.labels,
            cell.shots,
            num_classes=len(dataset.classes),
            seed=grid.seed,
            trial=cell.trial,
            class_names=dataset.classes,
        )
    )
    learned = by_name.get(cell.set_name) if isinstance(by_name.get(cell.set_name), LearnedSpec) else None
    extra: dict[str, Any] = {}
    parts = [real]
    if learned is not None and cell.shots > 0:
        made, extra = learned_set(learned, dataset, labels, train, cell.shots, cell.trial, grid.seed, out,
                                  progress=grid.progress)  # fmt: skip
        parts.append(prepare(made.split, train))
        n_synthetic = len(made.split)
    else:
        n_synthetic = 0 if learned is not None or cell.set_name == REAL else len(by_name[cell.set_name].split)
        if n_synthetic:
            parts.append(synthetic_data[cell.set_name])
    record = {
        "set": cell.set_name,
        "shots": cell.shots,
        "trial": cell.trial,
        "train_images": {"real": len(real), "synthetic": n_synthetic},
        **extra,
    }
    if learned is not None and cell.shots == 0:
        record.update(top1=0.0, top5=0.0, steps=0, trained=False,
                      note="no shots to train a guide on: not run")  # fmt: skip
    elif len(real) + n_synthetic == 0:
        record.update(
            top1=0.0,
            top5=0.0,
            steps=0,
            trained=False,
            note="nothing to train on (0 shots, no synthetic images): recorded as 0",
        )
    else:
        model = train_classifier(
            parts, len(dataset.classes), train, seed=trial_seed(grid.seed, cell.trial), progress=grid.progress
        )
        record.update(evaluate(model, test, train), steps=num_steps(train, len(real) + n_synthetic), trained=True)
    record.update(seconds=round(time.time() - t0, 2), test_images=len(dataset.test), config_hash=config_hash)
    write_json(out / "cells" / f"{cell.id}.json", record, indent=2)
    return record


_CACHE: dict[str, Any] = {}  # a Ray worker process keeps the decoded images between the cells it runs


def _cell_task(dataset, synthetic, train, grid, out: str, labels, cell: Cell, hashes: dict[str, str]) -> dict:
    """One Ray task: one cell, in a worker process of the cluster (augment.run.engine). The decoded images are
    kept for the next cell of the same grid (the same sets under the same hashes)."""
    key = json.dumps(hashes, sort_keys=True)
    if _CACHE.get("key") != key:
        _CACHE.clear()
        _CACHE["key"] = key
    quiet = dataclasses.replace(grid, progress=False)
    with storage_errors(out):
        return run_cell(dataset, synthetic, train, quiet, out_path(out, "out"), labels, cell,
                        hashes[cell.set_name], _CACHE)  # fmt: skip


def _run_on_ray(dataset, synthetic, train, grid, out, labels, pending, hashes, engine, bar) -> None:
    """Every pending cell as a Ray task; the dataset and sets go to the object store once, not once per cell."""
    from augment.run.engine import ray_session, run_tasks

    with ray_session(engine) as ray:
        shared = [ray.put(x) for x in (dataset, synthetic, train, grid)]
        args = [(*shared, str(out), labels, cell, hashes) for cell in pending]

        def done(record: dict) -> None:  # written here too: the driver's OUT has every cell, shared or not
            cell = Cell(record["set"], record["shots"], record["trial"])
            write_json(out / "cells" / f"{cell.id}.json", record, indent=2)
            bar.update(1)
            bar.set_postfix_str(f"{record['set']} {record['shots']} shots top1 {record['top1']:.1f}")

        run_tasks(_cell_task, args, engine, done)


def _collect(cells_dir: Path, cells: list[Cell], hashes: dict[str, str]) -> dict[Cell, dict]:
    """The finished cells on disk that were made under the current configuration."""
    records = {}
    for cell in cells:
        done = _read_cell(cells_dir / f"{cell.id}.json")
        if done is not None and done.get("config_hash") == hashes[cell.set_name]:
            records[cell] = done
    return records


def summarise(records: list[dict], sets: list[str], shots: list[int]) -> dict[str, dict[str, dict]]:
    """{set: {shots: {mean, std, n}}} of top-1 and top-5; std is the sample std over trials (0 for one)."""
    summary: dict[str, dict[str, dict]] = {}
    for s in sets:
        summary[s] = {}
        for k in shots:
            rows = [r for r in records if r["set"] == s and r["shots"] == k]
            if not rows:
                continue
            entry: dict[str, Any] = {"n": len(rows), "trained": any(r.get("trained", True) for r in rows)}
            for metric in ("top1", "top5"):
                v = np.array([r[metric] for r in rows], dtype=float)
                entry[metric] = {
                    "mean": round(float(v.mean()), 3),
                    "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 3),
                }
            summary[s][str(k)] = entry
    return summary


def write_results(out: Path, records: list[dict], sets: list[str], shots: list[int], plot: bool = True) -> None:
    """results.json (every cell + summary), results.md (the paper-style table) and results.png."""
    summary = summarise(records, sets, shots)
    write_json(out / "results.json", {"cells": records, "summary": summary, "sets": sets, "shots": shots}, indent=2)
    lines = [
        "# Few-shot top-1 accuracy (%), mean ± std over trials",
        "",
        "| set | " + " | ".join(f"{k} shots" for k in shots) + " |",
        "|---|" + "---|" * len(shots),
    ]
    for s in sets:
        row = []
        for k in shots:
            e = summary[s].get(str(k))
            if e is None:
                row.append("…")
            elif not e["trained"]:
                row.append("—")
            else:
                row.append(f"{e['top1']['mean']:.1f} ± {e['top1']['std']:.1f}")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    trials = max((r["trial"] for r in records), default=-1) + 1
    lines += [
        "",
        f"{len(records)} cells, up to {trials} trial(s) each. '—': nothing to train on (0 real shots "
        "and no synthetic images), recorded as 0 in results.json. '…': not run yet.",
        "",
    ]
    write_text(out / "results.md", "\n".join(lines))
    if plot:
        _plot(out / "results.png", summary, sets, shots)


def _plot(path: Path, summary: dict, sets: list[str], shots: list[int]) -> None:
    try:
        import matplotlib
    except ModuleNotFoundError:  # an optional extra: results.json and results.md have everything
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for s in sets:
        ks = [k for k in shots if str(k) in summary[s] and summary[s][str(k)]["trained"]]
        if ks:
            mean = [summary[s][str(k)]["top1"]["mean"] for k in ks]
            std = [summary[s][str(k)]["top1"]["std"] for k in ks]
            ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=s)
    ax.set_xlabel("real images per class (shots)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xticks(shots)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())  # atomic on a disk, one whole PUT in a bucket
