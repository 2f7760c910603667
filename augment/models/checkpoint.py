"""The `ckpt:` classifier format: a directory with model.safetensors and config.json.

config.json: {"format": "augment-classifier/1", "architecture": "timm:resnet18", "model_kwargs": {...},
"input_size": [3, H, W], "mean": [...], "std": [...], "interpolation": "bilinear", "crop_pct": 1.0,
"labels": [class names in output order], "trained": {free-form provenance}}.
Only timm architectures are stored; weights load with safetensors (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from augment.errors import UserError

FORMAT = "augment-classifier/1"


def build_model(architecture: str, num_classes: int, model_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """A randomly initialised classifier from an architecture string like 'timm:resnet18'."""
    backend, _, name = architecture.partition(":")
    if backend != "timm" or not name:
        raise UserError(f"unsupported checkpoint architecture {architecture!r} (expected 'timm:NAME')")
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, **(model_kwargs or {}))


def save_classifier(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    architecture: str,
    labels: list[str],
    input_size: tuple[int, int, int],
    mean: list[float],
    std: list[float],
    model_kwargs: dict[str, Any] | None = None,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    trained: dict[str, Any] | None = None,
) -> Path:
    """Write model weights (safetensors) and the config that rebuilds the model and its preprocessing."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    config = {
        "format": FORMAT,
        "architecture": architecture,
        "model_kwargs": model_kwargs or {},
        "input_size": list(input_size),
        "mean": list(mean),
        "std": list(std),
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "labels": list(labels),
        "trained": trained or {},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_classifier(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode, fp32) and its config from a `ckpt:` directory."""
    from safetensors.torch import load

    from augment.run.storage import out_path

    d = out_path(path)  # a local directory, or one in a bucket (read whole, nothing downloaded to disk)
    cfg_path, weights = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise UserError(f"{d}: not a classifier checkpoint (needs config.json and model.safetensors)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path}: invalid JSON ({e})") from None
    if config.get("format") != FORMAT:
        raise UserError(f"{cfg_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    model = build_model(config["architecture"], len(config["labels"]), config.get("model_kwargs"))
    model.load_state_dict(load(weights.read_bytes()))
    return model.eval(), config
