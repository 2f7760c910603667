"""The benchmark scripts refuse bad options the way the CLI does: one line on stderr, exit code 2; the GPU check
runs end to end in its quick mode on the CPU."""

import json
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
        ("benchmarks/gpu_check.py", ["--device", "tpu9"], "unknown device 'tpu9'"),
        ("benchmarks/bench_storage.py", ["--threads", "0"], "--threads must be >= 1"),
        ("benchmarks/bench_cpu_dtypes.py", ["--seconds", "0"], "--seconds must be > 0"),
        ("benchmarks/bench_lora.py", ["--steps", "0"], "--steps must be >= 1"),
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


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_check_quick_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --quick: every part (plain and augment generation, DATE, learner steps) on the
    full-size SD-1.4 architecture at 64 px, one JSON file with the figures; CPU memory is null (about 2 min)."""
    out = tmp_path / "gc.json"
    cmd = ["--quick", "--device", "cpu", "--threads", "1", "--classes", "1", "--out", str(out)]
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), *cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["environment"]["device"] == "cpu" and res["settings"]["size"] == 64
    assert len(res["generation"]) == 4 and res["compile"] is None  # plain, augment at 0.5, at 1.0, cached
    assert (
        res["generation"]["augment (cutoff 0.5, cache interval 3)"]["shallow_per_image"] == 3
    )  # calls 1 (guided: 2 rows) and 2
    assert res["learner_cached"]["seconds"] > 0
    for row in res["generation"].values():
        assert row["seconds"] > 0 and row["images_per_s"] > 0 and row["peak_bytes"] is None
    assert res["generation"]["augment (cutoff 0.5: the preset)"]["unet_evals_per_image"] == 5  # 3 calls, 2 guided
    assert res["date"]["seconds"] > 0 and res["date"]["options"]["step_size"] == 1.0
    (step,) = res["learner"]
    assert step["classes"] == 1 and step["peak_bytes"] is None and step["estimate_bytes"] > res["weights_bytes"] > 0
    assert "| plain (diffusers, full guidance) |" in r.stdout
