"""The dataset card: OUT/README.md (Hugging Face dataset card with YAML header) and OUT/grid/*.png, one image
grid per class, written once every unit of a generate run exists."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from augment.data.shards import class_counts, image_bytes, parse_key, read_tar, tar_files
from augment.labels import LabelSet
from augment.run.atomic import write_bytes
from augment.run.storage import out_path


def class_grids(
    out: str | Path, labels: LabelSet, per_class: int = 8, max_classes: int | None = None, tile: int = 128
) -> dict[int, Path]:
    """OUT/grid/c{position:04d}.png: the first `per_class` images of each class side by side, as tiles of at
    most `tile` pixels; only for the first `max_classes` classes (the card shows those)."""
    from PIL import Image

    wanted = range(len(labels) if max_classes is None else min(max_classes, len(labels)))
    by_class: dict[int, list] = {}
    for url in tar_files(out):
        if all(len(by_class.get(p, [])) >= per_class for p in wanted):  # only as many shards as needed are read
            break
        for key, members in read_tar(url):
            position = parse_key(key)[0]
            if position not in wanted:
                continue
            imgs = by_class.setdefault(position, [])
            if len(imgs) < per_class and image_bytes(members) is not None:
                im = Image.open(io.BytesIO(image_bytes(members))).convert("RGB")
                im.thumbnail((tile, tile))
                imgs.append(im)
    grid_dir = out_path(out) / "grid"
    grid_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for position, imgs in sorted(by_class.items()):
        w, h = imgs[0].size
        grid = Image.new("RGB", (w * len(imgs), h), "white")
        for k, im in enumerate(imgs):
            grid.paste(im, (k * w, 0))
        paths[position] = grid_dir / f"c{position:04d}.png"
        png = io.BytesIO()
        grid.save(png, format="PNG")
        write_bytes(paths[position], png.getvalue())
    return paths


def class_table(out: Path, labels: LabelSet) -> list[tuple[int, int, float | None]]:
    """(position, images, mean guide probability or None) per class, from the shard markers."""
    counts, probs = class_counts(out)
    return [(p, counts.get(p, 0), probs[p] / counts[p] if p in probs else None) for p in range(len(labels))]


def write_card(
    out: str | Path,
    labels: LabelSet,
    info: dict[str, Any],
    per_class: int = 8,
    max_grids: int = 50,
    command: str = "augment generate",
) -> Path:
    """OUT/README.md describing the set (how it was made, how to load it): per class its image count, the
    guide's mean probability when scored, and an image grid for the first `max_grids` classes."""
    out = out_path(out)
    grids = class_grids(out, labels, per_class, max_classes=max_grids)
    split = json.loads((out / "_info.json").read_text())["splits"]["train"]
    tokens = "learned class tokens" if info.get("tokens") else "plain prompts (no learned tokens)"
    table = class_table(out, labels)
    scored = any(prob is not None for _, _, prob in table)
    lines = [
        "---",
        "task_categories:",
        "- image-classification",
        "tags:",
        "- synthetic",
        "- webdataset",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: shards/*.tar",
        "---",
        "",
        f"# Synthetic {labels.name}",
        "",
        f"{split['num_samples']} images of {len(labels)} classes in {len(split['filenames'])} webdataset shards, "
        f"generated with `{info.get('generator', '?')}` and {tokens} (`{command}`; "
        "manifest.json has the full config).",
        "",
        "Each sample: `jpg`/`png` image, `cls` (class position in the label set), `json` (class, index, seed, "
        "prompt, token). Every shard mixes many classes, so batches do from the first one on.",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("webdataset", data_files={"train": "shards/*.tar"}, split="train")',
        "# or: augment.data.shards.webdataset_pipeline('shards', shuffle=1000)",
        "```",
        "",
        "| class | images |" + (" mean guide probability |" if scored else "") + " grid |",
        "|---|---|" + ("---|" if scored else "") + "---|",
    ]
    for position, count, prob in table:
        grid = f"![]({grids[position].relative_to(out).as_posix()})" if position in grids else ""
        row = f"| {labels.classes[position].name} | {count} |"
        if scored:
            row += f" {'' if prob is None else f'{prob:.3f}'} |"
        lines.append(f"{row} {grid} |")
    path = out / "README.md"
    from augment.run.atomic import write_text

    return write_text(path, "\n".join(lines) + "\n")
