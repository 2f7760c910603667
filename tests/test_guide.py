"""Guide factory: specs, differentiable preprocessing, label names; config and presets."""

import pytest
import torch

from augment.config import list_presets, load_config
from augment.errors import UserError
from augment.models.checkpoint import build_model, save_classifier
from augment.models.guides import load_guide


@pytest.fixture
def ckpt_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model("timm:resnet10t", 3)
    return save_classifier(
        model,
        tmp_path / "clf",
        architecture="timm:resnet10t",
        labels=["a", "b", "c"],
        input_size=(3, 32, 32),
        mean=[0.5] * 3,
        std=[0.25] * 3,
    ), model


def test_ckpt_guide_matches_the_saved_model_and_is_differentiable(ckpt_dir):
    path, model = ckpt_dir
    guide = load_guide(f"ckpt:{path}")
    assert guide.labels == ["a", "b", "c"]
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = guide(x)
    with torch.no_grad():
        expected = model.eval()((x - 0.5) / 0.25)
    assert torch.allclose(logits, expected, atol=1e-5)
    logits[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_preprocessing_resizes_larger_images_to_the_input_size(ckpt_dir):
    path, _ = ckpt_dir
    guide = load_guide(f"ckpt:{path}")
    assert guide.preprocess(torch.rand(1, 3, 64, 64)).shape == (1, 3, 32, 32)
    assert guide.preprocess(torch.rand(1, 3, 48, 64)).shape == (1, 3, 32, 32)


def test_hf_guide_from_a_local_directory(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label={0: "cat", 1: "dog"},
        label2id={"cat": 0, "dog": 1},
    )
    ViTForImageClassification(cfg).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    guide = load_guide(f"hf:{tmp_path}")
    assert guide.labels == ["cat", "dog"]
    assert guide(torch.rand(3, 3, 64, 64)).shape == (3, 2)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("resnet50", "expected one of"),
        ("magic:resnet50", "expected one of"),
        ("ckpt:/no/such/dir", "no such directory"),
        ("timm:not_a_real_model_name", "not_a_real_model_name"),
    ],
)
def test_bad_guide_specs_are_user_errors(spec, needle):
    with pytest.raises(UserError, match=needle):
        load_guide(spec)


def test_presets_resolve_and_overrides_apply():
    assert {"toy", "sd14-cub", "sd14-imagenet", "sd21-base"} <= set(list_presets())
    cfg = load_config("toy", overrides={"learn.lr": 0.01, "guide": "timm:x", "learn.batch_size": None})
    assert cfg.learn.lr == 0.01 and cfg.guide == "timm:x" and cfg.learn.batch_size == 10  # the preset's, not None
    assert cfg.generator.endswith("augment/toy/weights/generator")
    assert load_config("sd14-cub").learn.init_word == "bird"


def test_unknown_config_keys_are_user_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("learn:\n  learning_rate: 1\n")
    with pytest.raises(UserError, match="learning_rate"):
        load_config(config_file=bad)
    with pytest.raises(UserError, match="unknown preset"):
        load_config("nope")
