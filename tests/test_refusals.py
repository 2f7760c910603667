"""Inputs an audit found to end in a traceback, a hang or a silent exit 0 (issue 34's second pass), each now one
line on stderr, exit 2, nothing created under OUT, before any model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from augment.cli import main
from augment.config import TOY_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
LABELS = str(ROOT / "manifests" / "fashion-mnist.txt")


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


CASES = {  # name: (extra argv or a function of tmp_path giving it, env, what the line says)
    "config key not a name": (lambda t: ["--config", _write(t / "c.yaml", "learn:\n  1: 2\n")], {}, "keys are names"),
    "config from /dev/zero": (["--config", "/dev/zero"], {}, "not a regular file"),
    "labels from /dev/zero": (["--labels", "/dev/zero"], {}, "not a regular file"),
    "a literal {{name}}": (
        lambda t: ["--config", _write(t / "c.yaml", "learn:\n  prompts: ['a {token} {{name}}']\n")],
        {},
        "must contain {name}",
    ),  # fmt: skip
    "an Arabic-Indic index": (
        lambda t: ["--labels", _write(t / "l.txt", "\u0663\ttrouser\n")],
        {},
        "not a class index",
    ),
    "memory:// OUT": (["--out", "memory://x"], {}, "keeps nothing"),
    "://x OUT": (["--out", "://x"], {}, "is not a path or URL"),
    "OUT under /proc": (["--out", "/proc/augment-x"], {}, "cannot write in /proc"),
    "RANK alone": ([], {"RANK": "1"}, "$RANK is set but $WORLD_SIZE is not"),
    "zero workers": (["--num-workers", "0"], {}, "--num-workers must be ≥ 1"),
    "a CPU with an index": (["--device", "cpu:5"], {}, "--device must be"),
    "MPS here": (["--device", "mps"], {}, "MPS (Apple GPUs) is not available"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_found_by_the_audit_is_one_line_exit_2(name, tmp_path, capsys, monkeypatch):
    extra, env, needle = CASES[name]
    extra = extra(tmp_path) if callable(extra) else extra
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    argv = ["learn", "--preset", "toy", "--labels", LABELS, "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert not out.exists() and not (Path.cwd() / ":").exists()


def test_a_fifo_label_file_does_not_hang(tmp_path, capsys):
    fifo = tmp_path / "labels"
    os.mkfifo(fifo)
    assert main(["learn", "--preset", "toy", "--labels", str(fifo), "--out", str(tmp_path / "o")]) == 2
    assert "not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, needle",
    [(lambda c: c.pop("labels"), "'labels' must be a non-empty list"),
     (lambda c: c.update(labels=["a", "b", "c"]), "the weights do not load"),
     (lambda c: c.update(architecture="timm:resnet18"), "the weights do not load"),
     (lambda c: c.update(model_kwargs={"foo": 1}), "the weights do not load"),
     (lambda c: c.update(input_size="x"), "'input_size' must be"),
     (lambda c: c.update(std=[0, 0, 0]), "'std' must be > 0")],
)  # fmt: skip
def test_a_ckpt_guide_with_a_broken_config_is_one_line(edit, needle, tmp_path, capsys):
    import shutil

    guide = tmp_path / "guide"
    shutil.copytree(TOY_WEIGHTS / "guide", guide)
    config = json.loads((guide / "config.json").read_text())
    edit(config)
    (guide / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    argv = ["learn", "--preset", "toy", "--labels", LABELS, "--out", str(out), "--guide", f"ckpt:{guide}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and not out.exists(), err


@pytest.mark.parametrize(
    "setup, code, needle",
    [(lambda d: None, 2, "not a learn/generate/build output"),
     (lambda d: (d / "shards").write_text("x"), 2, "is a file"),
     (lambda d: ((d / "shards").mkdir(), (d / "shards" / "s-000000.json").write_text("[1]")), 1,
      "marker is not a JSON object"),
     (lambda d: ((d / "shards").mkdir(), (d / "shards" / "s-000000.json").write_bytes(b"\xff\xfe")), 1,
      "marker unreadable")],
)  # fmt: skip
def test_verify_on_what_is_not_a_run_or_has_odd_markers(setup, code, needle, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    setup(run)
    assert main(["verify", str(run)]) == code
    captured = capsys.readouterr()
    assert needle in captured.out + captured.err and "Traceback" not in captured.err
