"""Per-class bookkeeping at 200 and 1000 classes: everything a run does per class besides the GPU work.

No model runs: each class gets a stand-in token vector and a one-image shard (a 512-px JPEG), and the real
functions do the rest, in the order a build does them: the label set, the learner's token files and its
pending scan, per-unit shard writing with the manifest refreshed as `augment generate`
does it (every MANIFEST_EVERY seconds; `--manifest-every-unit`: after every unit, as before), `_info.json`, the
dataset card with its class grids, `augment verify`.

    python benchmarks/bench_overheads.py --classes 200 1000

Prints seconds per phase and milliseconds per class; compare with the GPU work per class (learning a token:
minutes; 100 images at 512 px: tens of seconds).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np


def jpeg(size: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)  # smooth-ish, compresses like a photo
    img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def measure(n: int, root: Path, size: int, every: float | None) -> dict[str, float]:
    import torch

    from augment.data import shards
    from augment.data.card import write_card
    from augment.data.tokens_io import is_learned, save_token
    from augment.data.verify import verify_run
    from augment.labels import read_label_set
    from augment.run.manifest import update_manifest

    times: dict[str, float] = {}

    def phase(name: str, t0: float) -> float:
        times[name] = time.perf_counter() - t0
        return time.perf_counter()

    out = root / f"run{n}"
    path = root / f"labels{n}.txt"
    path.write_text("".join(f"{i}\tclass number {i}\n" for i in range(n)))
    t = time.perf_counter()
    labels = read_label_set(path)
    t = phase("label set", t)
    pending = [c for c in labels.classes if not is_learned(out, c)]
    t = phase("learn: pending scan", t)
    for c in pending:
        save_token(
            out, c, labels.token(c), torch.randn(768), {"class": c.name, "token": labels.token(c), "history": [{}] * 20}
        )
    t = phase("learn: token files", t)
    units = shards.plan_units(range(n), 1, 1)
    chash = "bench"
    image = jpeg(size, 0)
    done: dict[str, dict] = {}
    t = phase("plan units", t)
    write_s = manifest_s = last = 0.0
    for u in units:
        t1 = time.perf_counter()
        ((position, index),) = u.samples
        sample = shards.encode_sample(position, index, image, "jpg", {"class": labels.classes[position].name})
        m = shards.write_unit(out, labels.name, u, [sample], chash)
        t2 = time.perf_counter()
        done[m["unit"]] = m
        if every is None or t2 - last >= every or u is units[-1]:  # as `augment generate` records progress
            last = t2
            update_manifest(
                out,
                "generate",
                {
                    "labels": labels.names(),
                    "config_hash": chash,
                    "shards": {k: {"sha256": v["sha256"], "count": v["count"]} for k, v in sorted(done.items())},
                },
            )
        write_s += t2 - t1
        manifest_s += time.perf_counter() - t2
    times["generate: write units (1 image each)"] = write_s
    times["generate: manifest updates"] = manifest_s
    t = time.perf_counter()
    assert all(shards.unit_done(out, labels.name, u, chash) for u in units)
    t = phase("generate: done scan", t)
    shards.write_info(out, labels.name, units)
    t = phase("_info.json", t)
    write_card(out, labels, {"generator": "bench", "tokens": str(out)})
    t = phase("dataset card + class grids", t)
    report = verify_run(out)
    phase("augment verify", t)
    assert not report.problems, report.problems[:3]
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument(
        "--manifest-every-unit",
        action="store_true",
        help="rewrite the manifest after every unit (before: O(units²)) instead of every "
        "MANIFEST_EVERY seconds as generate does now",
    )
    args = ap.parse_args()
    from augment.jobs.generate import MANIFEST_EVERY as every
    from augment.run.manifest import versions

    versions()  # imports diffusers and transformers once, outside the timings (the manifest records versions)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.classes:
            results[n] = measure(n, Path(tmp), args.image_size, None if args.manifest_every_unit else every)
    names = list(results[args.classes[0]])
    print("| phase | " + " | ".join(f"{n} classes: s (ms/class)" for n in args.classes) + " |")
    print("|---|" + "---|" * len(args.classes))
    for name in names + ["total"]:
        cells = []
        for n in args.classes:
            s = sum(results[n].values()) if name == "total" else results[n][name]
            cells.append(f"{s:.2f} ({1000 * s / n:.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
