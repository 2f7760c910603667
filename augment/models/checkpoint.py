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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path}: invalid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{cfg_path}: format {got!r}, expected {FORMAT!r}")
    labels, size = config.get("labels"), config.get("input_size")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise UserError(f"{cfg_path}: 'labels' must be a non-empty list of class names")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)):
        raise UserError(f"{cfg_path}: 'input_size' must be [channels, height, width], positive whole numbers")
    for key in ("mean", "std"):
        v = config.get(key)
        if not (isinstance(v, list) and len(v) == size[0] and all(isinstance(x, (int, float)) for x in v)):
            raise UserError(f"{cfg_path}: '{key}' must be {size[0]} numbers")
    if not all(x > 0 for x in config["std"]) or not 0 < float(config.get("crop_pct", 1.0)) <= 1:
        raise UserError(f"{cfg_path}: 'std' must be > 0 and 'crop_pct' in (0, 1]")
    try:
        model = build_model(config["architecture"], len(labels), config.get("model_kwargs"))
        model.load_state_dict(load(weights.read_bytes()))
    except Exception as e:  # noqa: BLE001  (timm's, torch's and safetensors' own errors: one line, the cause named)
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{d}: the weights do not load into {config.get('architecture')!r} with {len(labels)} "
                        f"classes ({type(e).__name__}: {first})") from None  # fmt: skip
    return model.eval(), config
