"""Issue 35: what costs LoRA + k-shot tokens its accuracy, measured on research/lora_grid.sh's output.

For each (shots, trial) whose learned sets are cached in RUNS/fewshot-lora/learned:
1. seeds: each learned row's downstream classifier retrained with --seeds seeds (seed 0 is the cell's own: the
   cell's top-1 is recorded beside it), per-class top-1 on the test split. Separates what the set costs from the
   noise of training one classifier. research/lora_why_inputs.sh's set, where made, is trained on as one more row.
2. unions: the set-level combination, half of the k-shot tokens' set (even indices) + half of a LoRA set (odd
   indices), 1000 images as every row, the same real shots and training.
3. copying: each synthetic image's nearest real image in the held-out classifier's features, among its class's k
   shots and 200 other training images of the class: the share nearer a shot than any of the 200 (a generator
   drawing from the data gives about k / (k + 200)), and how many of the k shots are somebody's nearest.

    python research/lora_why.py runs [--seeds 2] [--shots 3,9]   (from the repository root) → RUNS/fewshot-lora/why.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import _root  # noqa: F401  (the repository on sys.path)
import numpy as np
import torch
from lora_table import ms  # research/, beside this script

from augment.data.datasets import load_dataset, sample_kshot, trial_seed
from augment.labels import read_label_set
from augment.metrics import GuideWithFeatures
from augment.models.guides import load_guide
from downstream.classifier import Tensors, default_config, evaluate, prepare, train_classifier
from downstream.grid import REAL, cell_hash
from downstream.synthetic import load_synthetic

ROWS = ["kshot", "both", "both3", "lora", "lora3"]
XFER = "kshot@lora3"  # the k-shot tokens generated with on the lr-1e-3 adapter (research/lora_why_inputs.sh)
ROUTED = "routed"  # per class, the k-shot tokens' images or the lr-1e-3 LoRA's: whichever the k-shot guide prefers
UNIONS = {"kshot+lora": ("kshot", "lora"), "kshot+lora3": ("kshot", "lora3")}
PAIRS = [("both", "kshot"), ("both", "lora"), ("both3", "kshot"), ("both3", "lora3"), ("lora3", "kshot"),
         (XFER, "kshot"), (XFER, "lora3"), ("kshot+lora", "kshot"), ("kshot+lora", "lora"),
         ("kshot+lora3", "kshot"), ("kshot+lora3", "lora3"), (ROUTED, "kshot"), (ROUTED, "lora3")]  # fmt: skip
HELDOUT = "ckpt:augment/toy/weights/heldout"
OTHERS = 200  # real training images per class to compare a shot with


def learned_dir(grid: Path, name: str, shots: int, trial: int) -> Path | None:
    found = sorted((grid / "learned" / name).glob(f"k{shots:04d}-t{trial}-*/run"))
    return found[0] if found and (found[0] / "manifest.json").is_file() else None


def route(kshot_dir: Path, lora_dir: Path, kshot: Tensors, lora: Tensors, classes: int) -> Tensors | None:
    """Per class, the set whose images of that class the trial's k-shot guide recognises more often (its top-1
    in RUN.guide-score.json: `augment score --classifier ckpt:<the trial's guide>`; the k-shot tokens' on a tie):
    a choice made from the k shots alone."""
    paths = [Path(f"{d}.guide-score.json") for d in (kshot_dir, lora_dir)]
    if not all(p.is_file() for p in paths):
        return None
    k, lo = (json.loads(p.read_text())["classes"] for p in paths)
    xs, ys = [], []
    for c in range(classes):
        src = lora if lo[c]["top1"] > k[c]["top1"] else kshot
        xs.append(src.x[src.y == c])
        ys.append(src.y[src.y == c])
    return Tensors(torch.cat(xs), torch.cat(ys))


def per_class(model, test: Tensors, train, classes: int) -> list[float]:
    return [evaluate(model, Tensors(test.x[test.y == c], test.y[test.y == c]), train)["top1"] for c in range(classes)]


@torch.no_grad()
def features(extractor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([extractor(x[i : i + 500].float() / 255)[1].double() for i in range(0, len(x), 500)])


def copying(extractor, syn: Tensors, fk, shots_y, fo, others_y, classes: int) -> dict:
    """fk, fo: the shots' and the other real images' features (computed once per trial)."""
    fs = features(extractor, syn.x)
    nearer, used = 0, []
    for c in range(classes):
        s, k, o = fs[syn.y == c], fk[shots_y == c], fo[others_y == c]
        dk, do = torch.cdist(s, k), torch.cdist(s, o)
        nearer += int((dk.min(1).values < do.min(1).values).sum())
        used.append(len(set(dk.argmin(1).tolist())))
    return {"nearer_a_shot": 100.0 * nearer / len(syn), "shots_used": statistics.mean(used)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--shots", default="3,9")
    ap.add_argument("--report", action="store_true", help="only print the tables of RUNS/fewshot-lora/why.json")
    args = ap.parse_args()
    grid = args.runs / "fewshot-lora"
    labels = read_label_set("manifests/fashion-mnist.txt")
    if args.report:
        return report(json.loads((grid / "why.json").read_text()), labels.names())
    data = load_dataset("fashion-mnist", labels)
    n = len(data.classes)
    train = replace(default_config("fashion-mnist"), steps=300)  # the grid's --steps 300
    real_cell = json.loads((grid / "cells" / f"{REAL}__0003shot__trial0.json").read_text())
    if real_cell["config_hash"] != cell_hash(data, None, train, 0):
        raise SystemExit("the grid was trained with another configuration than this script's")
    test = prepare(data.test, train)
    extractor = GuideWithFeatures(load_guide(HELDOUT, "cpu", data.classes)).eval()
    out_path = grid / "why.json"
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for shots in [int(k) for k in args.shots.split(",")]:
        for trial in range(3):
            dirs = {r: learned_dir(grid, r, shots, trial) for r in ROWS}
            if not all(dirs.values()):
                continue
            key = f"{shots}/{trial}"
            picks = sample_kshot(data.train.labels, shots, num_classes=n, seed=0, trial=trial, class_names=data.classes)
            real = prepare(data.train.subset(picks), train)
            rest = np.setdiff1d(np.arange(len(data.train)), picks)
            rng = np.random.default_rng(trial)
            others = np.concatenate([rng.choice(rest[data.train.labels[rest] == c], OTHERS, replace=False)
                                     for c in range(n)])  # fmt: skip
            others = prepare(data.train.subset(np.sort(others)), train)
            sets = {r: prepare(load_synthetic(r, d, labels).split, train) for r, d in dirs.items()}
            xfer = args.runs / "xfer" / f"k{shots:04d}-t{trial}"  # research/lora_why_inputs.sh's set, if made
            if (xfer / "_info.json").is_file():
                sets[XFER] = prepare(load_synthetic(XFER, xfer, labels).split, train)
            routed = route(dirs["kshot"], dirs["lora3"], sets["kshot"], sets["lora3"], n)
            if routed is not None:
                sets[ROUTED] = routed
            for u, (a, b) in UNIONS.items():
                sets[u] = Tensors(
                    torch.cat([sets[a].x[0::2], sets[b].x[1::2]]), torch.cat([sets[a].y[0::2], sets[b].y[1::2]])
                )
            entry = out.setdefault(key, {})
            real_features = None  # (shots, others) features, when a set still needs its copying figures
            for name, syn in sets.items():
                row = entry.setdefault(name, {"runs": {}})
                if (name in ROWS or name == XFER) and "nearer_a_shot" not in row:
                    if real_features is None:
                        real_features = features(extractor, real.x), features(extractor, others.x)
                    fk, fo = real_features
                    row.update(copying(extractor, syn, fk, real.y, fo, others.y, n))
                for s in range(args.seeds):
                    if str(s) in row["runs"]:
                        continue
                    t0 = time.time()
                    model = train_classifier([real, syn], n, train, seed=trial_seed(0, trial) + s)
                    pc = per_class(model, test, train, n)
                    row["runs"][str(s)] = {"top1": evaluate(model, test, train)["top1"], "per_class": pc}
                    print(
                        f"{key} {name} seed {s}: {row['runs'][str(s)]['top1']:.2f} ({time.time() - t0:.0f} s)",
                        flush=True,
                    )
                    cell = grid / "cells" / f"{name}__{shots:04d}shot__trial{trial}.json"
                    if s == 0 and cell.is_file():
                        record = json.loads(cell.read_text())
                        row["cell_top1"] = record["top1"]
                    out_path.write_text(json.dumps(out, indent=1))
    report(out, data.classes)


def report(out: dict, classes: list[str]) -> None:
    """Per (shots): each set's top-1 (mean over trials of the seed mean), the seed noise, the copying figures,
    paired wins on seed means, and per-class differences against the k-shot tokens."""
    by_shots: dict[str, dict[int, dict]] = {}
    for key, entry in out.items():
        shots, trial = key.split("/")
        by_shots.setdefault(shots, {})[int(trial)] = entry
    for shots, trials in sorted(by_shots.items(), key=lambda kv: int(kv[0])):
        names = list(next(iter(trials.values())))
        mean = {
            n: {t: statistics.mean(r["top1"] for r in e[n]["runs"].values()) for t, e in trials.items()} for n in names
        }
        print(f"\n## {shots} shots, trials {sorted(trials)}\n")
        print(
            "| set | top-1 (seed means) | cells | seed differences | nearer a shot % | shots used |\n|---|---|---|---|---|---|"
        )
        for n in names:
            rows = [trials[t][n] for t in sorted(trials)]
            diffs = [r["runs"]["1"]["top1"] - r["runs"]["0"]["top1"] for r in rows if "1" in r["runs"]]
            copy = [r["nearer_a_shot"] for r in rows if "nearer_a_shot" in r]
            used = [r["shots_used"] for r in rows if "shots_used" in r]
            print(f"| {n} | {ms(list(mean[n].values()))} | {' '.join(str(r.get('cell_top1', '')) for r in rows)} | "
                  f"{' '.join(f'{d:+.1f}' for d in diffs)} | {ms(copy) if copy else ''} | {ms(used) if used else ''} |")  # fmt: skip
        print("\n| paired (seed means) | wins | mean (min..max) |\n|---|---|---|")
        for a, b in PAIRS:
            if a in mean and b in mean:
                d = [mean[a][t] - mean[b][t] for t in sorted(trials)]
                print(f"| {a} − {b} | {sum(x > 0 for x in d)}/{len(d)} | {statistics.mean(d):+.1f} ({min(d):+.1f}..{max(d):+.1f}) |")  # fmt: skip
        print("\n| per class, − kshot | " + " | ".join(classes) + " |\n|---|" + "---|" * len(classes))
        for n in names:
            if n == "kshot":
                continue
            pc = [[statistics.mean(r["per_class"][c] for r in trials[t][n]["runs"].values())
                   - statistics.mean(r["per_class"][c] for r in trials[t]["kshot"]["runs"].values())
                   for t in sorted(trials)] for c in range(len(classes))]  # fmt: skip
            print(f"| {n} | " + " | ".join(f"{statistics.mean(v):+.1f}" for v in pc) + " |")
        print("\n| per class top-1, kshot | " + " | ".join(f"{statistics.mean(statistics.mean(r['per_class'][c] for r in trials[t]['kshot']['runs'].values()) for t in trials):.1f}" for c in range(len(classes))) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
