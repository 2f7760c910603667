"""`ckpt:DIR` guides: a classifier saved in augment's format (augment.models.checkpoint: model.safetensors and
config.json), e.g. by `downstream train --save-classifier`; DIR may be a URL."""

from __future__ import annotations

from augment.errors import UserError
from augment.models.guides.base import Backend, Guide, Preprocess, register


def load(path: str, spec: str, class_names: list[str] | None = None) -> Guide:
    from augment.models.checkpoint import load_classifier
    from augment.run.storage import out_path

    if not out_path(path).is_dir():
        raise UserError(f"guide {spec!r}: no such directory")
    model, cfg = load_classifier(path)
    return Guide(model, cfg["labels"], Preprocess.from_data_config(cfg), spec)


BACKEND = register(Backend("ckpt", "ckpt:DIR", load, local=True))
