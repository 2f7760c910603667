"""`clip:` guides: a zero-shot classifier for a label set with no classifier and no images.

`clip:ID_OR_DIR[?templates=NAME]` loads a transformers `CLIPModel` (a hub id or a local directory with its
processor files). Each class's weight is the CLIP paper's prompt ensemble (Radford et al. 2021, §3.1.4): the
text embeddings of every template filled with the class name, each L2-normalised, averaged and normalised
again; an image's logits are the model's logit scale times the cosine between its image embedding and each
class weight. The image side is differentiable, so `learn`, DATE and `augment score` use it like any guide;
the class weights are computed once, from the label set's names, in its order.

Templates: `imagenet` (the seven the CLIP authors' ImageNet notebook ensembles; the default), `bird` (the
CLIP paper's Birdsnap/CUB template), `animal`, or a text file with one template per line ("{}" where the name
goes). A spec without `?templates=` takes the config's `clip_templates` (RunConfig.guide_spec): `imagenet` by
default, `bird` in the CUB presets (`with_templates`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from augment.errors import UserError
from augment.models.guides.base import Backend, Guide, hub_id, register, split_options
from augment.models.guides.hf import processor_preprocess

TEMPLATES = {
    "imagenet": [
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ],
    "bird": ["a photo of a {}, a type of bird."],
    "animal": ["a photo of a {}, a type of animal.", "a photo of the {}, an animal.", "a close-up photo of a {}."],
}


MAX_TEMPLATE_BYTES = 64 << 10  # a template file's size at most (the CLIP paper's largest ensemble is 80 lines)


def parse_clip_spec(name: str, spec: str) -> tuple[str, list[str], str]:
    """'ID_OR_DIR[?templates=NAME|FILE]' → (ID_OR_DIR, templates, their name)."""
    path, options = split_options(name)
    unknown = sorted(set(options) - {"templates"})
    if unknown:
        raise UserError(f"guide {spec!r}: unknown option(s) {', '.join(unknown)}; known: templates")
    which = options.get("templates", "imagenet")
    if which in TEMPLATES:
        return path, TEMPLATES[which], which
    file = Path(which).expanduser()
    if not file.is_file():
        raise UserError(f"guide {spec!r}: templates must be {', '.join(TEMPLATES)} or a file, got {which!r}")
    try:
        if file.stat().st_size > MAX_TEMPLATE_BYTES:
            raise UserError(f"guide {spec!r}: {file}: a template file is at most {MAX_TEMPLATE_BYTES >> 10} KiB")
        templates = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"guide {spec!r}: {file}: cannot read templates ({type(e).__name__})") from None
    if not templates or not all("{}" in t for t in templates):
        raise UserError(f"guide {spec!r}: {file}: every template needs '{{}}' where the class name goes")
    for t in templates:
        try:
            filled = t.format("\x02")
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"guide {spec!r}: {file}: template {t!r}: only '{{}}' can be filled ({e!r})") from None
        if "\x02" not in filled:  # "{{}}" is a literal "{}"
            raise UserError(f"guide {spec!r}: {file}: template {t!r} has no '{{}}' where the class name goes")
    return path, templates, str(file)


class ZeroShotCLIP(torch.nn.Module):
    """CLIP's image tower and a fixed matrix of normalised class weights: images (preprocessed) → logits."""

    def __init__(self, model, class_weights: torch.Tensor):
        super().__init__()
        self.vision = model.vision_model
        self.projection = model.visual_projection
        self.register_buffer("weights", class_weights, persistent=False)
        self.register_buffer("scale", model.logit_scale.detach().exp().reshape(()), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision(pixel_values=pixel_values).pooler_output
        image = F.normalize(self.projection(pooled), dim=-1)
        return self.scale * image @ self.weights.T


@torch.no_grad()
def class_weights(model, tokenizer, names: list[str], templates: list[str]) -> torch.Tensor:
    """One normalised text-embedding ensemble per class name (classes × projection dim)."""
    rows = []
    for name in names:
        tokens = tokenizer([t.format(name) for t in templates], padding=True, truncation=True, return_tensors="pt")
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        rows.append(F.normalize(F.normalize(text, dim=-1).mean(0), dim=-1))
    return torch.stack(rows)


def load_clip(name: str, spec: str, class_names: list[str] | None):
    """(model, labels, Preprocess, info) for a `clip:` spec; the caller wraps them into a Guide."""
    from transformers import CLIPModel, CLIPProcessor

    if not class_names:
        raise UserError(f"guide {spec!r}: a zero-shot guide needs the label set's class names")
    path, templates, which = parse_clip_spec(name, spec)
    try:
        model = CLIPModel.from_pretrained(path).eval()
        processor = CLIPProcessor.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(
            f"guide {spec!r}: cannot load a CLIPModel with its processor ({str(e).splitlines()[0]}); "
            "for offline use pass a local directory: clip:/path/to/model"
        ) from None
    pre = processor_preprocess(processor.image_processor)
    weights = class_weights(model, processor.tokenizer, class_names, templates)
    info = {"model_class": "CLIPModel", "zero_shot": True, "templates": which, "template_count": len(templates)}
    return ZeroShotCLIP(model, weights), list(class_names), pre, info


def load(name: str, spec: str, class_names: list[str] | None = None) -> Guide:
    model, labels, pre, info = load_clip(name, spec, class_names)
    return Guide(model, labels, pre, spec, info=info)


def hub_repo(name: str) -> tuple[str, str] | None:
    repo = hub_id(split_options(name)[0])
    return (repo, "config.json") if repo else None


def with_templates(spec: str, config) -> str:
    """A `clip:` spec as it loads under a RunConfig: a spec without `?templates=` gets the config's
    `clip_templates` when they are not the default, so hashes and manifests name the templates used."""
    templates = config.clip_templates
    if templates == "imagenet" or "templates" in split_options(spec.partition(":")[2])[1]:
        return spec
    return f"{spec}{'&' if '?' in spec else '?'}templates={templates}"


BACKEND = register(
    Backend(
        "clip", "clip:ID_OR_DIR", load, parse=parse_clip_spec, hub_repo=hub_repo, local=True, resolve=with_templates
    )
)
