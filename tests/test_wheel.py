"""The package as a user installs it: a wheel, outside this checkout."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_presets_and_toy_weights_and_runs_outside_the_checkout(tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = wheel_dir.glob("augment-*.whl")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    for shipped in (
        "presets/sd14-cub-original.yaml",
        "toy/weights/generator/model_index.json",
        "toy/weights/guide/model.safetensors",
        "testing/sd_configs/sd14.json",
        "presets/sdxl-base.yaml",
        "testing/hub/sdxl-base-1.0/unet/config.json",  # the hub's files: --plan and the refusals read them
        "testing/hub/sdxl-base-1.0/tokenizer_2/tokenizer_config.json",
    ):
        assert (site / "augment" / shipped).is_file(), shipped
    labels = tmp_path / "fm.txt"
    labels.write_text((REPO / "manifests" / "fashion-mnist.txt").read_text())
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = (
        "import sys, augment.config, augment.cli; assert augment.config.__file__.startswith(sys.argv[1]); "
        "sys.exit(augment.cli.main(['build', '--preset', 'toy', '--labels', sys.argv[2], '--out', sys.argv[3],"
        " '--dry-run']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(site), str(labels), str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "learn: 10 classes, 10 pending" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from augment.testing import architecture_config; "
            "print(architecture_config('sd21')['scheduler']['prediction_type'])",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.stdout.strip() == "v_prediction", r.stderr
