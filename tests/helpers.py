"""Helpers shared by the test modules: running the CLI as a process, and reading a run's output bytes."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# `downstream` training options for a classifier that trains in a second on CPU (tiny ResNet, 16 px, 2 steps)
TINY_CLASSIFIER = ["--model", "resnet18", "--model-kwargs", '{"channels": [8, 8, 16, 16], "stem_width": 8}',
                   "--no-pretrained", "--image-size", "16", "--steps", "2", "--batch-size", "4", "--device", "cpu",
                   "--no-progress"]  # fmt: skip
CLI = [sys.executable, "-c", "import sys; from augment.cli import main; sys.exit(main(sys.argv[1:]))"]


def build_cmd(labels, out, *extra) -> list[str]:
    """A small toy build: 3 classes, 2 per learner step (so the queue matters), 5 steps at most."""
    return [
        *CLI,
        "build",
        "--preset",
        "toy",
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--learn-batch-size",
        "2",
        "--classes-per-step",
        "2",
        "--max-steps",
        "5",
        "--images-per-class",
        "4",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        *extra,
    ]


def token_bytes(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((out / "tokens").glob("*/learned_embeds.safetensors"))}


def tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} over every shard; fails on a duplicate key."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted((out / "shards").glob("*.tar")):
        seen = set()
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if key not in seen:
                    assert key not in samples, f"duplicate key {key}"
                    seen.add(key)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples
