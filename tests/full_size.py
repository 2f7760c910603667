"""Full-size test models: the paper's CUB guide layout with CUB's 200 labels (see augment.testing)."""

from __future__ import annotations

from pathlib import Path

from augment import testing
from augment.labels import read_label_set

ROOT = Path(__file__).resolve().parent.parent
CUB_LABELS = ROOT / "manifests" / "cub200.txt"


def save_vit_mae_cub(out_dir: Path, **kw) -> Path:
    return testing.save_vit_mae_cub(out_dir, [c.name for c in read_label_set(CUB_LABELS).classes], **kw)
