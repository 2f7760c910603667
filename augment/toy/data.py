"""Fashion-MNIST from its idx files: Debian's package, a path of the user's, or a download when online."""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np

from augment.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (gzipped or not) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path}: not a uint8 idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_dir(root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The directory holding the four idx files: `root`, $FASHION_MNIST_DIR, Debian's, else a download cache."""
    candidates = [Path(p) for p in (root, os.environ.get("FASHION_MNIST_DIR")) if p] + [DEBIAN_DIR]
    for d in candidates:
        if all((d / name).exists() or (d / name[:-3]).exists() for name in FILES.values()):
            return d
    if root is not None or not download:
        raise UserError(
            f"Fashion-MNIST idx files not found in {candidates[0]}; "
            "install Debian's dataset-fashion-mnist or pass the directory holding them"
        )
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "augment" / "fashion-mnist"
    cache.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if not (cache / name).exists():
            try:
                urllib.request.urlretrieve(MIRROR + name, cache / (name + ".part"))
            except OSError as e:
                raise UserError(
                    f"Fashion-MNIST not found locally and download failed ({e}); install Debian's dataset-fashion-mnist"
                ) from None
            (cache / (name + ".part")).rename(cache / name)
    return cache


def load(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split."""
    d = find_dir(root)
    out = []
    for kind in ("images", "labels"):
        name = FILES[(split, kind)]
        path = d / name if (d / name).exists() else d / name[:-3]
        out.append(read_idx(path))
    return out[0], out[1].astype(np.int64)


def to_rgb32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 → (N, 3, 32, 32) float32 in [0, 1]: padded by 2 pixels, grey copied to RGB."""
    x = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    return np.repeat(x[:, None], 3, axis=1)
