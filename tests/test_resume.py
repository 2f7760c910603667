"""Resumable token learning (augment.learn.resume): kill -9 at any moment, rerun, and get the same bytes."""

import contextlib
import json
import random
import signal
import subprocess
import sys
import time

import pytest

from augment.cli import main
from tests.helpers import ENV, REPO, build_cmd, tar_samples, token_bytes

# the README's torchrun line at two processes, to which `augment build`'s arguments are appended
TORCHRUN_2 = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
    "-m",
    "augment.cli",
]


@pytest.fixture(scope="module")
def uninterrupted(labels3, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(build_cmd(labels3, out)[3:]) == 0  # in-process: the killed runs below are real processes
    return out


def test_kill_9_during_learning_and_generation_gives_the_uninterrupted_bytes(labels3, uninterrupted, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(1)
    ckpt = out / "checkpoints"
    # wait for: a learner checkpoint, a checkpoint again (later step), a finished token, a shard marker
    moments = [
        lambda: ckpt.is_dir() and any(ckpt.glob("*.json")),
        lambda: ckpt.is_dir() and any(ckpt.glob("*.json")),
        lambda: any((out / "tokens").glob("*/meta.json")) if (out / "tokens").is_dir() else False,
        lambda: any(out.glob("shards/*.json")),
    ]
    killed_in = []
    for ready in moments:
        proc = subprocess.Popen(
            build_cmd(labels3, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 300
        while proc.poll() is None and not ready() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_in.append("generation" if any(out.glob("shards/*.json")) else "learning")
        proc.wait()
    assert killed_in.count("learning") >= 2, killed_in
    r = subprocess.run(build_cmd(labels3, out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert token_bytes(out) == token_bytes(uninterrupted) and len(token_bytes(out)) == 3
    assert tar_samples(out) == tar_samples(uninterrupted)  # fails on a duplicate key too
    assert not list(out.rglob("*.tmp")) and not ckpt.exists()
    for slug in token_bytes(out):  # the same learning, step for step
        a = json.loads((out / "tokens" / slug / "meta.json").read_text())
        b = json.loads((uninterrupted / "tokens" / slug / "meta.json").read_text())
        assert a["history"] == b["history"] and a["stop_reason"] == b["stop_reason"]


@contextlib.contextmanager
def interrupted_after_one_step():
    """The learner stops (KeyboardInterrupt: exit 130) after its first step and that step's checkpoint."""
    import augment.learn.learner as tokens

    original_step, calls = tokens.TokenLearner.step, []

    def step_then_die(self, active):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original_step(self, active)

    tokens.TokenLearner.step = step_then_die
    try:
        yield
    finally:
        tokens.TokenLearner.step = original_step


def learn_args(labels, out, *extra):
    return [
        "learn",
        "--preset",
        "toy",
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--classes-per-step",
        "2",
        "--max-steps",
        "2",
        "--no-progress",
        *extra,
    ]


def test_the_checkpoint_is_json_and_safetensors_and_restores_the_learner(labels3, tmp_path, capsys):
    """Stop after one learner step (checkpoint written, no class done), then continue: the same tokens as
    an uninterrupted run; the checkpoint holds only JSON and safetensors (nothing to unpickle)."""
    from safetensors.torch import load_file

    ref = tmp_path / "ref"
    assert main(learn_args(labels3, ref)) == 0
    out = tmp_path / "run"
    with interrupted_after_one_step():
        assert main(learn_args(labels3, out)) == 130
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert files == ["learn-g0-1.safetensors", "learn-g0.json"]
    state = json.loads((out / "checkpoints" / "learn-g0.json").read_text())
    assert [e["step"] for e in state["active"]] == [1, 1] and state["queue"] == [2] and state["group"] == 0
    assert set(load_file(str(out / "checkpoints" / files[0]))) == {
        f"{p}.{k}"
        for p in (0, 1)
        for k in ("embedding", "exp_avg", "exp_avg_sq", "best")  # best: the kept snapshot
    }
    assert main(learn_args(labels3, out)) == 0
    assert token_bytes(out) == token_bytes(ref)
    assert not (out / "checkpoints").exists()
    capsys.readouterr()


def test_corrupt_or_foreign_checkpoints_are_reported(labels3, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    bad = out / "checkpoints" / "learn-g0.json"
    bad.write_text("{not json")
    assert main(learn_args(labels3, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "unreadable learner checkpoint" in err[0]

    bad.write_text(
        json.dumps(
            {
                "format": "augment-learner-checkpoint/1",
                "serial": 1,
                "fingerprint": "other",
                "env": {"device": "cpu", "dtype": "float32"},
                "tensors": "learn-g0-1.safetensors",
                "active": [],
                "queue": [0, 1, 2],
            }
        )
    )
    assert main(learn_args(labels3, out)) == 2
    assert "unreadable" in capsys.readouterr().err  # its tensor file is missing

    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(out / "checkpoints" / "learn-g0-1.safetensors"))
    assert main(learn_args(labels3, out)) == 2
    assert "another learn config" in capsys.readouterr().err
    assert main(learn_args(labels3, out, "--overwrite")) == 0
    captured = capsys.readouterr()
    assert "discarded" in captured.err
    assert json.loads((out / "manifest.json").read_text())["learn"]["resume"].startswith("learner checkpoint")
    assert len(token_bytes(out)) == 3 and not (out / "checkpoints").exists()


def test_an_older_per_worker_checkpoint_is_named_and_not_used(labels3, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "learn-w0of1.json").write_text("{}")  # augment 0.2 checkpointed per worker
    assert main(learn_args(labels3, out)) == 0
    err = capsys.readouterr().err
    assert "learn-w0of1.json" in err and "older augment" in err and "not used" in err
    assert len(token_bytes(out)) == 3


def test_a_checkpoint_from_another_dtype_is_not_used_and_the_manifest_says_so(labels3, tmp_path, capsys):
    out = tmp_path / "run"
    with interrupted_after_one_step():
        assert main(learn_args(labels3, out, "--dtype", "bf16")) == 130
    assert (out / "checkpoints" / "learn-g0.json").is_file()
    capsys.readouterr()
    assert main(learn_args(labels3, out, "--dtype", "fp32")) == 0
    err = capsys.readouterr().err
    assert "cpu/bfloat16 not used on cpu/float32" in err
    assert "not used" in json.loads((out / "manifest.json").read_text())["learn"]["resume"]
    assert len(token_bytes(out)) == 3 and not (out / "checkpoints").exists()


def test_sigterm_stops_with_one_line_keeps_finished_work_and_a_rerun_completes(labels3, uninterrupted, tmp_path):
    """Slurm preemption sends SIGTERM: exit 143 with one line, finished shards and tokens kept, no partial
    shard visible; the rerun ends with the uninterrupted run's bytes."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        build_cmd(labels3, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while proc.poll() is None and not any(out.glob("shards/*.json")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the build finished before SIGTERM arrived")
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("augment: stopped by SIGTERM; finished work is kept")
    assert "Traceback" not in err and not list(out.rglob("*.tar.tmp"))
    assert len(token_bytes(out)) == 3
    r = subprocess.run(build_cmd(labels3, out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert tar_samples(out) == tar_samples(uninterrupted) and token_bytes(out) == token_bytes(uninterrupted)


def test_a_second_process_on_the_same_worker_slot_is_refused(labels3, tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        build_cmd(labels3, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 300
        while proc.poll() is None and not (out / "manifest.json").is_file() and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None
        assert main(learn_args(labels3, out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another process is running worker 0 of 1" in err[0]
    finally:
        proc.kill()
        proc.wait()


def test_torchrun_two_processes_build_the_one_process_bytes(labels3, one_process_build, tmp_path):
    """`torchrun --nproc-per-node 2 -m augment.cli build ...`: each process learns its classes, waits for the
    other's tokens, then generates its shards. With one class per learner step the batches are the same as
    in one process, so tokens and shards are byte-identical."""
    one, two = one_process_build, tmp_path / "two"
    cmd = [*TORCHRUN_2, *build_cmd(labels3, two, "--classes-per-step", "1")[3:]]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert token_bytes(two) == token_bytes(one) and len(token_bytes(one)) == 3
    assert tar_samples(two) == tar_samples(one)


def test_torchrun_at_the_default_classes_per_step_builds_the_one_process_bytes(labels3, tmp_path):
    """Learning groups are planned from the label set and the config (here --group-size 2: [t-shirt, pullover]
    and [coat]), never from the worker count: two processes learn the same batches as one, so at the toy
    preset's default classes per step tokens and shards are byte-identical."""

    def grouped(out):
        cmd = build_cmd(labels3, out, "--group-size", "2")
        i = cmd.index("--classes-per-step")
        return cmd[3:i] + cmd[i + 2 :]

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(grouped(one)) == 0
    r = subprocess.run([*TORCHRUN_2, *grouped(two)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((two / "manifest.json").read_text())
    assert sorted(manifest["workers"]["learn"]) == ["0of2", "1of2"]  # each worker learned a group, device recorded
    assert token_bytes(two) == token_bytes(one) and len(token_bytes(one)) == 3
    assert tar_samples(two) == tar_samples(one) and len(tar_samples(one)) == 12


def test_a_full_disk_mid_shard_exits_with_one_line_leaves_no_partial_shard_and_a_rerun_completes(
    labels3, tmp_path, monkeypatch, capsys
):
    import errno

    import augment.run.atomic

    args = [
        "generate",
        "--preset",
        "toy",
        "--labels",
        str(labels3),
        "--no-tokens",
        "--images-per-class",
        "4",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    tars: list[str] = []

    class FillsUp:  # the disk fills up halfway through the second shard
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        if ".tar." in str(path):
            tars.append(path)
            if len(tars) == 2:
                return FillsUp(f)
        return f

    monkeypatch.setattr(augment.run.atomic, "open", open_, raising=False)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "rerun" in err
    assert len(tars) >= 2 and not list(out.rglob("*.tmp"))  # (the writer may have begun the next one)
    failed = tars[1].name.split(".tar.")[0]
    tars_now, markers = sorted(out.glob("shards/*.tar")), sorted(out.glob("shards/*.json"))
    assert [p.stem for p in tars_now] == [p.stem for p in markers]  # every tar has its marker
    assert failed not in [p.stem for p in tars_now] and 1 <= len(tars_now) < 6  # the finished ones only
    monkeypatch.undo()
    assert main([*args, "--out", str(out)]) == 0
    assert tar_samples(out) == tar_samples(tmp_path / "ref") and len(tar_samples(out)) == 12


def test_a_full_disk_while_saving_a_token_leaves_no_token_directory(tmp_path, monkeypatch):
    import errno
    import pathlib

    import torch

    from augment.data.tokens_io import is_learned, save_token
    from augment.labels import LabelClass

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    cls = LabelClass(position=0, name="coat", index=0, slug="000-coat")
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)  # the token's weights are the first file written
    with pytest.raises(OSError):
        save_token(tmp_path, cls, "<coat>", torch.ones(4), {})
    assert not list((tmp_path / "tokens").iterdir()) and not is_learned(tmp_path, cls)
