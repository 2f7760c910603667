"""The tables of docs/toy-world.md "LoRA" from research/lora_grid.sh's output: the grid's cells (mean ± sample
std over trials, paired wins), seconds per cell, and the held-out top-1 and FID of every set it trained on.

    python research/lora_table.py runs
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ORDER = ["real", "plain", "tokens", "kshot", "lora", "both", "lora3", "both3"]  # 3: the adapter at lr 1e-3
PAIRS = [("lora", "real"), ("lora", "plain"), ("lora", "kshot"), ("both", "real"), ("both", "lora"),
         ("both", "kshot"), ("kshot", "real"), ("lora3", "lora"), ("lora3", "kshot"), ("both3", "lora3"),
         ("both3", "kshot"), ("both3", "both")]  # fmt: skip


def ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(root: Path) -> None:
    grid = root / "fewshot-lora"
    cells = [json.loads(p.read_text()) for p in sorted((grid / "cells").glob("*.json"))]  # (a stopped grid too)
    shots = sorted({c["shots"] for c in cells})
    top1: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    secs: dict[str, list[float]] = defaultdict(list)
    for c in cells:
        if c.get("trained", True):
            top1[(c["set"], c["shots"])][c["trial"]] = c["top1"]
            secs[c["set"]].append(c["seconds"])
    sets = [s for s in ORDER if any((s, k) in top1 for k in shots)]
    print("| set | " + " | ".join(f"{k} shots" for k in shots) + " |")
    print("|---|" + "---|" * len(shots))
    for s in sets:
        print(
            f"| {s} | " + " | ".join(ms(list(top1[(s, k)].values())) if (s, k) in top1 else "—" for k in shots) + " |"
        )
    print("\nPaired by trial (wins; mean difference, min..max):\n")
    print("| | " + " | ".join(f"{k} shots" for k in shots) + " |")
    print("|---|" + "---|" * len(shots))
    for a, b in PAIRS:
        row = []
        for k in shots:
            ta, tb = top1.get((a, k), {}), top1.get((b, k), {})
            d = [ta[t] - tb[t] for t in sorted(set(ta) & set(tb))]
            row.append(f"{sum(x > 0 for x in d)}/{len(d)}, {statistics.mean(d):+.1f} ({min(d):+.1f}..{max(d):+.1f})"
                       if d else "—")  # fmt: skip
        print(f"| {a} − {b} | " + " | ".join(row) + " |")
    print("\nSeconds per cell (min-max, mean):\n")
    for s in sets:
        v = secs[s]
        print(f"- {s}: {min(v):.0f}-{max(v):.0f}, mean {statistics.mean(v):.0f} over {len(v)} cells")
    print("\nEach set's held-out top-1 % and FID (mean ± std over trials):\n")
    print("| set | k | held-out top-1 % | FID | sets |")
    print("|---|---|---|---|---|")
    for name, run in (("plain", root / "toy-plain"), ("tokens", root / "toy")):
        score = json.loads(Path(f"{run}.score.json").read_text())
        print(f"| {name} | — | {score['macro']['top1']:.1f} | {score['fid']:.1f} | 1 |")
    for name in ("kshot", "lora", "both", "lora3", "both3"):
        for k in shots:
            scores = [
                json.loads(p.read_text()) for p in sorted((grid / "learned" / name).glob(f"k{k:04d}-t*/run.score.json"))
            ]
            if scores:
                print(f"| {name} | {k} | {ms([s['macro']['top1'] for s in scores])} | "
                      f"{ms([s['fid'] for s in scores])} | {len(scores)} |")  # fmt: skip
    adapters = sorted((grid / "learned" / "_lora").glob("k*/manifest.json"))
    if adapters:
        print("\nAdapters (steps, loss first/last 10 steps):")
        for p in adapters:
            a = json.loads(p.read_text())["adapt"]
            print(
                f"- {p.parent.name}: {a['steps']} steps, {a['images']} images, loss {a['loss_first_10']} → {a['loss_last_10']}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
