"""Peak memory (and time) of one token-learner step by the number of classes sharing the step (issue 6).

Each size runs in a fresh subprocess: `TokenLearner.run` on the first K classes with
`max_classes_per_step=K` and two steps per class, so both steps hold all K classes. Memory is the step's
peak above what the loaded models take:
- CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() after loading;
- CPU: peak RSS (resource.getrusage ru_maxrss) minus the RSS after loading. ru_maxrss is a high-water mark
  of the whole process, so a step that needs less than the loading did shows as "≤".
Time is the second step's (the first pays one-off costs). Prints a table and each size's ratio to size 1.

    python benchmarks/bench_memory.py --quick
    python benchmarks/bench_memory.py --sizes 1,2,5,10 --out results/memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import torch

from benchmarks.common import (
    add_common_arguments,
    markdown_table,
    print_environment,
    read_labels,
    save_results,
    setup,
    toy_config,
)

MB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--sizes", help="classes per step to measure, comma-separated (default 1,2,5,10; --quick: 1,2)")
    p.add_argument("--batch-size", type=int, help="images per class per step (default: the preset's; --quick: 2)")
    p.add_argument("--steps", type=int, help="learner denoising steps (default: the preset's; --quick: 2)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="learn with gradient checkpointing")
    p.add_argument("--objective", choices=["final", "x0"], help="learner objective (default: the preset's)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: measure this one size, print JSON
    return p.parse_args(argv)


def learn_overrides(args: argparse.Namespace, size: int) -> dict:
    quick = {"batch_size": 2, "num_inference_steps": 2} if args.quick else {}
    given = {"batch_size": args.batch_size, "num_inference_steps": args.steps, "objective": args.objective}
    return {
        **quick,
        **{k: v for k, v in given.items() if v},
        "max_classes_per_step": size,
        "max_steps": 2,
        "gradient_checkpointing": args.gradient_checkpointing,
        "patience": 3,
        "stop_window": 3,
    }


def rss_bytes() -> int:
    """The process's resident set size now (Linux /proc), else its high-water mark."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return max_rss_bytes()


def max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def measure(args: argparse.Namespace) -> dict:
    """In the worker process: load the models, then learn K classes for two shared steps."""
    from augment.labels import match_to_guide
    from augment.learn.learner import TokenLearner
    from augment.models.generator import load_generator, resolve_device
    from augment.models.guides import load_guide

    size = args.worker
    cfg = toy_config(args, learn=learn_overrides(args, size))
    device = resolve_device(args.device)
    labels = read_labels(args.labels, size)
    guide = load_guide(cfg.guide, device)
    pipe = load_generator(cfg.generator, device, cfg.dtype)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        learner = TokenLearner(pipe, guide, labels, match_to_guide(labels, guide.labels).indices, cfg.learn, tmp)
        if cuda:
            torch.cuda.synchronize(device)
            base, loading_peak = torch.cuda.memory_allocated(device), 0
            torch.cuda.reset_peak_memory_stats(device)
        else:
            base, loading_peak = rss_bytes(), max_rss_bytes()
        ends = [time.perf_counter()]
        learner.run(list(labels.classes), lambda _: ends.append(time.perf_counter()))
        if cuda:
            torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) if cuda else max_rss_bytes()
    return {
        "classes_per_step": size,
        "images_per_step": size * cfg.learn.batch_size,
        "base_mb": base / MB,
        "peak_mb": peak / MB,
        "step_mb": (peak - base) / MB,
        "bounded_by_loading": (not cuda) and peak <= loading_peak,
        "first_step_s": ends[1] - ends[0],
        "step_s": ends[-1] - ends[-2],
        "measure": "cuda max_memory_allocated" if cuda else "ru_maxrss - rss after loading",
    }


def run_worker(args: argparse.Namespace, size: int) -> dict:
    """Measure one size in a fresh interpreter (a process's peak memory can only go up)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(size),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--preset",
        args.preset,
        "--labels",
        str(args.labels),
    ]
    cmd += ["--quick"] * args.quick + ["--gradient-checkpointing"] * args.gradient_checkpointing
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--steps", args.steps),
        ("--objective", args.objective),
        ("--dtype", args.dtype),
    ):
        if value:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"worker for size {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    env = setup(args)
    if args.worker is not None:
        print(json.dumps(measure(args)))
        return None
    sizes = [int(s) for s in (args.sizes or ("1,2" if args.quick else "1,2,5,10")).split(",")]
    if sizes[0] != 1:
        sizes = [1] + sizes  # the ratios are to size 1
    cfg = toy_config(args, learn=learn_overrides(args, 1))
    print_environment(env)
    print(
        f"one learner step: {cfg.learn.batch_size} images per class, {cfg.learn.num_inference_steps} denoising "
        f"steps ({cfg.learn.grad_steps} with gradient, objective {cfg.learn.objective}), gradient checkpointing "
        f"{'on' if cfg.learn.gradient_checkpointing else 'off'}"
    )
    rows_data = []
    for size in sizes:
        rows_data.append(run_worker(args, size))
        print(
            f"  {size} classes per step: {rows_data[-1]['step_mb']:.0f} MB, {rows_data[-1]['step_s']:.2f} s", flush=True
        )
    one = rows_data[0]
    rows = [
        [
            r["classes_per_step"],
            r["images_per_step"],
            ("≤ " if r["bounded_by_loading"] else "") + f"{r['step_mb']:.0f}",
            r["step_mb"] / one["step_mb"],
            round(r["step_s"], 2),
            r["step_s"] / one["step_s"],
            r["classes_per_step"] * one["step_s"] / r["step_s"],
        ]
        for r in rows_data
    ]
    print(
        markdown_table(
            [
                "classes/step",
                "images/step",
                "step memory MB",
                "memory × size 1",
                "step s",
                "time × size 1",
                "throughput × size 1",
            ],
            rows,
        )
    )
    print(f"\nmemory: {one['measure']}; models loaded: {one['base_mb']:.0f} MB; time: the second of two steps")
    results = {
        "benchmark": "memory",
        "quick": args.quick,
        "environment": env,
        "learn": {
            "batch_size": cfg.learn.batch_size,
            "num_inference_steps": cfg.learn.num_inference_steps,
            "gradient_checkpointing": cfg.learn.gradient_checkpointing,
        },
        "sizes": rows_data,
    }
    save_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
