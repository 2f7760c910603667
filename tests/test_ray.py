"""`--engine ray` (augment.run.engine) on a real local Ray cluster (`ray start --head` on 127.0.0.1,
augment.testing.ray_cluster): the same bytes as one process, with a learning task and a generation actor
killed mid-unit, and into a bucket; bad engine input is one line, exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from augment.cli import main
from tests.helpers import CLI, ENV, REPO, build_cmd, tar_samples, token_bytes

pytest.importorskip("ray")


def ray_env(cluster) -> dict[str, str]:
    return {**ENV, **cluster.env}


def wait_for(what, deadline: float, proc) -> None:
    while not what() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)


def kill_one(cluster, name: str) -> int | None:
    """SIGKILL one worker process running task or actor method `name` now (None if none runs)."""
    for pid in cluster.worker_pids(name):
        os.kill(pid, signal.SIGKILL)
        return pid
    return None


def test_a_ray_build_with_workers_killed_mid_unit_gives_the_one_process_bytes(
    labels3, one_process_build, ray_cluster, tmp_path
):
    """Three groups of one class (one class per learner step, as the reference) as Ray tasks on two workers:
    one task is killed once its group's checkpoint exists (the retry resumes from it), one generation actor is
    killed mid-unit (restarted, its unit redone). Tokens and shards are the one-process bytes; nothing is left."""
    out = tmp_path / "ray"
    cmd = build_cmd(labels3, out, "--classes-per-step", "1", "--group-size", "1", "--engine", "ray",
                    "--ray-address", ray_cluster.address, "--ray-workers", "2")  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=ray_env(ray_cluster), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 600
        killed = {}
        wait_for(lambda: any((out / "checkpoints").glob("learn-g*.json")), deadline, proc)
        killed["learn"] = kill_one(ray_cluster, "_learn_group_task")
        wait_for(lambda: any((out / "shards").glob("*.json")) and ray_cluster.worker_pids("UnitActor.run"),
                 deadline, proc)  # fmt: skip
        killed["generate"] = kill_one(ray_cluster, "UnitActor.run")
        stdout, stderr = proc.communicate(timeout=max(deadline - time.time(), 1))
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert killed["learn"] and killed["generate"], (killed, stderr[-2000:])
    assert token_bytes(out) == token_bytes(one_process_build) and len(token_bytes(out)) == 3
    assert tar_samples(out) == tar_samples(one_process_build) and len(tar_samples(out)) == 12
    assert not list(out.rglob("*.tmp")) and not (out / "checkpoints").exists()
    assert (out / "_info.json").is_file() and (out / "README.md").is_file()
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generate"]["engine"] == "ray" and len(manifest["generate"]["shards"]) == 6
    counted = manifest["workers"]["generate"]["0of1"]["unet_evaluations"]  # the actors' counts, summed
    assert counted["done"] == counted["planned"] == counted["images"] * counted["per_image"] > 0
    assert "generated 12 images in 6 shard(s)" in stdout


def test_ray_generation_into_a_bucket_gives_the_one_process_shards(s3, one_process_build, labels3, ray_cluster):
    """Actors on the cluster write the shards into the bucket (each node reaches it with its own AWS
    variables), with the tokens of the one-process build: the same shard bytes."""
    url = f"s3://{s3.bucket}/ray-gen"
    cmd = [*CLI, "generate", "--preset", "toy", "--labels", str(labels3), "--tokens", str(one_process_build),
           "--out", url, "--images-per-class", "4", "--shard-size", "2", "--batch-size", "2", "--no-progress",
           "--engine", "ray", "--ray-address", ray_cluster.address]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env={**ray_env(ray_cluster), **s3.env}, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    objects = s3.objects("ray-gen")
    local = {str(p.relative_to(one_process_build)): p.read_bytes() for p in (one_process_build / "shards").iterdir()}
    assert {k: v for k, v in objects.items() if k.endswith(".tar")} == {
        k: v for k, v in local.items() if k.endswith(".tar")
    }
    assert not [k for k in objects if ".tmp" in k]


def test_engine_input_is_one_line_and_exit_2(labels3, tmp_path, capsys, monkeypatch):
    base = ["generate", "--preset", "toy", "--labels", str(labels3), "--no-tokens", "--no-progress"]
    cases = [
        (["--engine", "ray", "--ray-address", "127.0.0.1:1"], "the Ray cluster at 127.0.0.1:1 does not answer"),
        (["--engine", "ray", "--ray-address", "nowhere"], "the Ray address must be host:port"),
        (["--engine", "ray", "--num-workers", "2"], "drop --worker-index/--num-workers"),
        (["--ray-workers", "2"], "--ray-workers needs --engine ray"),
        (["--engine", "ray", "--ray-gpus", "-1"], "--ray-gpus must be ≥ 0"),
        (["--claim"], "claim mode (--claim, --lease) was retired"),
        (["--engine", "spark"], "invalid choice: 'spark'"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"o{i}"
        assert main([*base, "--out", str(out), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
        assert not out.exists(), extra
    monkeypatch.setitem(sys.modules, "ray", None)  # the extra not installed
    assert main([*base, "--out", str(tmp_path / "x"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'augment[ray]'" in err[0]


def test_the_fewshot_grid_on_ray_gives_the_cells_of_one_process(ray_cluster, tmp_path):
    """`downstream fewshot --engine ray`: every cell a Ray task on the cluster; each cell's record (accuracy,
    steps, images) is the one a one-thread process computes."""
    import json

    from downstream.cli import main as downstream
    from tests.helpers import TINY_CLASSIFIER as TINY
    from tests.test_downstream import make_cub, make_synthetic, write_labels

    cub, labels = make_cub(tmp_path / "data"), write_labels(tmp_path / "labels.txt")
    syn = make_synthetic(tmp_path / "syn", per_class=2)
    argv = ["fewshot", "--dataset", f"cub:{cub}", "--labels", str(labels), "--synthetic", f"tokens={syn}",
            "--shots", "0,2", "--trials", "2", *TINY]  # fmt: skip
    assert downstream([*argv, "--out", str(tmp_path / "one")]) == 0
    driver = [sys.executable, "-c", "import sys; from downstream.cli import main; sys.exit(main(sys.argv[1:]))"]
    cmd = [*driver, *argv, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", ray_cluster.address,
           "--ray-workers", "2"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env=ray_env(ray_cluster), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    def cells(out):
        keep = ("set", "shots", "trial", "top1", "top5", "steps", "train_images", "trained", "config_hash")
        return {p.name: {k: json.loads(p.read_text()).get(k) for k in keep} for p in (out / "cells").iterdir()}

    one, ray = cells(tmp_path / "one"), cells(tmp_path / "ray")
    assert len(one) == 8 and ray == one  # {real, tokens} × {0, 2} shots × 2 trials
    summary = lambda out: json.loads((out / "results.json").read_text())["summary"]  # noqa: E731
    assert summary(tmp_path / "ray") == summary(tmp_path / "one")


def test_a_unit_whose_worker_dies_past_retries_stops_with_one_line_and_a_rerun_completes(
    labels3, one_process_build, ray_cluster, tmp_path
):
    """--retries 0: the first generation actor killed mid-unit ends the run with one line and exit 1, finished
    shards kept; the same command then completes with the one-process bytes."""
    out = tmp_path / "ray"
    cmd = [*CLI, "generate", "--preset", "toy", "--labels", str(labels3), "--tokens", str(one_process_build),
           "--out", str(out), "--images-per-class", "4", "--shard-size", "2", "--batch-size", "2", "--no-progress",
           "--engine", "ray", "--ray-address", ray_cluster.address]  # fmt: skip
    proc = subprocess.Popen([*cmd, "--retries", "0"], cwd=REPO, env=ray_env(ray_cluster), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: ray_cluster.worker_pids("UnitActor.run"), time.time() + 300, proc)
        killed = kill_one(ray_cluster, "UnitActor.run")
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert killed and proc.returncode == 1, stderr[-3000:]
    lines = [x for x in stderr.splitlines() if x.startswith("augment:")]
    assert len(lines) == 1 and "Ray gave up" in lines[0] and "rerun the same command" in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    r = subprocess.run(cmd, cwd=REPO, env=ray_env(ray_cluster), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert tar_samples(out) == tar_samples(one_process_build) and not list(out.rglob("*.tmp"))


def test_a_token_an_actor_refuses_is_one_line_exit_2(labels3, one_process_build, ray_cluster, tmp_path):
    """The actors load the models: a token learned on another text encoder is refused there, and the driver
    shows it as the one-process run does (one line, exit 2), with no shard written."""
    import json
    import shutil

    tokens = tmp_path / "tokens"
    shutil.copytree(one_process_build / "tokens", tokens / "tokens")
    for meta in tokens.glob("tokens/*/meta.json"):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "text_encoder": "0123456789abcdef"}))
    out = tmp_path / "out"
    cmd = [*CLI, "generate", "--preset", "toy", "--labels", str(labels3), "--tokens", str(tokens), "--out", str(out),
           "--images-per-class", "2", "--no-progress", "--engine", "ray", "--ray-address", ray_cluster.address]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env=ray_env(ray_cluster), capture_output=True, text=True, timeout=600)
    lines = [x for x in r.stderr.splitlines() if x.startswith("augment:")]
    assert r.returncode == 2 and len(lines) == 1 and "augment: error:" in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not list(out.rglob("*.tar"))
