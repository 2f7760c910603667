"""A real local Ray cluster for the tests and benchmarks: `ray start --head` as its own processes, its node bound
to 127.0.0.1, no dashboard, usage stats off, its own temporary directory; reached by address exactly as a
user's cluster is (`--ray-address` or RAY_ADDRESS). Every wait is bounded; `ray stop --force` in teardown stops
every Ray process of this machine (the tests run one cluster at a time, and nothing else runs Ray here)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from augment.run.engine import LOOPBACK
from augment.testing.s3 import _free_port


@dataclass
class RayCluster:
    address: str  # 127.0.0.1:PORT (the GCS)
    temp_dir: str
    env: dict[str, str]  # what a driver needs to join it: loopback, its token, no usage stats

    def worker_pids(self, name: str) -> list[int]:
        """The processes of this machine whose title is Ray's for a task or actor method `name` running now
        (Ray titles a worker "ray::<name>" while it executes it)."""
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith(f"ray::{name}"):
                pids.append(int(d.name))
        return pids


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]


@contextmanager
def local_ray_cluster(num_cpus: int = 2, env: dict[str, str] | None = None, timeout: float = 120.0):
    """A head node on 127.0.0.1 with `num_cpus` CPUs; `env`: extra variables its workers see (e.g. an S3
    endpoint: each node reads its own credentials, as on a real cluster)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    joined = {
        **LOOPBACK,
        "RAY_AUTH_MODE": "token",  # Ray's default for a new cluster, with this cluster's own token (not ~/.ray's)
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    run_env = {**os.environ, **(env or {}), **joined}
    run_env.pop("RAY_ADDRESS", None)
    start = [*_ray_cli(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", str(num_cpus), "--num-gpus", "0", "--include-dashboard", "false",
             "--disable-usage-stats", "--temp-dir", temp]  # fmt: skip
    try:
        r = subprocess.run(start, env=run_env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ray start failed ({r.returncode}): {r.stderr[-2000:]}")
        yield RayCluster(f"127.0.0.1:{port}", temp, joined)
    finally:
        subprocess.run([*_ray_cli(), "stop", "--force"], env=run_env, capture_output=True, timeout=timeout)
        deadline = time.time() + 30
        while time.time() < deadline and RayCluster("", temp, {}).worker_pids(""):
            time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)
