"""`hf:` guides: transformers image classifiers from a hub id or a local directory.

Three guides are built the way the code behind the paper builds them (idansc/discriminative_class_tokens,
utils.py:37-72 and vitmae.py), whatever their hub files say or lack (`KNOWN`): the model class (an explicit
ViTForImageClassification, which also loads a `model_type: vit_mae` config), the pooling (vitmae.py:76-78:
the mean of the patch tokens, then the final layer norm), and the preprocessing (utils.py:41-48: kornia's
resize of the short side, bicubic, no antialiasing, a centre crop to 224, then the mean/std it names). Any
other id uses its own `preprocessor_config.json` and `config.json`, and what was used is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from augment.errors import UserError
from augment.models.guides.base import Backend, Guide, Preprocess, hub_id, register, split_options

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm.data.constants (utils.py:17-18)
HALF = (0.5, 0.5, 0.5)
POOLINGS = ("cls", "mean")
OPTIONS = ("pool", "crop_pct", "recipe")


@dataclass(frozen=True)
class Recipe:
    """How the original code classifies with a known guide: the short side resized to `resize` (bicubic, no
    antialias), centre-cropped to `crop`, normalised with mean/std; `pool` is what the head reads."""

    pool: str
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    where: str  # file:line of the original code


KNOWN = {
    "vesteinn/vit-mae-cub": Recipe(
        "mean", 224, 224, IMAGENET_MEAN, IMAGENET_STD, "utils.py:59-64,46-48; vitmae.py:76-78"
    ),
    "vesteinn/vit-mae-inat21": Recipe(
        "mean", 224, 224, IMAGENET_MEAN, IMAGENET_STD, "utils.py:65-70,46-48; vitmae.py:76-78"
    ),
    "google/vit-large-patch16-224": Recipe("cls", 256, 224, HALF, HALF, "utils.py:53-58,41-44"),
}


def parse_hf_spec(name: str, spec: str) -> tuple[str, dict[str, str]]:
    """'ID_OR_DIR[?pool=cls|mean][&crop_pct=F][&recipe=ID]' → (ID_OR_DIR, options); unknown options refused."""
    path, options = split_options(name)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"guide {spec!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    if "pool" in options and options["pool"] not in POOLINGS:
        raise UserError(f"guide {spec!r}: pool must be one of {', '.join(POOLINGS)}, got {options['pool']!r}")
    if "recipe" in options and options["recipe"] not in KNOWN:
        raise UserError(f"guide {spec!r}: recipe must be one of {', '.join(KNOWN)}, got {options['recipe']!r}")
    if "crop_pct" in options:
        try:
            crop_pct = float(options["crop_pct"])
        except ValueError:
            crop_pct = -1.0
        if not 0 < crop_pct <= 1:
            raise UserError(f"guide {spec!r}: crop_pct must be a number in (0, 1], got {options['crop_pct']!r}")
    return path, options


def known_recipe(path: str, options: dict[str, str]) -> tuple[str, Recipe] | None:
    """The table entry for a hub id, a local copy in a directory of the id's name (`hf download ID
    --local-dir .../vit-mae-cub`), or `recipe=ID`; None for any other guide."""
    if "recipe" in options:
        return options["recipe"], KNOWN[options["recipe"]]
    for known_id, recipe in KNOWN.items():  # by name only a local copy: another user's hub model is another model
        if path.rstrip("/") == known_id or (Path(path).is_dir() and Path(path).name == known_id.split("/")[1]):
            return known_id, recipe
    return None


def mean_pool_before_layernorm(model) -> None:
    """Make a transformers ViTForImageClassification classify as ViT-MAE's fine-tuning code does (vitmae.py:
    76-78): the mean of the last layer's patch tokens (CLS excluded), then the final layer norm, then the head.
    A forward hook on the final layer norm puts that pooled vector where the head reads (token 0), so it holds
    for any transformers version's ViT internals."""
    norm = model.vit.layernorm

    def pooled(module, args, output):
        hidden = args[0]
        if hidden.dim() != 3:  # already pooled
            return output
        return F.layer_norm(
            hidden[:, 1:, :].mean(dim=1, keepdim=True), module.normalized_shape, module.weight, module.bias, module.eps
        )

    norm.register_forward_hook(pooled)


def _model_type(name: str) -> str | None:
    """config.json's model_type of a local directory or a cached/reachable hub id (None when unknown)."""
    local = Path(name) / "config.json"
    try:
        if local.is_file():
            return json.loads(local.read_text()).get("model_type")
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError):
        return None


def _id2label_is_mapping(path: str) -> bool:
    try:
        return isinstance(json.loads((Path(path) / "config.json").read_text()).get("id2label", {}), dict)
    except (OSError, ValueError, AttributeError):
        return True  # not a local config: the error is not about it


def _num_labels(path: str) -> str:
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        return str(config.get("num_labels", len(config.get("id2label") or {}) or 2))
    except (OSError, ValueError):
        return "unknown"


def load_hf(name: str, spec: str):
    """(model, labels, Preprocess, info) for an `hf:` spec; the caller wraps them into a Guide."""
    from transformers import ViTForImageClassification

    path, options = parse_hf_spec(name, spec)
    known = known_recipe(path, options)
    model_type = _model_type(path)
    vit = known is not None or model_type in ("vit", "vit_mae")
    try:
        if vit:  # as the original code does (utils.py:54, 62): the explicit class reads a vit_mae config too
            model = ViTForImageClassification.from_pretrained(path)
        else:
            from transformers import AutoModelForImageClassification

            model = AutoModelForImageClassification.from_pretrained(path)
    except (OSError, ValueError) as e:
        hint = "" if hub_id(path) is None else "; for offline use pass a local directory: hf:/path/to/model"
        raise UserError(f"guide {spec!r}: cannot load ({str(e).splitlines()[0]}){hint}") from None
    except (RuntimeError, AttributeError, TypeError) as e:  # transformers: the head and num_labels / id2label differ,
        if isinstance(e, RuntimeError) and "mismatch" not in str(e):  # or an id2label that is no mapping
            raise
        if not isinstance(e, RuntimeError):
            if _id2label_is_mapping(path):
                raise
            raise UserError(f"guide {spec!r}: config.json's id2label must map each output to its name") from None
        raise UserError(
            f"guide {spec!r}: config.json's classes (num_labels {_num_labels(path)}) do not match the classifier "
            "head's weights; its config.json needs id2label with one name per output"
        ) from None
    if len(model.config.id2label) != model.config.num_labels:
        raise UserError(f"guide {spec!r}: config.json's id2label has {len(model.config.id2label)} names for "
                        f"{model.config.num_labels} outputs")  # fmt: skip
    try:
        labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    except (KeyError, TypeError, AttributeError):
        raise UserError(
            f"guide {spec!r}: config.json's id2label must name every output 0..{model.config.num_labels - 1}"
        ) from None
    info: dict = {"model_class": type(model).__name__, "model_type": model_type}
    if known is not None:
        known_id, recipe = known
        pool = options.get("pool", recipe.pool)
        crop_pct = float(options.get("crop_pct", recipe.crop / recipe.resize))
        pre = Preprocess((recipe.crop, recipe.crop), recipe.mean, recipe.std, crop_pct, "bicubic", antialias=False)
        info["preprocess_from"] = f"augment's table for {known_id} (the original code, {recipe.where})"
    else:
        pool = options.get("pool", "mean" if model_type == "vit_mae" else "cls")
        pre = _from_processor(path, spec, options)
        info["preprocess_from"] = "the model's preprocessor_config.json"
    if pool == "mean":
        if not (hasattr(model, "vit") and hasattr(model.vit, "layernorm")):
            raise UserError(f"guide {spec!r}: pool=mean needs a ViT classifier, got {type(model).__name__}")
        mean_pool_before_layernorm(model)
    info["pool"] = pool
    return model, labels, pre, info


def _from_processor(path: str, spec: str, options: dict[str, str]):
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(
            f"guide {spec!r}: no usable preprocessor_config.json ({str(e).splitlines()[0]}); add one that names the "
            "input size, image_mean and image_std the classifier was trained with"
        ) from None
    try:
        return processor_preprocess(proc, float(options["crop_pct"]) if "crop_pct" in options else None)
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"guide {spec!r}: preprocessor_config.json without a usable size or mean/std ({e!r})") from None


def processor_preprocess(proc, crop_override: float | None = None):
    """A transformers image processor's resize, centre crop, mean/std and interpolation as a Preprocess
    (`crop_override`: the crop ratio to use instead of the processor's)."""
    size = proc.size
    hw = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    crop = getattr(proc, "crop_size", None)
    crop_pct = 1.0
    if getattr(proc, "do_center_crop", False) and crop:
        crop_hw = (crop["height"], crop["width"])
        crop_pct, hw = crop_hw[0] / hw[0], crop_hw
    elif getattr(proc, "crop_pct", None):  # ConvNeXt's: resize to size / crop_pct, centre-crop to size
        crop_pct = float(proc.crop_pct)
    if crop_override is not None:
        crop_pct = crop_override
    resample = getattr(proc, "resample", None)
    interpolation = {2: "bilinear", 3: "bicubic"}.get(int(resample) if resample is not None else 3, "bilinear")
    return Preprocess(tuple(hw), tuple(proc.image_mean), tuple(proc.image_std), crop_pct, interpolation)


def load(name: str, spec: str, class_names: list[str] | None = None) -> Guide:
    model, labels, pre, info = load_hf(name, spec)
    return Guide(model, labels, pre, spec, logits_of=lambda out: out.logits, info=info)


def hub_repo(name: str) -> tuple[str, str] | None:
    repo = hub_id(split_options(name)[0])
    return (repo, "config.json") if repo else None


BACKEND = register(Backend("hf", "hf:ID_OR_DIR", load, parse=parse_hf_spec, hub_repo=hub_repo, local=True))
