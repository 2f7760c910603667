"""`augment learn` end to end on a tiny saved pipeline and a tiny `ckpt:` guide."""

import json

import pytest
import torch

from augment.cli import main
from augment.models.checkpoint import build_model, save_classifier
from tests.tiny import COLOURS, tiny_pipeline


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("world")
    tiny_pipeline(tokenizer_dir).save_pretrained(root / "generator")
    torch.manual_seed(0)
    save_classifier(
        build_model("timm:resnet10t", 3),
        root / "guide",
        architecture="timm:resnet10t",
        labels=COLOURS,
        input_size=(3, 16, 16),
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    (root / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    return root


def learn_argv(world, out, *extra):
    return [
        "learn",
        "--labels",
        str(world / "colours.txt"),
        "--out",
        str(out),
        "--generator",
        str(world / "generator"),
        "--guide",
        f"ckpt:{world / 'guide'}",
        "--steps",
        "2",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        *extra,
    ]


def test_learn_writes_every_token_and_a_manifest_then_skips_on_rerun(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(learn_argv(world, out)) == 0
    slugs = sorted(p.name for p in (out / "tokens").iterdir())
    assert slugs == ["000-red", "001-green", "002-blue"]
    meta = json.loads((out / "tokens" / "001-green" / "meta.json").read_text())
    assert meta["token"] == "<colours-001>" and meta["steps"] == 2 and meta["guide_index"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["learn"]["labels"] == COLOURS and "torch" in manifest["versions"]
    assert "learned 3 token(s)" in capsys.readouterr().out
    assert main(learn_argv(world, out)) == 0
    assert "already learned" in capsys.readouterr().out


def test_workers_split_the_groups_and_the_tokens_do_not_depend_on_the_worker_count(world, tmp_path, capsys):
    one, out = tmp_path / "one", tmp_path / "run"
    assert main(learn_argv(world, one, "--group-size", "2", "--classes-per-step", "2")) == 0
    # groups [red, green] [blue]: worker 1 of 2 takes the second group, worker 0 the first
    assert main(learn_argv(world, out, "--group-size", "2", "--classes-per-step", "2", "--num-workers", "2",
                           "--worker-index", "1")) == 0  # fmt: skip
    assert sorted(p.name for p in (out / "tokens").iterdir()) == ["002-blue"]
    assert main(learn_argv(world, out, "--group-size", "2", "--classes-per-step", "2", "--num-workers", "2",
                           "--worker-index", "0")) == 0  # fmt: skip
    assert sorted(p.name for p in (out / "tokens").iterdir()) == ["000-red", "001-green", "002-blue"]
    for slug in ("000-red", "001-green", "002-blue"):
        a, b = (d / "tokens" / slug / "learned_embeds.safetensors" for d in (one, out))
        assert a.read_bytes() == b.read_bytes(), slug
    capsys.readouterr()
    # with the default group size all three classes are one group: a second worker has nothing to learn
    assert main(learn_argv(world, tmp_path / "two", "--num-workers", "2", "--worker-index", "1")) == 0
    assert "already learned" in capsys.readouterr().out and not (tmp_path / "two" / "tokens").exists()


def test_worker_index_out_of_range_is_a_user_error(world, tmp_path, capsys):
    assert main(learn_argv(world, tmp_path / "run", "--num-workers", "2", "--worker-index", "2")) == 2
    assert "worker index" in capsys.readouterr().err


def test_a_guide_in_another_order_is_refused_before_learning_unless_matched_by_name(world, tmp_path, capsys):
    """The file's `index<TAB>name` lines against a guide whose labels run the other way: exit 2 with one line
    and nothing learned; `--label-match by-name` learns each token towards its own class's index."""
    import shutil

    swapped = tmp_path / "swapped-guide"
    shutil.copytree(world / "guide", swapped)
    config = json.loads((swapped / "config.json").read_text())
    config["labels"] = COLOURS[::-1]
    (swapped / "config.json").write_text(json.dumps(config))
    indexed = tmp_path / "colours.txt"
    indexed.write_text("".join(f"{i}\t{name}\n" for i, name in enumerate(COLOURS)))
    out = tmp_path / "run"
    argv = learn_argv(world, out, "--guide", f"ckpt:{swapped}")
    argv[argv.index("--labels") + 1] = str(indexed)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not match the guide's label at their index" in err
    assert "'red' is the guide's 0 'blue'" in err and not (out / "tokens").exists()
    assert main([*argv, "--label-match", "by-name"]) == 0
    metas = {p.name: json.loads((p / "meta.json").read_text()) for p in (out / "tokens").iterdir()}
    assert {slug: m["guide_index"] for slug, m in metas.items()} == {"000-red": 2, "001-green": 1, "002-blue": 0}
