"""The paper's guides are built as the code behind it builds them, whatever their hub files say or lack.

Replicas of vesteinn/vit-mae-cub, vesteinn/vit-mae-inat21 and google/vit-large-patch16-224 (random narrow ViTs in
directories of those names), saved with `model_type` vit or vit_mae and with a default, a missing or a correct
preprocessor file, must give the logits of the original code's formula, written out here independently:
idansc/discriminative_class_tokens utils.py:37-49 (kornia resize of the short side, bicubic, no antialias;
centre crop 224; Normalize) and vitmae.py:76-78 (mean of the patch tokens, final layer norm, head).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from augment.errors import UserError
from augment.models.guides import load_guide

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5,) * 3, (0.5,) * 3)
GUIDES = {"vit-mae-cub": ("mean", 224, IMAGENET), "vit-mae-inat21": ("mean", 224, IMAGENET),
          "vit-large-patch16-224": ("cls", 256, HALF)}  # fmt: skip


def save_replica(directory, model_type: str, processor: str, mean_std) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=4, id2label={i: f"class {i}" for i in range(4)},
                    label2id={f"class {i}": i for i in range(4)})  # fmt: skip
    torch.manual_seed(len(str(directory)))
    model = ViTForImageClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)  # spread the logits so that preprocessing differences show
    model.save_pretrained(directory)
    if model_type == "vit_mae":  # as a ViT-MAE fine-tuning checkpoint records itself
        config = json.loads((directory / "config.json").read_text())
        config["model_type"] = "vit_mae"
        (directory / "config.json").write_text(json.dumps(config))
    if processor == "default":  # what ViTImageProcessor writes unless told otherwise: mean = std = 0.5
        ViTImageProcessor().save_pretrained(directory)
    elif processor == "correct":
        ViTImageProcessor(image_mean=list(mean_std[0]), image_std=list(mean_std[1])).save_pretrained(directory)


def original_logits(model, images: torch.Tensor, pool: str, resize: int, mean_std) -> torch.Tensor:
    """utils.py transform_img_tensor + vitmae.py CustomViTModel / transformers' ViT head, step by step."""
    h, w = images.shape[-2:]
    size = (resize, round(resize * w / h)) if h <= w else (round(resize * h / w), resize)
    x = F.interpolate(images, size=size, mode="bicubic", align_corners=None)  # kornia resize, antialias=False
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top : top + 224, left : left + 224]  # kornia center_crop at integer offsets
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    x = (x - mean) / std
    vit = model.vit
    hidden = vit(x, output_hidden_states=True).hidden_states[-1]  # the last layer's output, before the final norm
    if pool == "mean":
        pooled = vit.layernorm(hidden[:, 1:, :].mean(dim=1))
    else:
        pooled = vit.layernorm(hidden)[:, 0]
    return model.classifier(pooled)


def textured(n: int = 2, size: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    fine = torch.rand(n, 3, size, size, generator=g)
    return (0.6 * F.interpolate(coarse, size=size, mode="nearest") + 0.4 * fine).clamp(0, 1)


@pytest.mark.parametrize("name", list(GUIDES))
@pytest.mark.parametrize("model_type", ["vit", "vit_mae"])
@pytest.mark.parametrize("processor", ["default", "missing", "correct"])
def test_known_guides_give_the_original_codes_logits(tmp_path, name, model_type, processor):
    pool, resize, mean_std = GUIDES[name]
    directory = tmp_path / name
    save_replica(directory, model_type, processor, mean_std)
    guide = load_guide(f"hf:{directory}")
    images = textured()
    with torch.no_grad():
        expected = original_logits(guide.model, images, pool, resize, mean_std)
        got = guide(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    described = guide.describe()
    assert (
        described["pool"] == pool
        and described["antialias"] is False
        and "augment's table" in described["preprocess_from"]
    )


def test_the_defects_the_table_guards_against_change_the_logits(tmp_path):
    """What the hub files alone would give: 0.5 mean/std from a default processor, an antialiased resize, CLS."""
    directory = tmp_path / "elsewhere"  # not a known name: the processor file is used
    save_replica(directory, "vit", "default", IMAGENET)
    plain = load_guide(f"hf:{directory}")
    known = load_guide(f"hf:{directory}?recipe=vesteinn/vit-mae-cub")
    images = textured()
    with torch.no_grad():
        expected = original_logits(known.model, images, "mean", 224, IMAGENET)
        torch.testing.assert_close(known(images), expected, rtol=1e-4, atol=1e-4)
        assert (plain(images) - expected).abs().max() > 0.1
    assert plain.describe()["preprocess_from"] == "the model's preprocessor_config.json"
    assert plain.pre.mean == (0.5, 0.5, 0.5) and plain.describe()["pool"] == "cls"


def test_an_unknown_vit_mae_guide_loads_and_pools_the_mean(tmp_path):
    """AutoModelForImageClassification refuses `model_type: vit_mae`; the explicit ViT class loads it."""
    directory = tmp_path / "my-mae"
    save_replica(directory, "vit_mae", "correct", IMAGENET)
    guide = load_guide(f"hf:{directory}")
    assert guide.describe()["pool"] == "mean" and guide.describe()["model_type"] == "vit_mae"


def test_an_unknown_guide_without_a_preprocessor_file_is_one_line(tmp_path):
    directory = tmp_path / "bare"
    save_replica(directory, "vit", "missing", IMAGENET)
    with pytest.raises(UserError, match="no usable preprocessor_config.json"):
        load_guide(f"hf:{directory}")


@pytest.mark.parametrize(
    "option, needle",
    [
        ("?pool=max", "pool must be"),
        ("?size=3", "unknown option"),
        ("?crop_pct=2", "crop_pct"),
        ("?recipe=someone/else", "recipe must be"),
    ],  # fmt: skip
)
def test_bad_hf_guide_options_are_user_errors(tmp_path, option, needle):
    directory = tmp_path / "vit-mae-cub"
    save_replica(directory, "vit", "missing", IMAGENET)
    with pytest.raises(UserError, match=needle):
        load_guide(f"hf:{directory}{option}")


@pytest.mark.parametrize(
    "change, needle",
    [({"drop": ["id2label", "label2id"]}, "needs id2label with one name per output"),
     ({"set": {"num_labels": 7, "id2label": {str(i): f"c{i}" for i in range(7)}}}, "num_labels 7"),
     ({"set": {"model_type": "bert", "architectures": ["BertModel"]}}, "Unrecognized configuration class")],
)  # fmt: skip
def test_an_hf_guide_whose_config_lacks_parts_is_one_line(tmp_path, change, needle):
    """A config.json without id2label (transformers then assumes 2 outputs), with another class count than its
    head's weights, or of a model that is no image classifier: one line naming what is wrong, not a traceback."""
    save_replica(tmp_path / "g", "vit", "correct", HALF)
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    for key in change.get("drop", []):
        config.pop(key, None)
    config.update(change.get("set", {}))
    (tmp_path / "g" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=needle) as e:
        load_guide(f"hf:{tmp_path / 'g'}")
    assert "\n" not in str(e.value) and "offline" not in str(e.value)
