"""Mass generation into shards on the tiny pipeline (16×16 images, 2 steps): resumability, workers, formats."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from augment.cli import main
from augment.config import GenerateConfig
from augment.data.shards import load_samples, plan_units, webdataset_pipeline
from augment.generate.loop import generate_units, unit_samples
from augment.labels import read_label_set
from tests.helpers import tar_samples
from tests.test_tokens import learn_config
from tests.tiny import COLOURS, colour_guide, tiny_pipeline

REPO = Path(__file__).resolve().parent.parent
SMALL = [
    "--images-per-class",
    "4",
    "--shard-size",
    "2",
    "--batch-size",
    "2",
    "--steps",
    "2",
    "--no-progress",
    "--device",
    "cpu",
    "--dtype",
    "fp32",
]


@pytest.fixture(scope="module")
def world(tokenizer_dir, tmp_path_factory):
    """A saved tiny pipeline, a label file and tokens learned for it (1 step)."""
    from augment.learn.learner import TokenLearner
    from augment.models.generator import text_encoder_fingerprint

    root = tmp_path_factory.mktemp("world")
    (root / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    labels = read_label_set(root / "colours.txt")
    pipe = tiny_pipeline(tokenizer_dir)
    pipe.save_pretrained(root / "pipe")
    info = {"text_encoder": text_encoder_fingerprint(pipe)}
    TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], learn_config(max_steps=1), root / "learned", info).run()
    return {
        "root": root,
        "labels_file": root / "colours.txt",
        "labels": labels,
        "pipe": root / "pipe",
        "tokens": root / "learned",
    }


def cli_args(world, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "--labels",
        str(world["labels_file"]),
        "--out",
        str(out),
        "--generator",
        str(world["pipe"]),
        "--tokens",
        str(world["tokens"]),
        *SMALL,
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(cli_args(world, out)) == 0
    return out


def test_layout_manifest_and_info(reference):
    tars = sorted(p.name for p in (reference / "shards").glob("*.tar"))
    assert tars == [f"colours-{n:06d}.tar" for n in range(6)]
    seen = []
    for t in tars:
        marker = json.loads((reference / "shards" / t.replace(".tar", ".json")).read_text())
        assert marker["count"] == 2 and len(marker["classes"]) == 2  # every shard mixes classes
        assert marker["sha256"] == hashlib.sha256((reference / "shards" / t).read_bytes()).hexdigest()
        seen += [tuple(x) for x in marker["samples"]]
    assert sorted(seen) == [(c, i) for c in range(3) for i in range(4)]  # each image once
    manifest = json.loads((reference / "manifest.json").read_text())
    assert len(manifest["generate"]["shards"]) == 6
    info = json.loads((reference / "_info.json").read_text())["splits"]["train"]
    assert info["num_samples"] == 12 and info["shard_lengths"] == [2] * 6 and len(info["filenames"]) == 6
    assert not list(reference.rglob("*.tmp"))
    card = (reference / "README.md").read_text()
    assert "path: shards/*.tar" in card and "| blue | 4 | ![](grid/c0002.png) |" in card
    assert str(reference.parent) not in card and "/" not in card.split("generated with `")[1].split("`")[0]
    from PIL import Image

    assert Image.open(reference / "grid" / "c0000.png").size == (16 * 4, 16)


def test_shards_load_with_webdataset_datasets_and_augment(reference, world):
    samples = tar_samples(reference)
    assert sorted(samples) == [f"c{c:04d}_{i:06d}" for c in range(3) for i in range(4)]
    for key, s in samples.items():
        assert set(s) == {"jpg", "cls", "json"}
        meta = json.loads(s["json"])
        assert int(s["cls"]) == meta["position"] == int(key[1:5])
        assert meta["token"] in meta["prompt"] and meta["class"] in meta["prompt"]

    rows = list(webdataset_pipeline(reference, shuffle=0))
    assert len(rows) == 12
    first = json.loads((reference / "shards" / "colours-000000.json").read_text())["samples"][0]
    assert rows[0][0].size == (16, 16) and [rows[0][1], rows[0][2]["index"]] == first  # in shard order
    assert sorted(r[2]["index"] + 100 * r[1] for r in webdataset_pipeline(reference, shuffle=5)) == sorted(
        r[2]["index"] + 100 * r[1] for r in rows
    )

    listed = load_samples(reference)
    assert sorted(s["key"] for s in listed) == sorted(samples) and [s["cls"] for s in listed] == [r[1] for r in rows]

    import datasets

    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": str(reference / "shards" / "*.tar")},
        split="train",
        cache_dir=str(reference.parent / "hf-cache"),
    )
    assert len(ds) == 12 and {"jpg", "cls", "json"} <= set(ds.column_names)
    assert ds[0]["jpg"].size == (16, 16)


def test_two_workers_make_disjoint_units_whose_union_is_a_one_worker_run(world, reference, tmp_path):
    out = tmp_path / "out"
    assert main(cli_args(world, out, "--num-workers", "2", "--worker-index", "0")) == 0
    first = set(tar_samples(out))
    assert not (out / "_info.json").exists()
    assert main(cli_args(world, out, "--num-workers", "2", "--worker-index", "1")) == 0
    both = tar_samples(out)
    assert first and set(both) - first and first < set(both)
    assert both == tar_samples(reference)
    assert (out / "_info.json").read_text() == (reference / "_info.json").read_text()

    def sha(d):
        return {p.name: json.loads(p.read_text())["sha256"] for p in (d / "shards").glob("*.json")}

    assert sha(out) == sha(reference)  # tars are byte-identical (fixed mtime, deterministic encoding)


def test_sigkill_at_random_moments_then_restart_gives_the_uninterrupted_samples(world, reference, tmp_path):
    out = tmp_path / "out"
    rng = random.Random(0)
    cmd = [
        sys.executable,
        "-c",
        "import sys; from augment.cli import main; sys.exit(main(sys.argv[1:]))",
        *cli_args(world, out, "--shard-size", "1", "--batch-size", "1"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    kills, progress = 0, [0]
    for round_ in range(4):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if round_ == 0:  # once during start-up
            time.sleep(rng.uniform(0.2, 2.0))
        else:  # then at a random moment after the next unit has finished
            deadline = time.time() + 120
            while (
                proc.poll() is None and len(list(out.glob("shards/*.json"))) <= progress[-1] and time.time() < deadline
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        progress.append(len(list(out.glob("shards/*.json"))))
    assert kills >= 2 and any(0 < p < 12 for p in progress), progress  # really killed mid-way
    assert subprocess.run(cmd, cwd=REPO, env=env, capture_output=True).returncode == 0
    assert not list(out.rglob("*.tmp"))
    # shard size 1 here vs 2 in the reference: same samples, keys and bytes
    assert tar_samples(out) == tar_samples(reference)


def test_dry_run_prints_the_plan_and_loads_nothing(world, reference, tmp_path, capsys):
    assert main(cli_args(world, reference, "--dry-run")) == 0
    assert "total 6, done 6, pending 0" in capsys.readouterr().out
    out = tmp_path / "fresh"
    assert main(cli_args(world, out, "--dry-run", "--generator", str(tmp_path / "nowhere"))) == 0
    assert "total 6, done 0, pending 6" in capsys.readouterr().out
    assert not out.exists()


def test_changed_config_is_refused_unless_overwrite(world, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--images-per-class", "1", "--shard-size", "1"]
    assert main(cli_args(world, out, *args)) == 0
    capsys.readouterr()
    assert main(cli_args(world, out, *args, "--seed", "5")) == 2
    assert "another config" in capsys.readouterr().err
    assert main(cli_args(world, out, *args, "--seed", "5", "--overwrite")) == 0
    assert len(list((out / "shards").glob("*.tar"))) == 3
    smaller = ["--images-per-class", "1", "--shard-size", "3"]  # one shard where there were three
    assert main(cli_args(world, out, *smaller, "--overwrite")) == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["colours-000000.json", "colours-000000.tar"]


def test_the_guidance_cutoff_is_part_of_a_units_config(world, reference, capsys):
    """guidance_cutoff 1 is the default (guidance at every step): the run continues; any other value is
    another config."""
    assert main(cli_args(world, reference, "--dry-run", "--guidance-cutoff", "1")) == 0
    assert "done 6, pending 0" in capsys.readouterr().out
    assert main(cli_args(world, reference, "--dry-run", "--guidance-cutoff", "0.5")) == 2
    assert "another config" in capsys.readouterr().err


def test_a_note_says_when_generation_samples_otherwise_than_the_tokens_were_learned(world, tmp_path, capsys):
    out = tmp_path / "fresh"  # the world's tokens: 2 steps at guidance 3, the default sampler, no cutoff
    assert main(cli_args(world, out, "--dry-run", "--guidance-scale", "3")) == 0
    assert "note" not in capsys.readouterr().err
    assert main(cli_args(world, out, "--dry-run", "--guidance-scale", "5", "--guidance-cutoff", "0.5")) == 0
    err = capsys.readouterr().err
    assert "augment: note:" in err and "guidance_scale 3.0 → 5.0, guidance_cutoff 1.0 → 0.5" in err, err
    assert not out.exists()


@pytest.mark.parametrize("bad", ["missing-tokens", "other-generator", "unwritable", "ipc0", "shard0"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(world, tmp_path, bad, capsys):
    import shutil

    out = tmp_path / "out"
    args = cli_args(world, out)
    if bad == "missing-tokens":
        args[args.index("--tokens") + 1] = str(tmp_path / "none")
    elif bad == "other-generator":
        tokens = tmp_path / "tokens-copy"
        shutil.copytree(world["tokens"], tokens)
        for meta in tokens.glob("tokens/*/meta.json"):
            meta.write_text(json.dumps({**json.loads(meta.read_text()), "text_encoder": "0123456789abcdef"}))
        args[args.index("--tokens") + 1] = str(tokens)
    elif bad == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
        args[args.index("--out") + 1] = str(out)
    elif bad == "ipc0":
        args += ["--images-per-class", "0"]
    elif bad == "shard0":
        args += ["--shard-size", "0"]
    capsys.readouterr()
    assert main(args) == 2  # in-process: the exit code and stderr are main()'s (test_cli runs a real process)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("augment: error:"), err
    assert not out.exists()


def test_images_do_not_depend_on_batch_size_and_no_tokens_keeps_seeds(world, tokenizer_dir, tmp_path):
    labels = world["labels"]
    pipe = tiny_pipeline(tokenizer_dir)
    cfg = GenerateConfig(
        images_per_class=3,
        shard_size=3,
        num_inference_steps=2,
        guidance_scale=3.0,
        prompts=["a photo of {token} {name}", "{name}"],
        image_format="png",
    )
    unit = plan_units([1], 3, 3)[0]
    from augment.data.tokens_io import load_tokens

    tokens = load_tokens(pipe, world["tokens"], labels)
    one = unit_samples(pipe, labels, tokens, GenerateConfig(**{**cfg.__dict__, "batch_size": 1}), unit)
    three = unit_samples(pipe, labels, tokens, GenerateConfig(**{**cfg.__dict__, "batch_size": 3}), unit)
    from PIL import Image

    for a, b in zip(one, three):
        assert a["__key__"] == b["__key__"] and a["json"] == b["json"]
        pa = np.asarray(Image.open(io.BytesIO(a["png"]))).astype(int)
        pb = np.asarray(Image.open(io.BytesIO(b["png"]))).astype(int)
        assert np.abs(pa - pb).max() <= 1  # batched BLAS may round one step differently, nothing more
    plain = unit_samples(pipe, labels, None, GenerateConfig(**{**cfg.__dict__, "batch_size": 3}), unit)
    for a, b in zip(three, plain):
        ma, mb = json.loads(a["json"]), json.loads(b["json"])
        assert ma["seed"] == mb["seed"] and mb["token"] is None
        assert mb["prompt"] == ma["prompt"].replace(ma["token"] + " ", "")
    # prompts alternate over templates by image index
    assert [json.loads(s["json"])["prompt"] for s in plain] == ["a photo of green", "green", "a photo of green"]


def test_guide_probability_is_recorded_when_a_guide_is_given(world, tokenizer_dir, tmp_path):
    labels = world["labels"]
    pipe = tiny_pipeline(tokenizer_dir)
    cfg = GenerateConfig(images_per_class=2, shard_size=2, batch_size=2, num_inference_steps=2, guidance_scale=3.0)
    markers = generate_units(pipe, labels, None, cfg, plan_units([0], 2, 2), tmp_path, "h", colour_guide(), [0, 1, 2])
    assert markers[0]["count"] == 2
    for s in load_samples(tmp_path):
        assert 0.0 <= s["meta"]["guide_prob"] <= 1.0


@pytest.fixture(scope="module")
def ckpt_guide(tmp_path_factory):
    """A tiny timm classifier over the colour names, saved in the ckpt: format."""
    import timm

    from augment.models.checkpoint import save_classifier

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    d = tmp_path_factory.mktemp("guide") / "ckpt"
    save_classifier(
        model, d, architecture="timm:test_resnet", labels=COLOURS, input_size=(3, 16, 16), mean=[0.5] * 3, std=[0.5] * 3
    )
    return f"ckpt:{d}"


def test_build_learns_then_generates_into_one_out_and_score_records_guide_prob(world, ckpt_guide, tmp_path):
    out = tmp_path / "out"
    args = [
        "build",
        "--labels",
        str(world["labels_file"]),
        "--out",
        str(out),
        "--generator",
        str(world["pipe"]),
        "--guide",
        ckpt_guide,
        "--max-steps",
        "1",
        "--learn-batch-size",
        "1",
        "--images-per-class",
        "2",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--no-progress",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--score",
    ]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"learn", "generate"} <= set(manifest)
    samples = load_samples(out)
    assert len(samples) == 6
    for s in samples:
        assert s["meta"]["token"] in s["meta"]["prompt"] and 0 <= s["meta"]["guide_prob"] <= 1
    card = (out / "README.md").read_text()  # the card: per class its count and mean probability
    for position, name in enumerate(COLOURS):
        probs = [s["meta"]["guide_prob"] for s in samples if s["meta"]["position"] == position]
        assert f"| {name} | 2 | {sum(probs) / 2:.3f} |" in card
    assert main(args) == 0  # rerun: nothing left to do
    assert len(load_samples(out)) == 6


def test_prompt_cache_and_background_writer_give_the_serial_paths_bytes(world, tokenizer_dir, tmp_path):
    """Each template is encoded once per class and shards are encoded and written on another thread while
    sampling goes on: the images equal the uncached pipeline call's, and the shards are byte for byte the
    serial path's, with on_unit still called in unit order."""
    from augment.data.tokens_io import load_tokens
    from augment.generate.loop import PromptCache, generate_images

    labels = world["labels"]
    pipe = tiny_pipeline(tokenizer_dir)
    tokens = load_tokens(pipe, world["tokens"], labels)
    cfg = GenerateConfig(
        images_per_class=5,
        shard_size=2,
        batch_size=2,
        num_inference_steps=2,
        guidance_scale=3.0,
        prompts=["a photo of {token} {name}", "{name}"],
        image_format="png",
    )
    prompts = [f"a photo of {tokens[1]} green", "green", f"a photo of {tokens[1]} green"]
    calls = []
    cache = PromptCache(pipe, cfg.guidance_scale)
    handle = pipe.text_encoder.register_forward_pre_hook(lambda m, a: calls.append(len(a[0])))
    cached = generate_images(pipe, prompts, [1, 2, 3], cfg, cache=cache)
    cached_again = generate_images(pipe, prompts, [1, 2, 3], cfg, cache=cache)
    assert len(calls) == 4  # 2 distinct prompts × (conditional, unconditional), once
    handle.remove()
    plain = generate_images(pipe, prompts, [1, 2, 3], cfg)
    assert np.array_equal(cached, plain) and np.array_equal(cached_again, plain)

    units = plan_units(range(3), 5, 2)
    seen = {}
    for overlap in (False, True):
        order = []
        generate_units(
            pipe,
            labels,
            tokens,
            cfg,
            units,
            tmp_path / str(overlap),
            "h",
            overlap=overlap,
            on_unit=lambda u, m, order=order: order.append(m["unit"]),
        )
        seen[overlap] = order
    assert seen[True] == seen[False] == [u.name(labels.name) for u in units]
    for serial in sorted((tmp_path / "False" / "shards").iterdir()):
        assert (tmp_path / "True" / "shards" / serial.name).read_bytes() == serial.read_bytes()


