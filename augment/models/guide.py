"""Guide classifiers from one spec string: `timm:NAME`, `torchvision:NAME`, `hf:ID_OR_DIR`, `ckpt:DIR`.

Every guide takes image tensors in [0, 1] and does its own differentiable preprocessing (resize, centre crop,
normalise: the paper's ψ_C), so gradients flow from the logits back to the generated pixels.
This is the only module that knows about classifier backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from augment.errors import UserError

BACKENDS = ("timm", "torchvision", "hf", "ckpt")


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # (H, W) the classifier sees
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

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

    def __init__(self, model: nn.Module, labels: list[str], preprocess: Preprocess, spec: str, logits_of=None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.labels = list(labels)
        self.pre = preprocess
        self.spec = spec
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
            x = F.interpolate(x, size=new, mode=mode, antialias=True, align_corners=False)
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        x = x[..., top : top + h, left : left + w]
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._logits_of(self.model(self.preprocess(images)))


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


# hf: models whose head reads the mean of the patch tokens, taken before the final layer norm, not the CLS
# token. The paper's code loads them with its own CustomViTForImageClassification (idansc/
# discriminative_class_tokens, vitmae.py); transformers loads the same weights as ViTForImageClassification
# without a warning and classifies CLS, which gives other logits. Matched on the hub id or on the last part
# of a local directory's path (`huggingface-cli download vesteinn/vit-mae-cub --local-dir .../vit-mae-cub`);
# any other copy needs `?pool=mean` in the spec.
MEAN_POOLED = ("vesteinn/vit-mae-cub", "vesteinn/vit-mae-inat21")
POOLINGS = ("cls", "mean")


def parse_hf_spec(name: str, spec: str) -> tuple[str, str, float | None]:
    """'ID_OR_DIR[?pool=cls|mean][&crop_pct=F]' → (ID_OR_DIR, pooling, crop_pct or None). The known
    mean-pooled models default to mean; crop_pct (resize to size/crop_pct, centre-crop to size) overrides
    the image processor's."""
    path, _, query = name.partition("?")
    options = dict(kv.partition("=")[::2] for kv in query.split("&") if kv)
    unknown = sorted(set(options) - {"pool", "crop_pct"})
    if unknown:
        raise UserError(f"guide {spec!r}: unknown option(s) {', '.join(unknown)}; known: pool, crop_pct")
    known = any(path.rstrip("/") == m or Path(path).name == m.split("/")[1] for m in MEAN_POOLED)
    pool = options.get("pool", "mean" if known else "cls")
    if pool not in POOLINGS:
        raise UserError(f"guide {spec!r}: pool must be one of {', '.join(POOLINGS)}, got {pool!r}")
    crop_pct = None
    if "crop_pct" in options:
        try:
            crop_pct = float(options["crop_pct"])
        except ValueError:
            crop_pct = -1.0
        if not 0 < crop_pct <= 1:
            raise UserError(f"guide {spec!r}: crop_pct must be a number in (0, 1], got {options['crop_pct']!r}")
    return path, pool, crop_pct


def mean_pool_before_layernorm(model) -> None:
    """Make a transformers ViTForImageClassification classify as ViT-MAE's fine-tuning code does: the mean
    of the last layer's patch tokens (CLS excluded), then the final layer norm, then the head. A forward
    hook on the final layer norm puts that pooled vector where the head reads (token 0), so it holds for
    any transformers version's ViT internals."""
    norm = model.vit.layernorm

    def pooled(module, args, output):
        hidden = args[0]
        if hidden.dim() != 3:  # already pooled
            return output
        return F.layer_norm(
            hidden[:, 1:, :].mean(dim=1, keepdim=True), module.normalized_shape, module.weight, module.bias, module.eps
        )

    norm.register_forward_hook(pooled)


def _hf(name: str, spec: str) -> Guide:
    """transformers image classification. ViT-MAE checkpoints with a classification head (e.g. the
    paper's vesteinn/vit-mae-cub) load as ViT classifiers; `pool` (above) says which token the head reads."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    name, pool, crop_override = parse_hf_spec(name, spec)
    try:
        model = AutoModelForImageClassification.from_pretrained(name)
        proc = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(
            f"guide {spec!r}: cannot load ({str(e).splitlines()[0]}); "
            "for offline use pass a local directory: hf:/path/to/model"
        ) from None
    size = proc.size
    hw = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    crop = getattr(proc, "crop_size", None)
    crop_pct = 1.0
    if getattr(proc, "do_center_crop", False) and crop:
        crop_hw = (crop["height"], crop["width"])
        crop_pct, hw = crop_hw[0] / hw[0], crop_hw
    if crop_override is not None:
        crop_pct = crop_override
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    pre = Preprocess(tuple(hw), tuple(proc.image_mean), tuple(proc.image_std), crop_pct, "bicubic")
    if pool == "mean":
        if not (hasattr(model, "vit") and hasattr(model.vit, "layernorm")):
            raise UserError(f"guide {spec!r}: pool=mean needs a ViT classifier, got {type(model).__name__}")
        mean_pool_before_layernorm(model)
    return Guide(model, labels, pre, spec, logits_of=lambda out: out.logits)


def _ckpt(path: str, spec: str) -> Guide:
    from augment.models.checkpoint import load_classifier

    if not Path(path).is_dir():
        raise UserError(f"guide {spec!r}: no such directory")
    model, cfg = load_classifier(path)
    pre = Preprocess.from_data_config(cfg)
    return Guide(model, cfg["labels"], pre, spec)


def load_guide(spec: str, device: str | torch.device = "cpu") -> Guide:
    """The classifier named by `spec` ('timm:resnet50', 'torchvision:resnet50', 'hf:DIR[?pool=mean]',
    'ckpt:DIR'), in eval mode, frozen, fp32 on `device` whatever dtype its checkpoint was saved in (guides are
    small next to the UNet; fp32 keeps gradients clean; transformers 5 would keep an fp16 checkpoint fp16)."""
    backend, sep, name = spec.partition(":")
    if not sep or backend not in BACKENDS or not name:
        raise UserError(f"guide spec {spec!r}: expected one of {', '.join(b + ':NAME' for b in BACKENDS)}")
    loader = {"timm": _timm, "torchvision": _torchvision, "hf": _hf, "ckpt": _ckpt}[backend]
    return loader(name, spec).to(device=device, dtype=torch.float32)
