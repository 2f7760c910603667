"""The dataset card: OUT/README.md (Hugging Face dataset card with YAML header) and OUT/grid/*.png, one image
grid per class, written once every unit of a generate run exists."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from augment.labels import LabelSet
from augment.shards import tar_files


def class_grids(out: str | Path, labels: LabelSet, per_class: int = 8) -> dict[int, Path]:
    """OUT/grid/c{position:04d}.png: the first `per_class` images of each class side by side."""
    from PIL import Image

    by_class: dict[int, list] = {}
    for url in tar_files(out):
        position = int(Path(url).stem.rsplit("-", 2)[1][1:])
        if len(by_class.get(position, [])) >= per_class:  # only as many shards as needed are read
            continue
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext in ("jpg", "png"):
                    imgs = by_class.setdefault(int(key[1:5]), [])
                    if len(imgs) < per_class:
                        imgs.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
    grid_dir = Path(out) / "grid"
    grid_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for position, imgs in sorted(by_class.items()):
        w, h = imgs[0].size
        grid = Image.new("RGB", (w * len(imgs), h), "white")
        for k, im in enumerate(imgs):
            grid.paste(im, (k * w, 0))
        paths[position] = grid_dir / f"c{position:04d}.png"
        grid.save(paths[position])
    return paths


def write_card(out: str | Path, labels: LabelSet, info: dict[str, Any], per_class: int = 8,
               max_grids: int = 50) -> Path:
    """OUT/README.md describing the set (how it was made, how to load it) with grids for the first classes."""
    out = Path(out)
    grids = class_grids(out, labels, per_class)
    split = json.loads((out / "_info.json").read_text())["splits"]["train"]
    tokens = "learned class tokens" if info.get("tokens") else "plain prompts (no learned tokens)"
    lines = [
        "---", "task_categories:", "- image-classification", "tags:", "- synthetic", "- webdataset",
        "configs:", "- config_name: default", "  data_files:", "  - split: train", "    path: shards/*.tar", "---",
        "", f"# Synthetic {labels.name}", "",
        f"{split['num_samples']} images of {len(labels)} classes in {len(split['filenames'])} webdataset shards, "
        f"generated with `{info.get('generator', '?')}` and {tokens} (`augment generate`).", "",
        "Each sample: `jpg`/`png` image, `cls` (class position in the label set), `json` (class, index, seed, "
        "prompt, token). Shards hold one class each: shuffle shards *and* samples when training.", "",
        "```python", "import datasets",
        'ds = datasets.load_dataset("webdataset", data_files={"train": "shards/*.tar"}, split="train")',
        "# or: augment.shards.webdataset_pipeline('shards', shuffle=1000)", "```", "",
        "| class | images |", "|---|---|",
    ]
    for position, path in list(grids.items())[:max_grids]:
        lines.append(f"| {labels.classes[position].name} | ![]({path.relative_to(out).as_posix()}) |")
    if len(grids) > max_grids:
        lines.append(f"| … {len(grids) - max_grids} more classes in grid/ | |")
    path = out / "README.md"
    tmp = path.with_name("README.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
