"""OUT on object storage (augment.run.storage): the toy build into a bucket of a real S3 endpoint (moto's server
on 127.0.0.1, augment.testing.s3) through s3fs gives the local build's bytes; a killed generate leaves no
partial object and a rerun completes it; `verify` and the README's loaders read the bucket; bad storage input
is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from augment.cli import main
from tests.helpers import CLI, ENV, REPO, build_cmd

GENERATE = ["--preset", "toy", "--images-per-class", "12", "--shard-size", "2", "--batch-size", "2", "--no-progress"]


def local_files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_outputs(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """Names of the token weights, shards, markers, split file and grids that differ or exist in one only
    (meta.json, the manifest and the card record times and hosts)."""
    keep = lambda k: k.endswith((".safetensors", ".tar", ".png", "_info.json")) or k.startswith("shards/")  # noqa: E731
    ka, kb = {k for k in a if keep(k)}, {k for k in b if keep(k)}
    return sorted(ka ^ kb) + sorted(k for k in ka & kb if a[k] != b[k])


@pytest.fixture(scope="module")
def local_build(labels3, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    assert main(build_cmd(labels3, out)[3:]) == 0
    return out


@pytest.fixture(scope="module")
def bucket_build(s3, labels3):
    assert main(build_cmd(labels3, f"s3://{s3.bucket}/toy")[3:]) == 0
    return f"s3://{s3.bucket}/toy"


def test_a_build_into_a_bucket_gives_the_local_builds_bytes_and_nothing_else(s3, local_build, bucket_build):
    objects, local = s3.objects("toy"), local_files(local_build)
    assert any(k.startswith("shards/") and k.endswith(".tar") for k in objects)
    assert same_outputs(objects, local) == []
    assert {"manifest.json", "README.md", "_info.json"} <= set(objects)
    # every object whole and final: no temporary names, locks or leftover learner checkpoints
    assert [k for k in objects if ".tmp" in k or k.startswith((".locks/", "checkpoints/", ".augment"))] == []
    for name, data in objects.items():  # credentials and the endpoint never reach what is written
        assert s3.env["AWS_SECRET_ACCESS_KEY"].encode() not in data and s3.url.encode() not in data, name
    manifest = json.loads(objects["manifest.json"])
    assert manifest["generate"]["tokens"] == "." and manifest["generate"]["worker"] == [0, 1]


def test_verify_reads_a_bucket_and_finds_a_changed_shard(s3, bucket_build, capsys):
    assert main(["verify", bucket_build]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ok: checked 3 tokens, 6 shards")
    fs = s3.fs()
    fs.copy(f"{s3.bucket}/toy", f"{s3.bucket}/toy-changed", recursive=True)
    shard = sorted(k for k in s3.objects("toy-changed") if k.endswith(".tar"))[0]
    fs.pipe_file(f"{s3.bucket}/toy-changed/{shard}", b"not a tar")
    assert main(["verify", f"s3://{s3.bucket}/toy-changed"]) == 1
    out = capsys.readouterr().out
    assert f"{shard}: sha256 differs from its marker" in out and "a rerun would redo: unit" in out


def test_kill_9_mid_generate_into_a_bucket_leaves_whole_objects_and_a_rerun_gives_the_same_bytes(
    s3, labels3, local_build, bucket_build, tmp_path
):
    reference = tmp_path / "reference"
    args = ["generate", "--labels", str(labels3), *GENERATE]
    assert main([*args, "--tokens", str(local_build), "--out", str(reference)]) == 0
    url, fs = f"s3://{s3.bucket}/killed", s3.fs()
    cmd = [*CLI, *args, "--tokens", bucket_build, "--out", url]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**ENV, **s3.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not fs.glob(f"{s3.bucket}/killed/shards/*.json"):
        time.sleep(0.02)
    assert proc.poll() is None, f"generate ended before the kill: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    partial = s3.objects("killed")
    want = local_files(reference)
    shards = {k: v for k, v in partial.items() if k.startswith("shards/")}
    assert 0 < sum(k.endswith(".json") for k in shards) < sum(k.endswith(".json") for k in want)
    assert {k: want[k] for k in shards} == shards  # what is there is whole: the reference's bytes
    assert all(k[:-5] + ".tar" in shards for k in shards if k.endswith(".json"))  # a marker after its shard
    r = subprocess.run(cmd, cwd=REPO, env={**ENV, **s3.env}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert same_outputs(s3.objects("killed"), want) == []


def test_downstream_reads_a_synthetic_set_from_the_bucket(bucket_build, local_build, labels3):
    from augment.labels import read_label_set
    from downstream.synthetic import check_directory, load_synthetic

    labels = read_label_set(labels3)
    remote = load_synthetic("tokens", check_directory("tokens", bucket_build), labels)
    local = load_synthetic("tokens", check_directory("tokens", local_build), labels)
    assert remote.split.labels.tolist() == local.split.labels.tolist() and len(remote.shards) == 6
    assert remote.manifest_sha256 is not None


def test_the_readme_loaders_read_the_bucket(s3, bucket_build, local_build, tmp_path):
    import datasets

    from augment.data.shards import load_samples, sample_count, webdataset_pipeline

    local = [(s["key"], s["cls"], s["meta"]) for s in load_samples(local_build)]
    assert [(s["key"], s["cls"], s["meta"]) for s in load_samples(bucket_build)] == local
    assert sample_count(bucket_build) == len(local) == 12
    streamed = [(image.size, cls) for image, cls in webdataset_pipeline(bucket_build, shuffle=0, meta=False)]
    assert streamed == [((32, 32), cls) for _, cls, _ in local]
    hf = datasets.load_dataset(
        "webdataset", data_files={"train": f"{bucket_build}/shards/*.tar"}, split="train", cache_dir=str(tmp_path)
    )
    assert sorted(int(x["cls"]) for x in hf) == sorted(cls for _, cls, _ in local)
    import timm.data

    from augment.data.shards import webdataset_reads

    webdataset_reads("s3")  # timm's wds reader opens the bucket's _info.json and shards through webdataset
    tm = timm.data.create_dataset("wds/augment", root=bucket_build, split="train", is_training=False, batch_size=4)
    assert sorted(int(cls) for _, cls in tm) == sorted(cls for _, cls, _ in local)


@pytest.mark.parametrize(
    "out,extra,expected",
    [
        ("gs://a-bucket/run", [], "gs:// needs the 'gcs' extra (pip install 'augment[gcs]'"),
        ("s3://no-such-bucket/run", [], "s3://no-such-bucket/run: cannot write there"),
    ],
)
def test_bad_storage_is_one_line_exit_2_and_nothing_written(s3, labels3, out, extra, expected, capsys):
    before = s3.objects("")
    out = out.replace("BUCKET", f"s3://{s3.bucket}")
    assert main(build_cmd(labels3, out, *extra)[3:]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert s3.objects("") == before and not s3.fs().exists("no-such-bucket")


def test_a_store_that_stops_answering_mid_run_is_one_line_exit_1(labels3, local_build, tmp_path):
    """The endpoint goes away after the first shard (as a revoked credential or a full bucket would refuse
    the next PUT): one line on stderr naming OUT, exit 1, what was finished stays whole."""
    from augment.testing.s3 import moto_server

    with moto_server(bucket="doomed") as private:
        url = f"s3://{private.bucket}/run"
        cmd = [*CLI, "generate", "--labels", str(labels3), *GENERATE, "--tokens", str(local_build), "--out", url]
        env = {**ENV, **private.env, "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        fs, deadline = private.fs(), time.time() + 300
        while proc.poll() is None and time.time() < deadline and not fs.glob("doomed/run/shards/*.json"):
            time.sleep(0.02)
        assert proc.poll() is None
    _, err = proc.communicate(timeout=300)  # the server is stopped: every later write fails
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"augment: error: {url}"), err
    assert "rerun the same command" in lines[0]
    assert private.url not in err and "127.0.0.1" not in err  # no endpoint in what is shown


def test_the_fewshot_grid_into_a_bucket_gives_the_local_grids_cells(s3, labels3, bucket_build, tmp_path):
    """`downstream fewshot --out s3://...` with a synthetic set in the bucket and a `learn:` row whose k-shot guide,
    tokens and set are made and cached in the bucket too: the cells of the same grid run into a directory."""
    import json

    from downstream.cli import main as downstream_main

    (tmp_path / "small.yaml").write_text(
        "learn:\n  max_steps: 1\n  batch_size: 1\n  num_inference_steps: 2\n"
        "generate:\n  images_per_class: 2\n  shard_size: 6\n  num_inference_steps: 2\n  batch_size: 6\n"
    )
    argv = ["fewshot", "--dataset", "fashion-mnist", "--labels", str(labels3), "--synthetic", f"t={bucket_build}",
            "--synthetic", f"k=learn:toy+{tmp_path / 'small.yaml'}", "--shots", "0,2", "--trials", "1",
            "--model", "resnet18", "--model-kwargs", '{"channels": [8, 8, 16, 16], "stem_width": 8}',
            "--image-size", "16", "--steps", "2", "--no-progress"]  # fmt: skip
    assert downstream_main([*argv, "--out", str(tmp_path / "grid")]) == 0
    assert downstream_main([*argv, "--out", f"s3://{s3.bucket}/grid"]) == 0
    objects = s3.objects("grid")
    keep = ("set", "shots", "trial", "top1", "top5", "steps", "train_images", "trained", "config_hash", "guide_top1")
    remote = {k: {f: json.loads(v).get(f) for f in keep} for k, v in objects.items() if k.startswith("cells/")}
    local = {f"cells/{p.name}": {f: json.loads(p.read_text()).get(f) for f in keep}
             for p in (tmp_path / "grid" / "cells").iterdir()}  # fmt: skip
    assert len(remote) == 6 and remote == local
    assert {"results.json", "results.md", "results.png", "manifest.json"} <= set(objects)
    learned = [k for k in objects if k.startswith("learned/k/")]
    assert any(k.endswith("guide/config.json") for k in learned) and any(k.endswith(".tar") for k in learned)
    assert not [k for k in objects if ".tmp" in k]
    # a rerun finds every cell (and the learned row's cache) in the bucket: nothing is trained again
    assert downstream_main([*argv, "--out", f"s3://{s3.bucket}/grid"]) == 0
    assert {k: v for k, v in s3.objects("grid").items() if k.startswith("cells/")} == {
        k: v for k, v in objects.items() if k.startswith("cells/")
    }
