"""Train one timm ResNet on real shots plus synthetic images and score it on a whole test split.

Two input paths, chosen by image size: small images (≤ 64 px, the toy world's 32×32 Fashion-MNIST) live in memory
as uint8 tensors and are augmented with flip + shift; real-size images stream through a DataLoader with
random-resized-crop + flip, and are evaluated with resize + centre crop (`crop_pct`), as the saved `ckpt:`
classifier's preprocessing says. Training runs a fixed number of optimisation steps (unless `epochs` is set), so a
cell with 0 shots + 1,000 synthetic images costs the same as one with 15 shots.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from augment.config import flag
from augment.data.images import Split, concat
from augment.data.mixing import index_batches, mixed_batches
from augment.devices import bind_device, resolve_device
from augment.errors import UserError
from augment.settings import check_device, check_types

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,) * 3, (0.3530,) * 3  # as the toy world's classifiers


UNIFORM = "uniform"  # real_fraction: no fixed share, batches drawn over all training images alike


def real_share(text: str) -> float | str:
    """--real-fraction: a number in [0, 1], or uniform."""
    return UNIFORM if text == UNIFORM else float(text)


def _kwargs(text: str) -> dict[str, Any]:
    """--model-kwargs: a JSON object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


@dataclass
class TrainConfig:
    """How one classifier is trained; `default_config(kind)` gives the defaults of a dataset kind. Fields with a
    flag are `downstream`'s training options (augment.commands.options derives them)."""

    model: str = field(default="resnet50", metadata=flag("--model", "timm model name (toy: half-width resnet18; real: resnet50)"))  # fmt: skip
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata=flag("--model-kwargs", "extra timm.create_model kwargs (a JSON object)", _kwargs))  # fmt: skip
    pretrained: bool = field(default=True, metadata=flag("--pretrained", "timm's ImageNet weights (real data default: on; needs the hub or its cache)", action="boolean"))  # fmt: skip
    image_size: int = field(default=224, metadata=flag("--image-size", "input size in px", int))
    steps: int = field(default=2000, metadata=flag("--steps", "optimisation steps per classifier (fixed whatever the data size)", int))  # fmt: skip
    epochs: float | None = field(default=None, metadata=flag("--epochs", "instead of --steps: passes over the training images", float))  # fmt: skip
    batch_size: int = field(default=32, metadata=flag("--batch-size", "images per batch", int))
    lr: float = field(default=0.01, metadata=flag("--lr", "learning rate", float))
    real_fraction: float | str = field(default=0.5, metadata=flag("--real-fraction", "share of each batch drawn from the real shots when there are synthetic images too (default 0.5; uniform: batches drawn uniformly over all images, real and synthetic)", real_share))  # fmt: skip
    # (0.5 chosen by measurement: docs/toy-world.md "The real share of a batch")
    weight_decay: float = field(default=1e-4, metadata=flag("--weight-decay", "weight decay", float))
    optimizer: str = field(default="sgd", metadata=flag("--optimizer", "sgd (momentum 0.9, Nesterov) or adamw", choices=("sgd", "adamw")))  # fmt: skip
    warmup: float = 0.05  # share of steps with linear warm-up, then cosine decay to 0
    label_smoothing: float = 0.1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875  # evaluation: resize to size/crop_pct, centre-crop to size
    eval_batch_size: int = 256
    workers: int = field(default=2, metadata=flag("--loader-workers", "DataLoader workers (real-size images)", int))
    device: str = field(default="auto", metadata=flag("--device", "auto | cpu | cuda | cuda:N", str))

    def validate(self) -> None:
        """Values that cannot train, refused before anything loads (UserError naming the argument)."""
        check_types(self, "")
        if isinstance(self.real_fraction, str) and self.real_fraction != UNIFORM:
            raise UserError(f"real_fraction must be a number in [0, 1] or {UNIFORM}, got {self.real_fraction!r}")
        if not self.model.strip():
            raise UserError("model must name a timm model, got ''", "model")
        check_device(self.device)
        for name in ("lr", "weight_decay", "warmup", "label_smoothing", "crop_pct"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be ≥ 0, got {getattr(self, name)}", name)
        if self.workers < 0:
            raise UserError(f"workers must be ≥ 0, got {self.workers}", "workers")
        for name in ("image_size", "steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be ≥ 1, got {getattr(self, name)}", name)
        if self.epochs is not None and self.epochs <= 0:
            raise UserError(f"epochs must be > 0, got {self.epochs}", "epochs")
        if self.real_fraction not in (None, UNIFORM) and not 0 <= self.real_fraction <= 1:
            raise UserError(f"real_fraction must be between 0 and 1, got {self.real_fraction}", "real_fraction")


TOY_CONFIG = TrainConfig(
    model="resnet18",
    model_kwargs={"channels": [32, 64, 128, 256], "stem_width": 32},  # half width: 2.8 M params
    pretrained=False,
    image_size=32,
    steps=600,
    batch_size=64,
    lr=2e-3,
    weight_decay=0.05,
    optimizer="adamw",
    mean=FASHION_MNIST_MEAN,
    std=FASHION_MNIST_STD,
    crop_pct=1.0,
    eval_batch_size=1000,
    workers=0,
)
REAL_CONFIG = TrainConfig()


def default_config(kind: str) -> TrainConfig:
    """Defaults for a dataset kind: the small from-scratch toy ResNet for Fashion-MNIST, ResNet-50 otherwise."""
    return replace(TOY_CONFIG if kind == "fashion-mnist" else REAL_CONFIG)


def in_memory(config: TrainConfig) -> bool:
    return config.image_size <= 64  # (tests/test_downstream_cli.py crosses it: 72 px streams)


@dataclass
class Tensors:
    """Small images already in memory: x (N, 3, S, S) uint8, y (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


Data = Split | Tensors


def prepare(split: Split, config: TrainConfig) -> Data:
    """Decode a split once when the config trains in memory (re-used across cells); else leave it streaming."""
    if not in_memory(config) or isinstance(split, Tensors):
        return split
    return Tensors(split.to_uint8(config.image_size), torch.from_numpy(split.labels.astype(np.int64)))


def create_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The timm model with a `num_classes` head; one-line UserError if unknown or its weights can't be fetched."""
    import timm

    if not timm.is_model(config.model):
        raise UserError(f"unknown timm model {config.model!r}")
    host = _hub_host()
    online = not config.pretrained or _reachable(host)
    try:
        with contextlib.nullcontext() if online else _hub_offline():  # cache only: no minute of retries
            return timm.create_model(
                config.model, pretrained=config.pretrained, num_classes=num_classes, **config.model_kwargs
            )
    except TypeError as e:
        raise UserError(f"model {config.model!r}: bad model kwargs {config.model_kwargs} ({e})") from None
    except Exception as e:  # hub / network / cache errors come in many types
        if not config.pretrained:
            raise
        why = (
            f"not in the Hugging Face cache and {host} unreachable"
            if not online
            else f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"
        )
        raise UserError(
            f"could not get pretrained weights for {config.model} ({why}); run once online to fill "
            "the cache, or pass --no-pretrained"
        ) from None


def _hub_host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens: offline machines fail here in seconds, not after retries."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline():
    """huggingface_hub's offline mode (cache only) for the duration of the block."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def num_steps(config: TrainConfig, num_images: int) -> int:
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * num_images / config.batch_size))
    return config.steps


def _augment_small(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to size/8 pixels (zero fill), per image."""
    n, _, h, w = x.shape
    p = max(1, h // 8)
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (p, p, p, p))
    dx, dy = torch.randint(0, 2 * p + 1, (2, n), generator=g).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def _normalise(x: torch.Tensor, config: TrainConfig, device: torch.device) -> torch.Tensor:
    mean = torch.tensor(config.mean, device=device)[:, None, None]
    std = torch.tensor(config.std, device=device)[:, None, None]
    return (x.to(device, torch.float32) / 255.0 - mean) / std


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.images(int(i))), int(self.split.labels[i])


