"""Guide classifiers from one spec string, `BACKEND:NAME`: `timm:NAME`, `torchvision:NAME`, `hf:ID_OR_DIR`,
`ckpt:DIR`, `clip:ID_OR_DIR`.

One module per backend (`timm`, `torchvision`, `hf`, `ckpt`, `clip`) registers a `Backend` record (base.py) when
imported here; everything else asks this registry: `parse_spec` (the only place a spec's prefix is read),
`check_spec`, `load_guide`, `hub_repo`, `spec_location`. A new backend is one new module and one line below.
"""

from __future__ import annotations

import torch

from augment.errors import UserError
from augment.models.guides import ckpt, clip, hf, timm, torchvision  # noqa: F401  (each registers itself)
from augment.models.guides.base import REGISTRY, Backend, Guide, Preprocess

__all__ = ["Backend", "Guide", "Preprocess", "check_spec", "load_guide", "loaded_spec", "match_labels", "parse_spec"]


def parse_spec(spec: str) -> tuple[Backend, str]:
    """(backend, the part after 'PREFIX:') of a guide spec; an unknown prefix or an empty name: UserError."""
    prefix, sep, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or prefix not in REGISTRY or not name:
        forms = ", ".join(b.form for b in REGISTRY.values())
        raise UserError(f"guide spec {spec!r}: expected one of {forms}")
    return REGISTRY[prefix], name


def check_spec(spec: str) -> None:
    """A guide spec's form (backend, options), checked before anything loads (UserError, one line)."""
    backend, name = parse_spec(spec)
    if backend.parse is not None:
        backend.parse(name, spec)


def hub_repo(spec: str | None) -> tuple[str, str] | None:
    """(hub repo id, a file every copy of it has) for a guide spec that loads from the hub, else None."""
    if not spec:
        return None
    backend, name = parse_spec(spec)
    return backend.hub_repo(name) if backend.hub_repo is not None else None


def spec_location(spec: str) -> tuple[str, str]:
    """(prefix, target) of a model spec whose target may be a local directory: ('ckpt:', 'DIR?options') for a
    guide backend that loads from a directory, ('', spec) for anything else (a generator, `timm:NAME`)."""
    prefix, sep, name = spec.partition(":")
    backend = REGISTRY.get(prefix) if sep else None
    return (f"{prefix}:", name) if backend is not None and backend.local else ("", spec)


def loaded_spec(config, spec: str | None = None) -> str:
    """A classifier spec (`spec`, else the config's guide) as it loads under a RunConfig (its backend's
    `resolve`: a `clip:` spec without `?templates=` takes the config's `clip_templates`)."""
    spec = config.guide if spec is None else spec
    backend, _ = parse_spec(spec)
    return backend.resolve(spec, config) if backend.resolve is not None else spec


def load_guide(spec: str, device: str | torch.device = "cpu", class_names: list[str] | None = None) -> Guide:
    """The classifier named by `spec` ('timm:resnet50', 'torchvision:resnet50', 'hf:DIR[?pool=mean]',
    'ckpt:DIR', 'clip:ID_OR_DIR[?templates=bird]'), in eval mode, frozen, fp32 on `device` whatever dtype its
    checkpoint was saved in (guides are small next to the UNet; fp32 keeps gradients clean). A `clip:` guide
    is a zero-shot classifier over `class_names` (the label set's names, in its order)."""
    from augment.models.quiet import quiet_libraries

    quiet_libraries()
    check_spec(spec)
    backend, name = parse_spec(spec)
    return backend.load(name, spec, class_names).to(device=device, dtype=torch.float32)


def match_labels(labels, guide: Guide, mode: str = "check"):
    """Each class's index among the guide's outputs (augment.labels.match_to_guide). A zero-shot guide was
    built from the label set's own names, in its order: matched by name, whatever indices the file holds."""
    from augment.labels import match_to_guide

    return match_to_guide(labels, guide.labels, "by-name" if guide.info.get("zero_shot") else mode)
