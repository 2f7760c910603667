"""Prompts longer than the text encoder reads (CLIP: 77 tokens): the user is told which classes are cut, the
manifest records them, and a class token that the cut would drop is refused (it would be learned for nothing).
On the toy world's real CLIP BPE tokenizer."""

from __future__ import annotations

import json

import pytest
from transformers import CLIPTokenizer

from augment.cli import main
from augment.config import TOY_WEIGHTS
from augment.errors import UserError
from augment.models.prompting import prompt_cuts

LONG = " ".join(["t-shirt"] * 40)  # "t", "-", "shirt": 120 tokens


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOY_WEIGHTS / "generator" / "tokenizer")


def test_cut_counts_tokens_as_the_text_encoder_reads_them(tokenizer):
    tokenizer.add_tokens(["<l-0>"])
    templates = ["A photo of {token} {name}"]
    assert prompt_cuts(tokenizer, templates, [("<l-0>", "trouser")]) == {}
    cut = prompt_cuts(tokenizer, templates, [("<l-0>", "trouser"), ("<l-0>", LONG)])
    full = len(tokenizer(f"A photo of <l-0> {LONG}").input_ids)  # BOS and EOS included, the token one id
    assert list(cut) == [LONG] and cut[LONG] == full > 77
    assert prompt_cuts(tokenizer, ["a photo of {name}"], [("", LONG)]) == {LONG: full - 1}  # plain: no token
    with pytest.raises(UserError, match="past the 77 the text encoder reads"):
        prompt_cuts(tokenizer, ["{name}, {token}"], [("<l-0>", LONG)])


def test_learn_says_which_names_are_cut_and_records_them(tmp_path, capsys):
    labels = tmp_path / "l.txt"
    labels.write_text(f"0\t{LONG}\n1\ttrouser\n")
    out = tmp_path / "out"
    argv = ["learn", "--preset", "toy", "--labels", str(labels), "--out", str(out), "--label-match", "by-index",
            "--max-steps", "1", "--batch-size", "1", "--steps", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "longer than the text encoder's 77 tokens" in line]
    assert len(notes) == 1 and "1 class(es)" in notes[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["learn"]["prompts_cut"]) == [LONG]


def test_a_token_past_the_cut_is_refused_before_learning(tmp_path, capsys):
    labels = tmp_path / "l.txt"
    labels.write_text(f"0\t{LONG}\n")
    config = tmp_path / "c.yaml"
    config.write_text("learn:\n  prompts: ['{name} as {token}']\n")
    out = tmp_path / "out"
    argv = ["learn", "--preset", "toy", "--labels", str(labels), "--out", str(out), "--label-match", "by-index",
            "--config", str(config), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "put {token} before {name}" in err
    assert not out.exists()
