"""Check a run directory against its own records: every shard against its completion marker (sha256, sample
count, keys, extensions), every learned token (loads, one row, its recorded sha256 and the generator's text
encoder), `_info.json` against the markers; and list what a rerun would redo. Reads tar members as bytes and
token files with safetensors: nothing is unpickled."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from augment.data.shards import (
    OLD_LAYOUT,
    ShardError,
    marker_path,
    old_layout,
    plan_units,
    read_marker,
    read_tar,
    sample_key,
    shards_dir,
)
from augment.data.tokens_io import WEIGHTS
from augment.errors import UserError
from augment.run.manifest import read_manifest
from augment.run.storage import converts_storage_errors, from_remote, out_path


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # "file: what is wrong"
    redo: list[str] = field(default_factory=list)  # what a rerun would (re)make
    checked: dict[str, int] = field(default_factory=dict)
    older: str | None = None  # the older format OUT was written in, and what to do, when it is one

    @property
    def ok(self) -> bool:
        return not self.problems


@converts_storage_errors()
def verify_run(out: str | Path) -> Report:
    out = out_path(out, "out")
    if not out.is_dir():
        raise UserError(f"{out}: not a directory")
    if not any((out / name).exists() for name in ("manifest.json", "tokens", "shards")):
        raise UserError(f"{out}: not a learn/generate/build output (no manifest.json, tokens/ or shards/)")
    for name in ("tokens", "shards"):
        if (out / name).exists() and not (out / name).is_dir():
            raise UserError(f"{out / name}: is a file; a run directory's {name}/ is a directory")
    manifest = read_manifest(out)
    for section in ("learn", "generate"):
        if not isinstance(manifest.get(section, {}), dict):
            raise UserError(f"{out / 'manifest.json'}: its {section!r} section is not a mapping")
    report = Report()
    _verify_tokens(out, manifest.get("learn", {}), report)
    if old_layout(out) is not None:  # checked as that version wrote it: whole shards, not this version's plan
        report.older = (f"{OLD_LAYOUT}: each shard is checked against its marker; the readers read it as it is; "
                        "to make the set in the current format, generate into another --out")  # fmt: skip
        _verify_old_shards(out, report)
    else:
        _verify_shards(out, manifest.get("generate", {}), report)
    return report


def _verify_old_shards(out: Path, report: Report) -> None:
    """Shards of augment < 0.2: each tar whole (sha256 and sample count of its marker), one class per shard."""
    markers = sorted(shards_dir(out).glob("*.json"))
    report.checked["shards"] = len(markers)
    for m in markers:
        marker = _marker(m, report)
        if marker is None:
            continue
        tar = m.with_suffix(".tar")
        if not tar.is_file():
            report.problems.append(f"{tar}: missing (its marker exists)")
        elif hashlib.sha256(tar.read_bytes()).hexdigest() != marker.get("sha256"):
            report.problems.append(f"{tar}: sha256 differs from its marker (truncated or changed)")
        else:
            try:
                samples = [key for key, _ in read_tar(tar)]
            except (tarfile.TarError, EOFError, ShardError) as e:
                report.problems.append(f"{tar}: not a readable tar ({e})")
                continue
            if len(samples) != marker.get("count"):
                report.problems.append(f"{tar}: {len(samples)} samples, marker says {marker.get('count')}")
            elif len({k.split("_")[0] for k in samples}) > 1:
                report.problems.append(f"{tar}: more than one class in a class-pure shard")


SDXL_ROWS = {"clip_l", "clip_g"}  # diffusers' SDXL textual-inversion rows


def _verify_tokens(out: Path, learn: dict, report: Report) -> None:
    from safetensors.torch import load

    expected_te = learn.get("text_encoder")
    n = 0
    for d in sorted(p for p in (out / "tokens").glob("*") if p.is_dir() and not p.name.endswith(".tmp")):
        n += 1
        weights, meta_path = d / WEIGHTS, d / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load(weights.read_bytes())
        except Exception as e:  # noqa: BLE001  (missing file, bad JSON, safetensors' own error type)
            if from_remote(e):  # the store did not answer: not a problem of the token
                raise
            report.problems.append(
                f"{d}: token unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            )
            report.redo.append(f"learn {d.name} (delete {d} first)")
            continue
        names = sorted(tensors) if set(tensors) == SDXL_ROWS else [meta.get("token")]  # SDXL: clip_l and clip_g
        if sorted(tensors) != sorted(names) or any(tensors[k].dim() != 2 or tensors[k].shape[0] != 1 for k in names):
            report.problems.append(
                f"{weights}: expected one [1, dim] tensor named {meta.get('token')!r} (or SDXL's clip_l and clip_g)"
            )
        if "sha256" in meta and hashlib.sha256(weights.read_bytes()).hexdigest() != meta["sha256"]:
            report.problems.append(f"{weights}: sha256 differs from meta.json's (changed after learning)")
        if expected_te and meta.get("text_encoder") not in (None, expected_te):
            report.problems.append(
                f"{d}: learned with another text encoder ({meta.get('text_encoder')}, manifest: {expected_te})"
            )
    report.checked["tokens"] = n


def _verify_shards(out: Path, generate: dict, report: Report) -> None:
    labels, cfg = generate.get("labels"), (generate.get("config") or {}).get("generate")
    markers = sorted(shards_dir(out).glob("*.json"))
    report.checked["shards"] = len(markers)
    counted = {}
    for m in markers:
        marker = _marker(m, report)
        if marker is None:
            continue
        tar = m.with_suffix(".tar")
        problem = _check_tar(tar, marker)
        if problem:
            report.problems.append(f"{tar}: {problem}")
            report.redo.append(f"unit {marker.get('unit', m.stem)} (delete {m} first)")
        else:
            counted[tar.name] = marker["count"]
    for tar in sorted(shards_dir(out).glob("*.tar")):
        if not tar.with_suffix(".json").is_file():
            report.redo.append(f"unit {tar.stem} (its tar has no marker: a rerun writes it again)")
    if labels is not None and cfg is not None:
        from augment.labels import slugify

        setname = generate.get("set") or slugify(Path(generate.get("label_file", "labels")).stem) or "labels"
        for u in plan_units(range(len(labels)), cfg["images_per_class"], cfg["shard_size"], cfg.get("seed", 0)):
            path = marker_path(out, setname, u)
            marker = read_marker(out, setname, u)
            if not path.is_file():
                report.redo.append(f"unit {u.name(setname)} (missing)")
            elif marker is not None and marker.get("samples") != [list(x) for x in u.samples]:
                report.problems.append(f"{path}: holds other samples than the plan's unit {u.name(setname)}")
    info_path = out / "_info.json"
    if info_path.is_file():
        try:
            split = json.loads(info_path.read_text())["splits"]["train"]
            listed = dict(zip((Path(f).name for f in split["filenames"]), split["shard_lengths"], strict=True))
            total = int(split["num_samples"])
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            report.problems.append(f"{info_path}: unreadable or incomplete ({type(e).__name__}: {e})")
            return
        if (
            listed != {k: v for k, v in counted.items() if k in listed}
            or len(listed) != len(counted)
            or total != sum(listed.values())
        ):
            report.problems.append(f"{info_path}: does not match the shard markers")


MARKER_KEYS = {"count": int, "sha256": str}  # what every marker has had, in every layout


def _marker(path: Path, report: Report) -> dict | None:
    """A marker as a mapping with its keys, or None with the problem reported."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        report.problems.append(f"{path}: marker unreadable ({type(e).__name__})")
        return None
    if not isinstance(marker, dict):
        report.problems.append(f"{path}: marker is not a JSON object")
        return None
    missing = [k for k, kind in MARKER_KEYS.items() if not isinstance(marker.get(k), kind)]
    if missing:
        report.problems.append(f"{path}: marker lacks {', '.join(missing)} (or holds another type)")
        return None
    samples = marker.get("samples", [])
    if not isinstance(samples, list) or not all(isinstance(x, list) and len(x) == 2 for x in samples):
        report.problems.append(f"{path}: marker's samples are not [position, index] pairs")
        return None
    return marker


def _check_tar(tar: Path, marker: dict) -> str | None:
    """What is wrong with one finished shard, or None."""
    if not tar.is_file():
        return "missing (its marker exists)"
    data = tar.read_bytes()
    if hashlib.sha256(data).hexdigest() != marker.get("sha256"):
        return "sha256 differs from its marker (truncated or changed)"
    try:
        samples = {key: set(members) for key, members in read_tar(tar)}
    except (tarfile.TarError, EOFError, ShardError) as e:
        return f"not a readable tar ({e})"
    if len(samples) != marker.get("count"):
        return f"{len(samples)} samples, marker says {marker.get('count')}"
    expected = [sample_key(p, i) for p, i in marker.get("samples", [])]
    if list(samples) != expected:
        return "sample keys are not the unit's (its marker's samples, in order)"
    for key, exts in samples.items():
        if not ({"cls", "json"} <= exts and exts & {"jpg", "png"}):
            return f"sample {key} lacks an image, cls or json ({', '.join(sorted(exts))})"
    return None
