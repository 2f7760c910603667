"""The benchmark scripts refuse bad options the way the CLI does: one line on stderr, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "script, option, message",
    [
        ("research/probe_vae.py", ["--dtype", "fp64"], "unknown dtype 'fp64'"),
        ("benchmarks/bench_learner.py", ["--device", "tpu9"], "unknown device 'tpu9'"),
    ],
)
def test_benchmark_bad_option_is_one_line_and_exit_2(script, option, message):
    r = subprocess.run(
        [sys.executable, str(ROOT / script), "--threads", "1", *option],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{Path(script).name}: ") and message in lines[0]
    assert "Traceback" not in r.stderr