def test_downstream_reads_real_augment_output_through_its_manifest(world, reference, tmp_path):
    """`augment generate` writes the label list under manifest.json's generate.labels; downstream maps cls
    through it (a label set in another order gets the samples under the right names)."""
    from augment.data.shards import iter_samples, manifest_labels
    from downstream.synthetic import load_synthetic

    names, _, _ = manifest_labels(reference)
    assert names == COLOURS
    reordered = tmp_path / "reordered.txt"
    reordered.write_text("blue\nred\ngreen\n")
    synthetic = load_synthetic("tokens", reference, read_label_set(reordered))
    ys = synthetic.split.labels
    assert sorted(np.bincount(ys).tolist()) == [4, 4, 4]
    cls = np.array([int(m["cls"]) for _, _, m in iter_samples(reference)])
    assert (ys[cls == 0] == 1).all() and (ys[cls == 2] == 0).all()  # red (cls 0) is position 1 here, blue 0


def test_a_run_and_its_generator_can_move_and_continue(world, reference, tmp_path, capsys):
    """The config hash names the generator by content, not by path: a finished run copied elsewhere with
    its generator copied elsewhere too is complete there; another generator of the same architecture is not."""
    import shutil

    from augment.models.fingerprint import source_identity

    moved_gen, moved_out = tmp_path / "elsewhere" / "pipe", tmp_path / "moved"
    shutil.copytree(world["pipe"], moved_gen)
    shutil.copytree(reference, moved_out)
    args = cli_args(world, moved_out)
    args[args.index("--generator") + 1] = str(moved_gen)
    capsys.readouterr()
    assert main(args) == 0
    assert "already done" in capsys.readouterr().out
    assert source_identity(str(moved_gen)) == source_identity(str(world["pipe"]))
    assert source_identity(f"ckpt:{moved_gen}") == f"ckpt:{source_identity(str(moved_gen))}"
    assert source_identity("timm:resnet50") == "timm:resnet50"


