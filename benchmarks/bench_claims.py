"""Stragglers: static split vs claim mode, wall time of `augment learn` with several worker processes.

Token learning per class takes from a few steps to max_steps (the stopping rules), so with a static split
(`classes[rank::world]`) the worker that drew the slow classes finishes last while the others idle. In claim
mode workers take the next class when they finish one. Runs the toy world's learner, one class per step, each
worker a one-thread process, both modes on the same classes, side by side:

    python benchmarks/bench_claims.py --workers 2 --max-steps 30

Prints per mode: wall time, each worker's busy time and classes, and the steps each class took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_mode(mode: str, labels: Path, out: Path, workers: int, max_steps: int, batch: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs, t0 = [], time.time()
    for i in range(workers):
        cmd = [
            sys.executable,
            "-m",
            "augment.cli",
            "learn",
            "--preset",
            "toy",
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--classes-per-step",
            "1",
            "--max-steps",
            str(max_steps),
            "--batch-size",
            str(batch),
            "--worker-index",
            str(i),
            "--num-workers",
            str(workers),
            "--no-progress",
            *(["--claim", "--lease", "60"] if mode == "claim" else []),
        ]
        err = open(out.parent / f"{mode}-{i}.err", "w")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err), err))
    ends: list[float | None] = [None] * len(procs)
    while any(e is None for e in ends):  # each worker's own end time
        for i, (p, _) in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = time.time() - t0
        time.sleep(0.05)
    for p, err in procs:
        err.close()
        if p.returncode != 0:
            sys.exit(f"{mode} worker failed: {Path(err.name).read_text()[-1000:]}")
    metas = [json.loads(m.read_text()) for m in sorted((out / "tokens").glob("*/meta.json"))]
    return {
        "wall_s": round(max(ends), 1),
        "worker_end_s": [round(e, 1) for e in ends],
        "steps": {m["class"]: m["steps"] for m in metas},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--labels", type=Path, default=REPO / "manifests" / "fashion-mnist.txt")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            mode: run_mode(mode, args.labels, Path(tmp) / mode, args.workers, args.max_steps, args.batch_size)
            for mode in ("static", "claim")
        }
    for mode, r in results.items():
        print(f"{mode:7s} wall {r['wall_s']:7.1f} s   workers end at {r['worker_end_s']}")
    steps = results["static"]["steps"]
    print("steps per class:", json.dumps(steps))
    shares = [sum(list(steps.values())[i :: args.workers]) for i in range(args.workers)]
    print(f"learner steps per worker under the static split: {shares} (claim mode balances them as it goes)")
    same = results["static"]["steps"] == results["claim"]["steps"]
    print(
        f"same steps per class in both modes: {same}; claim / static wall time "
        f"{results['claim']['wall_s'] / results['static']['wall_s']:.2f}"
    )


if __name__ == "__main__":
    main()
