"""Guide classifiers from one spec string: `timm:NAME`, `torchvision:NAME`, `hf:ID_OR_DIR`, `ckpt:DIR`.

Every guide takes image tensors in [0, 1] and does its own differentiable preprocessing (resize, centre crop,
normalise: the paper's ψ_C), so gradients flow from the logits back to the generated pixels.
This is the only module that knows about classifier backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from augment.errors import UserError

BACKENDS = ("timm", "torchvision", "hf", "ckpt", "clip")


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


def _timm(name: str, spec: str) -> Guide:
    import timm
    from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config

    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as e:  # unknown model
        raise UserError(f"guide {spec!r}: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise UserError(
            f"guide {spec!r}: pretrained weights unreachable ({type(e).__name__}); "
            "put them in the Hugging Face cache, or save a classifier as ckpt:DIR"
        ) from None
    cfg = resolve_data_config({}, model=model)
    subset = infer_imagenet_subset(model)
    if subset:  # "tench, Tinca tinca" → matched by the label set's names
        info = ImageNetInfo(subset)
        labels = [info.index_to_description(i) for i in range(model.num_classes)]
    else:
        labels = list(model.pretrained_cfg.get("label_names") or [f"class_{i}" for i in range(model.num_classes)])
    pre = Preprocess.from_data_config(cfg)
    return Guide(model, labels, pre, spec)


def _torchvision(name: str, spec: str) -> Guide:
    from torchvision import models

    try:
        weights = models.get_model_weights(name).DEFAULT
        model = models.get_model(name, weights=weights)
    except (ValueError, KeyError) as e:
        raise UserError(f"guide {spec!r}: {e}") from None
    except (OSError, RuntimeError) as e:
        raise UserError(
            f"guide {spec!r}: pretrained weights unreachable ({type(e).__name__}); "
            "put them in $TORCH_HOME, or save a classifier as ckpt:DIR"
        ) from None
    t = weights.transforms()
    crop = t.crop_size[0]
    pre = Preprocess((crop, crop), tuple(t.mean), tuple(t.std), crop / t.resize_size[0], t.interpolation.value)
    return Guide(model, list(weights.meta["categories"]), pre, spec)


def _hf(name: str, spec: str) -> Guide:
    """transformers image classification (augment.models.hf_guide: the paper's guides as its code builds them)."""
    from augment.models.hf_guide import load_hf

    model, labels, pre, info = load_hf(name, spec)
    return Guide(model, labels, pre, spec, logits_of=lambda out: out.logits, info=info)


def _ckpt(path: str, spec: str) -> Guide:
    from augment.models.checkpoint import load_classifier
    from augment.run.storage import out_path

    if not out_path(path).is_dir():
        raise UserError(f"guide {spec!r}: no such directory")
    model, cfg = load_classifier(path)
    pre = Preprocess.from_data_config(cfg)
    return Guide(model, cfg["labels"], pre, spec)


def check_spec(spec: str) -> None:
    """A guide spec's form (backend, options), checked before anything loads (UserError, one line)."""
    backend, sep, name = spec.partition(":")
    if not sep or backend not in BACKENDS or not name:
        raise UserError(f"guide spec {spec!r}: expected one of {', '.join(b + ':NAME' for b in BACKENDS)}")
    if backend == "hf":
        from augment.models.hf_guide import parse_hf_spec

        parse_hf_spec(name, spec)
    if backend == "clip":
        from augment.models.clip_guide import parse_clip_spec

        parse_clip_spec(name, spec)


def load_guide(spec: str, device: str | torch.device = "cpu", class_names: list[str] | None = None) -> Guide:
    """The classifier named by `spec` ('timm:resnet50', 'torchvision:resnet50', 'hf:DIR[?pool=mean]',
    'ckpt:DIR', 'clip:ID_OR_DIR[?templates=bird]'), in eval mode, frozen, fp32 on `device` whatever dtype its
    checkpoint was saved in (guides are small next to the UNet; fp32 keeps gradients clean). A `clip:` guide
    is a zero-shot classifier over `class_names` (the label set's names, in its order)."""
    from augment.models.quiet import quiet_libraries

    quiet_libraries()
    check_spec(spec)
    backend, _, name = spec.partition(":")
    if backend == "clip":
        from augment.models.clip_guide import load_clip

        model, labels, pre, info = load_clip(name, spec, class_names)
        guide = Guide(model, labels, pre, spec, info=info)
    else:
        guide = {"timm": _timm, "torchvision": _torchvision, "hf": _hf, "ckpt": _ckpt}[backend](name, spec)
    return guide.to(device=device, dtype=torch.float32)


def match_labels(labels, guide: Guide, mode: str = "check"):
    """Each class's index among the guide's outputs (augment.labels.match_to_guide). A zero-shot guide was
    built from the label set's own names, in its order: matched by name, whatever indices the file holds."""
    from augment.labels import match_to_guide

    return match_to_guide(labels, guide.labels, "by-name" if guide.info.get("zero_shot") else mode)
