"""Loading the shards into users' training loops: the recipes the README gives, run on a real generated set."""

from __future__ import annotations

import json

import pytest
import torch

from augment.cli import main


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """`augment generate` output: 3 classes × 4 images in 2-image shards (toy generator, 2 steps)."""
    out = tmp_path_factory.mktemp("set") / "run"
    labels = out.parent / "fm3.txt"
    labels.write_text("0\tt-shirt\n2\tpullover\n4\tcoat\n")
    assert (
        main(
            [
                "generate",
                "--preset",
                "toy",
                "--labels",
                str(labels),
                "--no-tokens",
                "--out",
                str(out),
                "--images-per-class",
                "4",
                "--shard-size",
                "2",
                "--batch-size",
                "4",
                "--steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


EXPECTED = sorted((c, i) for c in range(3) for i in range(4))


def test_dataloader_with_workers_reads_every_sample_once(shards):
    """README recipe: augment.data.shards.webdataset_pipeline in a DataLoader with worker processes."""
    from torchvision.transforms.functional import pil_to_tensor

    from augment.data.shards import webdataset_pipeline

    ds = webdataset_pipeline(shards, shuffle=100).map_tuple(pil_to_tensor, lambda c: c, lambda m: m["index"])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    seen = []
    for images, cls, index in loader:
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8
        seen += list(zip(cls.tolist(), index.tolist()))
    assert sorted(seen) == EXPECTED  # split by worker: no sample twice, none missing


def test_pipeline_never_unpickles_a_member(shards, tmp_path):
    """A `.pickle` member in a shard stays bytes (webdataset's default decoders would unpickle it)."""
    import io
    import pickle
    import tarfile

    from augment.data.shards import webdataset_pipeline

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    src = sorted((shards / "shards").glob("*.tar"))[0]
    (tmp_path / "shards").mkdir()
    with tarfile.open(src) as tin, tarfile.open(tmp_path / "shards" / "x.tar", "w") as tout:
        for m in tin:
            tout.addfile(m, tin.extractfile(m))
            if m.name.endswith(".cls"):
                data = pickle.dumps(Boom())
                info = tarfile.TarInfo(m.name.replace(".cls", ".pickle"))
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
    assert len(list(webdataset_pipeline(tmp_path, shuffle=0))) == 2


def test_hf_datasets_streaming_reads_the_shards(shards):
    """README recipe: `datasets.load_dataset("webdataset", ..., streaming=True)`."""
    import datasets

    ds = datasets.load_dataset(
        "webdataset", data_files={"train": str(shards / "shards" / "*.tar")}, split="train", streaming=True
    )
    rows = [(int(r["cls"]), r["json"]["index"], r["png"].size) for r in ds]
    assert sorted((c, i) for c, i, _ in rows) == EXPECTED and {s for _, _, s in rows} == {(32, 32)}


def test_timm_wds_reader_reads_info_json(shards):
    """README recipe: timm's `wds/` reader takes the split from OUT/_info.json."""
    from timm.data import create_dataset

    ds = create_dataset("wds/augment", root=str(shards), split="train", is_training=False)
    assert len(ds) == 12
    rows = [(img.size, int(target)) for img, target in ds]
    assert sorted(t for _, t in rows) == sorted(c for c, _ in EXPECTED) and {s for s, _ in rows} == {(32, 32)}
    train = create_dataset("wds/augment", root=str(shards), split="train", is_training=True, batch_size=4)
    targets = [int(t) for _, t in train]  # shuffled, as the README's training recipe reads it
    assert len(targets) >= 12 and set(targets) == {0, 1, 2}
    info = json.loads((shards / "_info.json").read_text())["splits"]["train"]
    assert all((shards / f).is_file() for f in info["filenames"])


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory):
    """The toy world's ten classes, 100 images each (plain prompts, 2 sampler steps: the layout is what counts)."""
    out = tmp_path_factory.mktemp("toy") / "run"
    argv = ["generate", "--preset", "toy", "--labels", "manifests/fashion-mnist.txt", "--no-tokens", "--out", str(out),
            "--steps", "2", "--batch-size", "100", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out


def distinct_classes(labels, batch: int = 64, batches: int = 10) -> list[int]:
    """Distinct classes in each of the first `batches` batches of `batch` consecutive labels."""
    labels = list(labels)
    return [len(set(labels[k * batch : (k + 1) * batch])) for k in range(batches)]


def test_readme_loader_recipe_gives_mixed_batches_from_the_first_one(toy_set):
    """The README's DataLoader recipe (8 workers, batch 64, shuffle 1000) on ten classes: every one of the
    first ten batches holds at least 8 of them (class-pure shards gave 1-2 per batch)."""
    from augment.data.shards import webdataset_pipeline

    ds = webdataset_pipeline(toy_set, shuffle=1000, meta=False)
    loader = torch.utils.data.DataLoader(ds.map_tuple(lambda im: 0, int), batch_size=64, num_workers=8)
    counts = []
    for _, cls in loader:
        counts.append(len(set(cls.tolist())))
        if len(counts) == 10:
            break
    assert len(counts) == 10 and min(counts) >= 8, counts


def test_hf_streaming_and_timm_reader_give_mixed_batches(toy_set):
    import datasets
    from timm.data import create_dataset

    stream = datasets.load_dataset(
        "webdataset", data_files={"train": str(toy_set / "shards" / "*.tar")}, split="train", streaming=True
    )
    hf = distinct_classes(int(row["cls"]) for row in stream)
    assert min(hf) >= 8, hf
    tm = create_dataset("wds/augment", root=str(toy_set), split="train", is_training=True, batch_size=64)
    timm_counts = distinct_classes(int(t) for _, t in tm)
    assert min(timm_counts) >= 8, timm_counts
