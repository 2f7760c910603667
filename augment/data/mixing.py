"""Real + synthetic batches for your own training loop, with a fixed share of real images in every batch
(what `downstream --real-fraction` trains with).

    from torch.utils.data import ConcatDataset, DataLoader
    data = ConcatDataset([real_dataset, synthetic_dataset])          # real first
    sampler = MixedBatchSampler(len(real_dataset), len(synthetic_dataset), batch_size=64, real_fraction=0.5,
                                steps=10_000, seed=0)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=8)

Each part walks through successive random permutations of itself, so every real image is seen equally often
however few there are (3 shots per class) and however many synthetic images there are.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


def index_batches(n: int, batch: int, steps: int, g: torch.Generator) -> list[torch.Tensor]:
    """`steps` batches of exactly `batch` indices, walking through successive permutations of range(n)."""
    need = steps * batch
    perms = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))])
    return list(perms[:need].view(steps, batch))


def mixed_batches(
    n_real: int, n: int, batch: int, steps: int, real_fraction: float, g: torch.Generator
) -> list[torch.Tensor]:
    """`steps` batches of `batch` indices into range(n), round(real_fraction · batch) of them from the real
    images range(n_real) and the rest from the synthetic range(n_real, n), each walking its own permutations."""
    k = min(batch, max(0, round(real_fraction * batch)))
    real = index_batches(n_real, k, steps, g) if k else []
    synthetic = index_batches(n - n_real, batch - k, steps, g) if k < batch else []
    empty = torch.zeros(0, dtype=torch.long)
    return [torch.cat([real[i] if k else empty, synthetic[i] + n_real if k < batch else empty]) for i in range(steps)]


class MixedBatchSampler(Sampler[list[int]]):
    """A `batch_sampler` for DataLoader over ConcatDataset([real, synthetic]): `steps` batches, each with
    round(real_fraction · batch_size) real indices; deterministic for a seed."""

    def __init__(self, n_real: int, n_synthetic: int, batch_size: int, real_fraction: float, steps: int, seed: int = 0):
        if not 0 <= real_fraction <= 1:
            raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}")
        k = round(real_fraction * batch_size)
        if (k and n_real < 1) or (k < batch_size and n_synthetic < 1):
            raise ValueError("a part that must fill batches is empty")
        self.n_real, self.n, self.batch_size = n_real, n_real + n_synthetic, batch_size
        self.real_fraction, self.steps, self.seed = real_fraction, steps, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for b in mixed_batches(self.n_real, self.n, self.batch_size, self.steps, self.real_fraction, g):
            yield b.tolist()
