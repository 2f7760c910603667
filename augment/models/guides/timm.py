"""`timm:NAME` guides: a pretrained timm classifier (its weights from the Hugging Face Hub or the timm cache)."""

from __future__ import annotations

from augment.errors import UserError
from augment.models.guides.base import Backend, Guide, Preprocess, register


def load(name: str, spec: str, class_names: list[str] | None = None) -> Guide:
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
    return Guide(model, labels, Preprocess.from_data_config(cfg), spec)


def hub_repo(name: str) -> tuple[str, str] | None:
    try:
        import timm.models

        repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    except (RuntimeError, ValueError, KeyError, AttributeError):
        return None  # an unknown name: timm's own error says so when the guide loads
    return (repo, "config.json") if repo else None


BACKEND = register(Backend("timm", "timm:NAME", load, hub_repo=hub_repo))