def _transform(config: TrainConfig, train: bool):
    from torchvision import transforms as T

    size = config.image_size
    head = (
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        if train
        else [T.Resize(round(size / config.crop_pct)), T.CenterCrop(size)]
    )
    return T.Compose(head + [T.ToTensor(), T.Normalize(config.mean, config.std)])


def _optimiser(model: torch.nn.Module, config: TrainConfig, steps: int):
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    else:
        raise UserError(f"unknown optimizer {config.optimizer!r} (sgd or adamw)")
    warm = max(1, round(config.warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_classifier(
    parts: list[Data], num_classes: int, config: TrainConfig, *, seed: int, progress: bool = False
) -> torch.nn.Module:
    """A classifier trained from scratch (or from pretrained weights) on the union of `parts`; parts[0] is the
    real images, the rest synthetic (`config.real_fraction` fixes the real share of each batch).

    Runs in its own RNG scope: the same seed gives the same model, and the global RNG is left as it was.
    """
    from tqdm import tqdm

    n_real = len(parts[0]) if parts else 0
    parts = [p for p in parts if len(p)]
    n = sum(len(p) for p in parts)
    if n == 0:
        raise UserError("nothing to train on: 0 real shots and no synthetic images")
    device = resolve_device(config.device)
    bind_device(device)
    steps = num_steps(config, n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = create_model(config, num_classes).to(device).train()
        opt, sched = _optimiser(model, config, steps)
        if config.real_fraction not in (None, UNIFORM) and 0 < n_real < n:
            batches = mixed_batches(n_real, n, config.batch_size, steps, config.real_fraction, g)
        else:
            batches = index_batches(n, config.batch_size, steps, g)
        if in_memory(config):
            data = [prepare(p, config) for p in parts]
            x, y = torch.cat([d.x for d in data]), torch.cat([d.y for d in data])
            stream = ((_augment_small(x[i], g), y[i]) for i in batches)
        else:
            dataset = _Transformed(concat([p for p in parts if isinstance(p, Split)]), _transform(config, True))
            stream = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=[b.tolist() for b in batches],
                num_workers=config.workers,
                generator=g,
                persistent_workers=False,
            )
        for xb, yb in tqdm(stream, total=steps, desc="train", leave=False, disable=not progress):
            if in_memory(config):
                xb = _normalise(xb, config, device)
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device), label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: torch.nn.Module, test: Data, config: TrainConfig) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) on every image of `test` (top-k with k ≤ number of classes)."""
    device = next(model.parameters()).device
    model.eval()
    if in_memory(config):
        test = prepare(test, config)
        batches = (
            (_normalise(test.x[i : i + config.eval_batch_size], config, device), test.y[i : i + config.eval_batch_size])
            for i in range(0, len(test), config.eval_batch_size)
        )
    else:
        batches = torch.utils.data.DataLoader(
            _Transformed(test, _transform(config, False)), batch_size=config.eval_batch_size, num_workers=config.workers
        )
    correct1 = correct5 = total = 0
    for xb, yb in batches:
        logits = model(xb.to(device))
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices.cpu()
        hit = top == yb[:, None]
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(dim=1).sum().item()
        total += len(yb)
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


def save(
    model: torch.nn.Module, out_dir: str | Path, config: TrainConfig, classes: list[str], trained: dict[str, Any]
) -> Path:
    """Write the classifier in the `ckpt:` format so `augment` can use it as a guide or held-out scorer."""
    from augment.models.checkpoint import save_classifier

    return save_classifier(
        model.cpu(),
        out_dir,
        architecture=f"timm:{config.model}",
        labels=list(classes),
        input_size=(3, config.image_size, config.image_size),
        mean=list(config.mean),
        std=list(config.std),
        model_kwargs=dict(config.model_kwargs),
        interpolation="bilinear",
        crop_pct=config.crop_pct,
        trained=trained,
    )
