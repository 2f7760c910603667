"""OUT on a local disk vs in an S3 bucket: the same `augment build`, side by side, wall time and peak memory.

The bucket is a real S3 endpoint on 127.0.0.1 (moto's server, augment.testing.s3) reached through s3fs, as a
user's bucket is: every shard, marker, token and checkpoint goes up as one PUT. moto keeps objects in its own
process's memory on the same cores, so this measures what the storage seam costs augment (requests, no local
rename, the PUTs' serialisation), not a cloud store's latency or bandwidth. Each build runs as its own process
(`python -m augment.cli build ...`); the peak memory is that process's (ru_maxrss):

    python benchmarks/bench_storage.py                 # the README's toy build: 10 classes x 100 images
    python benchmarks/bench_storage.py --quick         # 3 classes x 4 images, for a smoke test

Prints one JSON object: per target, seconds, peak RSS in GiB, images per second of the generate stage (its
summary line), and whether the two outputs hold the same token and shard bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
from _root import ROOT

from augment.testing.s3 import moto_server


def build(out: str, labels: Path, extra: list[str], env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "augment.cli", "build", "--preset", "toy", "--labels", str(labels), "--out", out,
           "--no-progress", *extra]  # fmt: skip
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_storage.py: build into {out} failed: {stderr.strip().splitlines()[-1:]}")
    rate = re.search(r"\(([\d.]+) img/s\)", stdout)
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 1024**2, 2),
            "generate_img_per_s": float(rate.group(1)) if rate else None}  # fmt: skip


def outputs(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.endswith((".safetensors", ".tar")) or k.startswith("shards/")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 classes x 4 images (a smoke test of a minute)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of each build")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    if args.threads < 1:
        print("bench_storage.py: --threads must be >= 1", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        labels, extra = ROOT / "manifests" / "fashion-mnist.txt", []
        if args.quick:
            labels = Path(tmp) / "fm3.txt"
            labels.write_text("0\tt-shirt\n2\tpullover\n4\tcoat\n")
            extra = ["--max-steps", "3", "--images-per-class", "4", "--shard-size", "2"]
        with moto_server(bucket="bench") as s3:
            result = {"build": "toy" + (" --quick" if args.quick else ""), "threads": args.threads,
                      "cpu": os.cpu_count()}  # fmt: skip
            result["local"] = build(str(Path(tmp) / "run"), labels, extra, env)
            result["s3"] = build("s3://bench/run", labels, extra, {**env, **s3.env})
            local = {str(f.relative_to(Path(tmp) / "run")): f.read_bytes()
                     for f in (Path(tmp) / "run").rglob("*") if f.is_file()}  # fmt: skip
            result["same_bytes"] = outputs(local) == outputs(s3.objects("run"))
            result["s3_over_local_seconds"] = round(result["s3"]["seconds"] / result["local"]["seconds"], 3)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
