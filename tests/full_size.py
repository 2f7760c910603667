"""Full-size test models: the paper's CUB guide layout with CUB's 200 labels (see augment.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from augment import testing
from augment.devices import SLOW_ON_CPU, cpu_slowdown
from augment.labels import read_label_set

ROOT = Path(__file__).resolve().parent.parent
CUB_LABELS = ROOT / "manifests" / "cub200.txt"


def save_vit_mae_cub(out_dir: Path, **kw) -> Path:
    return testing.save_vit_mae_cub(out_dir, [c.name for c in read_label_set(CUB_LABELS).classes], **kw)


# Full-size SD-1.4 in bf16 costs minutes where the CPU has native bf16 and an hour or more where it has not
# (AVX2 only: a bf16 matrix product ~80x slower than fp32). Those runs are kept where they are cheap; the same
# checks run on every CPU at sd14-narrow's size (tests/test_full_size.py).
BF16_SLOWDOWN = cpu_slowdown(torch.bfloat16)
native_bf16 = pytest.mark.skipif(
    BF16_SLOWDOWN >= SLOW_ON_CPU,
    reason=f"full-size bf16: this CPU runs bf16 {BF16_SLOWDOWN:.0f}x slower than fp32 (the sd14-narrow case checks the same)",
)
