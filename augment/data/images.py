"""Images and labels as the trainer sees them: picklable image sources (files, encoded bytes, HF rows,
Fashion-MNIST arrays) and `Split`, a source plus one label (a label-set position) per image."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from augment.errors import UserError


class ImageSource(Protocol):
    """Anything with a length that returns image i as an RGB PIL image."""

    def __len__(self) -> int: ...
    def __call__(self, i: int) -> Image.Image: ...


UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # PIL: not an image, truncated, a bomb


class FileImages:
    """Images read from files on demand."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int) -> Image.Image:
        try:
            with Image.open(self.paths[i]) as im:
                return im.convert("RGB")
        except UNREADABLE as e:
            first = (str(e).splitlines() or [""])[0]
            raise UserError(f"{self.paths[i]}: not a readable image ({type(e).__name__}: {first})") from None

    def unreadable(self) -> list[str]:
        """The files whose header PIL cannot read (not an image, empty, a bomb): cheap, no pixel is decoded."""
        bad = []
        for path in self.paths:
            try:
                with Image.open(path):
                    pass
            except UNREADABLE:
                bad.append(path)
        return bad


class EncodedImages:
    """Images held as encoded bytes (jpg/png) in memory, decoded on demand."""

    def __init__(self, blobs: list[bytes]):
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def __call__(self, i: int) -> Image.Image:
        with Image.open(io.BytesIO(self.blobs[i])) as im:
            return im.convert("RGB")


class HFImages:
    """Rows of a Hugging Face `datasets.Dataset`, image column decoded to PIL."""

    def __init__(self, dataset: Any, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __call__(self, i: int) -> Image.Image:
        return self.dataset[int(i)][self.column].convert("RGB")


class GreyImages:
    """Fashion-MNIST: (N, 28, 28) uint8, served padded to 32×32 RGB like `augment.toy.data.to_rgb32`."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(np.pad(self.array[i], 2)).convert("RGB")

    def rgb_uint8(self, indices: np.ndarray) -> np.ndarray:
        """(n, 3, 32, 32) uint8, the exact pixels of `to_rgb32` (which is this divided by 255)."""
        x = np.pad(self.array[indices], ((0, 0), (2, 2), (2, 2)))
        return np.repeat(x[:, None], 3, axis=1)


class Subset:
    """Items `indices` of another source."""

    def __init__(self, source: ImageSource, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __call__(self, i: int) -> Image.Image:
        return self.source(int(self.indices[i]))


class Concat:
    """Several sources one after another."""

    def __init__(self, sources: list[ImageSource]):
        self.sources = sources
        self.ends = np.cumsum([len(s) for s in sources])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __call__(self, i: int) -> Image.Image:
        part = int(np.searchsorted(self.ends, i, side="right"))
        start = int(self.ends[part - 1]) if part else 0
        return self.sources[part](i - start)


@dataclass
class Split:
    """Images and their labels (label-set positions)."""

    images: ImageSource
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        indices = np.asarray(indices, dtype=np.int64)
        return Split(Subset(self.images, indices), self.labels[indices])

    def to_uint8(self, size: int) -> torch.Tensor:
        """All images as a (N, 3, size, size) uint8 tensor (resized if needed): small data trained in memory."""
        source, idx = self.images, np.arange(len(self))
        while isinstance(source, Subset):
            source, idx = source.source, source.indices[idx]
        if isinstance(source, GreyImages):
            x = torch.from_numpy(source.rgb_uint8(idx))
            if size != 32:
                x = (
                    torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
                    .round()
                    .clamp(0, 255)
                    .to(torch.uint8)
                )
            return x
        out = torch.empty((len(self), 3, size, size), dtype=torch.uint8)
        for i in range(len(self)):
            im = self.images(i)
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            out[i] = torch.from_numpy(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy())
        return out


def concat(splits: list[Split]) -> Split:
    """One split holding the images of several."""
    return Split(Concat([s.images for s in splits]), np.concatenate([s.labels for s in splits]).astype(np.int64))
