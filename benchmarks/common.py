"""Shared pieces of the benchmark scripts: common options, the environment record, tables, the toy world.

Benchmarks measure speed and memory side by side in one run and report ratios; they are never timed
assertions in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TOY_LABELS = ROOT / "manifests" / "fashion-mnist.txt"


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test that ends in under a minute")
    p.add_argument("--out", type=Path, help="also save the results as JSON here")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores, %(default)s here)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ... (default: auto)")
    p.add_argument("--dtype", help="fp32, bf16, fp16 (default: the preset's; auto = fp32 on CPU, bf16 or fp16 on CUDA)")
    p.add_argument("--preset", default="toy", help="augment preset (default: toy)")
    p.add_argument("--labels", type=Path, default=TOY_LABELS, help="label set (default: Fashion-MNIST)")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Apply --threads and return the environment record printed and saved with every result. A bad
    --preset, --device or --dtype ends the script with one line on stderr and exit code 2."""
    from augment.errors import UserError

    torch.set_num_threads(args.threads)
    try:
        return environment(args.device, toy_config(args).dtype)
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def environment(device: str, dtype: str = "auto") -> dict[str, Any]:
    import diffusers
    import transformers

    from augment.models.generator import resolve_device, resolve_dtype

    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(dev),
        "device_name": name,
        "dtype": str(resolve_dtype(dtype, dev)).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def print_environment(env: dict[str, Any]) -> None:
    load = f"; load average {env['load_average'][0]:.2f}" if env.get("load_average") else ""
    print(
        f"torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}; "
        f"device {env['device']} ({env['device_name']}), {env.get('dtype', '?')}, "
        f"{env['threads']} threads of {env['cpu_count']} cores" + load
    )


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A small GitHub markdown table; floats get 3 significant digits, whole numbers from 1000 on."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_results(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results saved to {path}")


def toy_config(args: argparse.Namespace, learn: dict[str, Any] | None = None, generate: dict[str, Any] | None = None):
    """The preset's RunConfig with the device forced to --device and some learn/generate fields replaced."""
    from augment.config import load_config

    cfg = load_config(args.preset, None, {"device": args.device, **({"dtype": args.dtype} if args.dtype else {})})
    return replace(cfg, learn=replace(cfg.learn, **(learn or {})), generate=replace(cfg.generate, **(generate or {})))


def read_labels(path: Path, count: int | None = None):
    """The label set, cut to its first `count` classes (positions and token names unchanged)."""
    from augment.labels import LabelSet, read_label_set

    labels = read_label_set(path)
    if count is None:
        return labels
    if not 1 <= count <= len(labels):
        raise SystemExit(f"--classes must be in 1..{len(labels)}")
    return LabelSet(labels.path, labels.name, labels.classes[:count])


def heldout_probe_setup(args: argparse.Namespace):
    """For the probes that score a toy pipeline with the held-out classifier: applies --threads, prints the
    environment, and returns (environment, config, generator spec: --generator or the preset's, the pipeline
    in fp32, the held-out classifier)."""
    from augment.models.generator import load_generator
    from augment.models.guides import load_guide

    env = setup(args)
    print_environment(env)
    cfg = toy_config(args)
    generator = args.generator or cfg.generator
    pipe = load_generator(generator, cfg.device, "fp32")
    return env, cfg, generator, pipe, load_guide(cfg.eval_classifier, pipe.device)


def probe_setup(cfg, args: argparse.Namespace):
    """For the probes: the label set, its classes named in `args.classes` (comma-separated; only the first with
    --quick), the preset's generator in fp32, its guide, and every class's guide index."""
    from augment.labels import match_to_guide, read_label_set
    from augment.models.generator import load_generator
    from augment.models.guides import load_guide

    labels = read_label_set(args.labels)
    wanted = [n.strip() for n in args.classes.split(",")]
    classes = [c for c in labels.classes if c.name in wanted][: 1 if args.quick else None]
    pipe = load_generator(cfg.generator, cfg.device, "fp32")
    guide = load_guide(cfg.guide, pipe.device)
    return labels, classes, pipe, guide, match_to_guide(labels, guide.labels).indices


def top1(classifier, images: np.ndarray, targets: list[int], batch: int = 100) -> float:
    """Top-1 accuracy in % of `classifier` (an augment Guide) on N×H×W×3 images in [0, 1], as quantised in
    shards (8 bits)."""
    device = next(classifier.parameters()).device
    images = np.round(np.clip(images, 0, 1) * 255) / 255
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).float().permute(0, 3, 1, 2).to(device)
            pred = classifier(x).argmax(1).cpu()
            correct += int((pred == torch.tensor(targets[i : i + batch])).sum())
    return 100.0 * correct / max(len(images), 1)
