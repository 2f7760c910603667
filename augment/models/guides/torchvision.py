"""`torchvision:NAME` guides: a torchvision classifier with its DEFAULT weights (from download.pytorch.org or
$TORCH_HOME) and the preprocessing those weights name."""

from __future__ import annotations

from augment.errors import UserError
from augment.models.guides.base import Backend, Guide, Preprocess, register


def load(name: str, spec: str, class_names: list[str] | None = None) -> Guide:
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


BACKEND = register(Backend("torchvision", "torchvision:NAME", load))
