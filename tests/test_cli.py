"""Bad input to `augment learn`: exit 2, one line on stderr, no traceback, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from augment.cli import main

REPO = Path(__file__).resolve().parent.parent
BAD_LABEL_FILES = {
    "empty": b"",
    "only-comments": b"# nothing here\n\n",
    "duplicate": b"sparrow\nwren\nSparrow\n",
    "blank-after-index": b"0\tsparrow\n1\t\n",
    "undecodable": b"sparrow\n\xff\xfe wren\n",
    "escapes-out-dir": b"sparrow\n../../etc\n",
    "negative-index": b"-1\tsparrow\n",
}


@pytest.mark.parametrize("name", sorted(BAD_LABEL_FILES))
def test_malformed_label_file_exits_2_with_one_line(name, tmp_path, capsys):
    labels = tmp_path / f"{name}.txt"
    labels.write_bytes(BAD_LABEL_FILES[name])
    out = tmp_path / "out"
    code = main(["learn", "--labels", str(labels), "--out", str(out), "--preset", "toy"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("augment: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists()


def test_index_out_of_guide_range_exits_2_before_generator_loads(tmp_path, capsys):
    labels = tmp_path / "l.txt"
    labels.write_text("0\tt-shirt\n10\tnot a class\n")
    out = tmp_path / "out"
    code = main(
        [
            "learn",
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--preset",
            "toy",
            "--generator",
            str(tmp_path / "no-such-generator"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "outside the guide" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["learn", "--labels", "manifests/fashion-mnist.txt", "--out", "X", "--preset", "nope"], "unknown preset"),
        (["learn", "--labels", "manifests/fashion-mnist.txt", "--out", "X", "--guide", "magic:x"], "guide spec"),
        (["learn", "--labels", "no/such/file.txt", "--out", "X"], "no/such/file.txt"),
        (
            ["learn", "--labels", "manifests/fashion-mnist.txt", "--out", "X", "--batch-size", "0", "--preset", "toy"],
            "batch_size",
        ),
        (["learn", "--out", "X"], "--labels"),
    ],
)
def test_bad_options_exit_2(argv, needle, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "X" else str(REPO / a) if a.startswith("manifests/") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "line, needle",
    [
        ("grad_steps: 0", "grad_steps"),
        ("timestep_spacing: sideways", "timestep_spacing"),
        ("steps_offset: -1", "steps_offset"),
        ("objective: x1", "objective"),
        ('prompts: ["a photo of {name}"]', "{token}"),
    ],
)
def test_bad_learner_sampler_settings_exit_2(line, needle, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"learn:\n  {line}\n")
    argv = [
        "learn",
        "--labels",
        str(REPO / "manifests/fashion-mnist.txt"),
        "--out",
        str(tmp_path / "out"),
        "--preset",
        "toy",
        "--config",
        str(cfg),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_console_script_exit_code_and_no_traceback(tmp_path):
    labels = tmp_path / "dup.txt"
    labels.write_text("a\na\n")
    proc = subprocess.run(
        [sys.executable, "-m", "augment.cli", "learn", "--labels", str(labels), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
