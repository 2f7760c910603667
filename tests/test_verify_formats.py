"""`augment verify` on an output written by an older augment: named as that format, checked as that version
wrote it (each shard against its marker), never called damaged, and no rerun suggested that would refuse.

The augment < 0.2 layout, as its shards.py documented it (git show ad4d816^:augment/data/shards.py, lines 1-9):
OUT/shards/<set>-c{position:04d}-{shard:04d}.tar, one class per shard, samples keyed c{position:04d}_{i:06d}
with jpg, cls and json; the marker beside it holds count, sha256, the seeds rule and the config hash."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from augment.cli import main


def _old_run(out, classes=2, per_shard=3):
    shards = out / "shards"
    shards.mkdir(parents=True)
    for c in range(classes):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(per_shard):
                for ext, data in (("jpg", b"\xff\xd8 not decoded here"), ("cls", str(c).encode()), ("json", b"{}")):
                    info = tarfile.TarInfo(f"c{c:04d}_{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        data = buf.getvalue()
        (shards / f"toy-c{c:04d}-0000.tar").write_bytes(data)
        marker = {"count": per_shard, "sha256": hashlib.sha256(data).hexdigest(), "config_hash": "0" * 16,
                  "seeds": "torch.Generator().manual_seed(...)"}  # fmt: skip
        (shards / f"toy-c{c:04d}-0000.json").write_text(json.dumps(marker))
    return shards


def test_an_older_whole_output_is_named_as_such_not_damaged(tmp_path, capsys):
    _old_run(tmp_path / "old")
    assert main(["verify", str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out
    assert "older format: class-pure shards of augment < 0.2" in out and "another --out" in out
    assert "problem" not in out and "a rerun would redo" not in out
    assert "ok: checked 0 tokens, 2 shards" in out


def test_an_older_output_with_a_changed_shard_is_a_problem(tmp_path, capsys):
    shards = _old_run(tmp_path / "old")
    tar = shards / "toy-c0001-0000.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    assert main(["verify", str(tmp_path / "old")]) == 1
    out = capsys.readouterr().out
    assert f"problem: {tar}: sha256 differs" in out and "a rerun would redo" not in out