def test_the_generator_identity_tells_same_architecture_models_apart(tokenizer_dir, tmp_path):
    from augment.models.fingerprint import source_identity

    tiny_pipeline(tokenizer_dir, seed=0).save_pretrained(tmp_path / "a")
    tiny_pipeline(tokenizer_dir, seed=1).save_pretrained(tmp_path / "b")
    assert source_identity(str(tmp_path / "a")) != source_identity(str(tmp_path / "b"))


def test_verify_catches_a_truncated_tar_and_a_tampered_token(world, reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.copytree(world["tokens"] / "tokens", run / "tokens")
    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ok: checked 3 tokens, 6 shards")

    tar = sorted((run / "shards").glob("*.tar"))[2]
    tar.write_bytes(tar.read_bytes()[:-700])
    weights = sorted((run / "tokens").glob("*/learned_embeds.safetensors"))[1]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the embedding
    weights.write_bytes(bytes(data))
    (run / "shards" / sorted(p.name for p in (run / "shards").glob("*.json"))[-1]).unlink()
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert f"problem: {tar}: sha256 differs" in out
    assert f"problem: {weights}: sha256 differs" in out
    assert "a rerun would redo: unit colours-000005 (missing)" in out
    assert f"problem: {run / '_info.json'}: does not match the shard markers" in out
    assert out.strip().splitlines()[-1].startswith("3 problem(s)")
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
