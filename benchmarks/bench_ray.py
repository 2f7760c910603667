"""One machine, three ways to run `augment generate`: one process, `--engine ray` with 1 and 2 actors, OUT on a
local disk and in an S3 bucket, side by side in one run (issue 33).

Each row is its own `augment generate --preset toy --no-tokens` process (the toy world's 10 classes) into a fresh
OUT; the Ray rows join one local cluster started here (augment.testing.ray_cluster: `ray start --head` on
127.0.0.1, 2 CPUs), the bucket rows write to a real S3 endpoint on 127.0.0.1 (moto, augment.testing.s3). Every
process runs torch with one thread (OMP_NUM_THREADS=1, as Ray gives a one-CPU actor), so one process and one
actor do the same arithmetic and the shards are compared byte for byte. Peak memory is the largest sum, sampled
every 0.2 s, of the resident memory of the command and of every Ray worker process (`ray::*`).

    python benchmarks/bench_ray.py --images-per-class 40 --out runs/bench/ray.json

On 2 cores the 2-actor row is bounded by the cores (the driver and the cluster's own processes share them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from augment.testing.ray_cluster import local_ray_cluster  # noqa: E402
from augment.testing.s3 import moto_server  # noqa: E402


def rss_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def ray_pids() -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::"):
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def run(cmd: list[str], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], rss_mb({proc.pid} | ray_pids()))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak[0]), "stdout": out.strip()}


def shards(out: str, s3) -> dict[str, bytes]:
    if out.startswith("s3://"):
        return {k: v for k, v in s3.objects(out.split("/", 3)[3]).items() if k.endswith(".tar")}
    return {f"shards/{p.name}": p.read_bytes() for p in sorted(Path(out, "shards").glob("*.tar"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images-per-class", type=int, default=40)
    p.add_argument("--shard-size", type=int, default=20)
    p.add_argument("--out", type=Path, help="write the table as JSON here")
    args = p.parse_args()
    images = 10 * args.images_per_class
    base = [sys.executable, "-m", "augment.cli", "generate", "--preset", "toy", "--labels",
            str(REPO / "manifests" / "fashion-mnist.txt"), "--no-tokens", "--images-per-class",
            str(args.images_per_class), "--shard-size", str(args.shard_size), "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp, moto_server() as s3:
        env_s3 = {**env, **s3.env}
        with local_ray_cluster(num_cpus=2, env={**env_s3}) as cluster:
            env_ray = {**env_s3, **cluster.env}
            ray = ["--engine", "ray", "--ray-address", cluster.address]
            plan = [
                ("one process, local OUT", f"{tmp}/local", [], env),
                ("one process, s3:// OUT", f"s3://{s3.bucket}/local", [], env_s3),
                ("ray, 1 actor, local OUT", f"{tmp}/ray1", [*ray, "--ray-workers", "1"], env_ray),
                ("ray, 2 actors, local OUT", f"{tmp}/ray2", [*ray, "--ray-workers", "2"], env_ray),
                ("ray, 2 actors, s3:// OUT", f"s3://{s3.bucket}/ray2", [*ray, "--ray-workers", "2"], env_ray),
            ]
            reference = None
            for name, out, extra, run_env in plan:
                r = run([*base, "--out", out, *extra], run_env)
                got = shards(out, s3)
                reference = reference if reference is not None else got
                actors = 2 if "2 actors" in name else 1
                row = {"run": name, **r, "images_per_s": round(images / r["seconds"], 2),
                       "per_worker": round(images / r["seconds"] / actors, 2), "same_bytes": got == reference}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    one = rows[0]["seconds"]
    print(f"\n{images} toy images (10 classes), one torch thread per process or actor")
    print("| run | wall s | img/s | img/s per worker | × one process | peak RSS MiB | same shards |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['seconds']} | {r['images_per_s']} | {r['per_worker']} | "
              f"{one / r['seconds']:.2f} | {r['peak_rss_mib']} | {r['same_bytes']} |")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
