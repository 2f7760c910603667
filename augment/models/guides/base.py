"""What every guide backend shares: the `Guide` module, its `Preprocess`, and the `Backend` record a backend
module registers (augment.models.guides lists them; one module per backend).

Every guide takes image tensors in [0, 1] and does its own differentiable preprocessing (resize, centre crop,
normalise: the paper's ψ_C), so gradients flow from the logits back to the generated pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # (H, W) the classifier sees
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    antialias: bool = True  # when downscaling (torchvision's and PIL's resize do; kornia's, the paper code's, not)

    @classmethod
    def from_data_config(cls, cfg: dict) -> Preprocess:
        """From a timm data config (`resolve_data_config`, or a saved classifier's config.json)."""
        return cls(
            tuple(cfg["input_size"][1:]),
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
            float(cfg.get("crop_pct", 1.0)),
            cfg.get("interpolation", "bilinear"),
        )


class Guide(nn.Module):
    """A classifier with its labels and differentiable preprocessing; forward(images in [0,1]) → logits."""

    def __init__(
        self, model: nn.Module, labels: list[str], preprocess: Preprocess, spec: str, logits_of=None, info=None
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.labels = list(labels)
        self.pre = preprocess
        self.spec = spec
        self.info = dict(info or {})  # how it was built (model class, pooling, where its preprocessing came from)
        self._logits_of = logits_of or (lambda out: out)
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize the short side to size/crop_pct, centre-crop to size, normalise. Differentiable."""
        h, w = self.pre.size
        x = images.to(self.mean.dtype)
        scale = max(h, w) / self.pre.crop_pct
        short = min(x.shape[-2:])
        if abs(short - scale) > 0.5 or x.shape[-2] != x.shape[-1]:
            ratio = scale / short
            new = (max(h, round(x.shape[-2] * ratio)), max(w, round(x.shape[-1] * ratio)))
            mode = self.pre.interpolation if self.pre.interpolation in ("bilinear", "bicubic") else "bilinear"
            x = F.interpolate(x, size=new, mode=mode, antialias=self.pre.antialias, align_corners=False)
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        x = x[..., top : top + h, left : left + w]
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._logits_of(self.model(self.preprocess(images)))

    def describe(self) -> dict:
        """The guide as meta.json and the manifest record it: spec, preprocessing and how it was built."""
        p = self.pre
        return {"spec": self.spec, "classes": len(self.labels), "input_size": list(p.size), "crop_pct": p.crop_pct,
                "interpolation": p.interpolation, "antialias": p.antialias, "mean": list(p.mean), "std": list(p.std),
                **self.info}  # fmt: skip


@dataclass(frozen=True)
class Backend:
    """One kind of guide: the spec prefix it answers to and what the rest of the house asks of it.

    `load(name, spec, class_names)` → a Guide (UserError when it cannot); `parse(name, spec)` checks the part after
    the prefix before anything loads (UserError); `hub_repo(name)` → (hub repo id, a file every copy has) when
    the guide loads from the Hugging Face Hub, else None; `local`: the name may be a local directory (before any
    `?options`), which manifests and hashes then name by content, not by path; `resolve(spec, config)` → the
    spec as it loads under a RunConfig (a `clip:` spec takes the config's `clip_templates`)."""

    prefix: str
    form: str  # how messages show it: "hf:ID_OR_DIR"
    load: Callable[[str, str, list[str] | None], Guide]
    parse: Callable[[str, str], object] | None = None
    hub_repo: Callable[[str], tuple[str, str] | None] | None = None
    local: bool = False
    resolve: Callable[[str, object], str] | None = None


REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a backend (each backend module calls this once, at import)."""
    REGISTRY[backend.prefix] = backend
    return backend


def split_options(name: str) -> tuple[str, dict[str, str]]:
    """'ID_OR_DIR?a=1&b=2' → ('ID_OR_DIR', {'a': '1', 'b': '2'})."""
    path, _, query = name.partition("?")
    return path, dict(kv.partition("=")[::2] for kv in query.split("&") if kv)


def hub_id(path: str) -> str | None:
    """`path` when it names a Hugging Face Hub repo, None when it is a local path (existing, or shaped like a
    path: no hub id has a leading '/', '.' or '~', or two '/')."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(path).expanduser().exists():
        return None
    try:
        validate_repo_id(path)
    except HFValidationError:
        return None
    return path
