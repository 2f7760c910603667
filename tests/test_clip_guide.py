"""`clip:` zero-shot guides on a CLIP architecture with random weights built here (the real SD-1.x BPE vocabulary):
logits against a reference computed with CLIPModel's own forward, label order, a gradient to the token, and bad
specs as one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.cli import main
from augment.errors import UserError
from augment.labels import read_label_set
from augment.models.guides import load_guide, loaded_spec, match_labels
from augment.models.guides.clip import TEMPLATES
from tests.tiny import COLOURS, tiny_pipeline

SIZE = 32


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, tokenizer_dir):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = tmp_path_factory.mktemp("clip") / "tiny-clip"
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": SIZE, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(out)
    image = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    CLIPProcessor(image_processor=image, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir)).save_pretrained(out)
    return out


@pytest.fixture
def colours(tmp_path):
    path = tmp_path / "colours.txt"
    path.write_text("".join(f"{5 * i}\t{name}\n" for i, name in enumerate(COLOURS)))  # indices that mean nothing here
    return read_label_set(path)


def test_zero_shot_logits_match_clips_own_forward(clip_dir, colours):
    """Reference: CLIPModel(input_ids, pixel_values) gives each image's cosine logits against every prompt; the
    class weight is the normalised mean of a class's normalised prompt embeddings (the CLIP paper's ensemble)."""
    from transformers import CLIPModel, CLIPProcessor

    guide = load_guide(f"clip:{clip_dir}?templates=animal", class_names=colours.names())
    assert guide.labels == colours.names() and guide.describe()["templates"] == "animal"
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)  # exact in uint8
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    templates = TEMPLATES["animal"]
    texts = [t.format(name) for name in colours.names() for t in templates]
    inputs = processor(text=texts, images=list(pixels), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
        text = out.text_embeds.view(len(colours), len(templates), -1).mean(1)
        weights = text / text.norm(dim=-1, keepdim=True)
        expected = model.logit_scale.exp() * out.image_embeds @ weights.T
        got = guide(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_zero_shot_guide_matches_the_label_set_by_position(clip_dir, colours):
    guide = load_guide(f"clip:{clip_dir}", class_names=colours.names())
    assert match_labels(colours, guide).indices == [0, 1, 2]  # the file's indices (0, 5, 10) do not apply


def test_gradient_reaches_the_token_through_a_clip_guide(clip_dir, colours, tokenizer_dir, tmp_path):
    from augment.config import LearnConfig
    from augment.learn.learner import TokenLearner

    guide = load_guide(f"clip:{clip_dir}", class_names=colours.names())
    cfg = LearnConfig(init_word="a", batch_size=2, max_classes_per_step=3, num_inference_steps=2, guidance_scale=3.0,
                      prompts=["a photo of {token} {name}"], decode_batch=100)  # fmt: skip
    learner = TokenLearner(tiny_pipeline(tokenizer_dir), guide, colours, [0, 1, 2], cfg, tmp_path)
    states = [learner.new_state(*e) for e in learner.prepare(list(colours.classes))]
    learner.losses(states, backward=True)
    assert all(s.embedding.grad is not None and s.embedding.grad.norm() > 0 for s in states)


def test_bad_clip_specs(clip_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="templates must be"):
        load_guide(f"clip:{clip_dir}?templates=nope", class_names=["a"])
    with pytest.raises(UserError, match="needs the label set's class names"):
        load_guide(f"clip:{clip_dir}")
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of a thing\n")
    with pytest.raises(UserError, match="needs '{}'"):
        load_guide(f"clip:{clip_dir}?templates={bad}", class_names=["a"])
    labels = tmp_path / "l.txt"
    labels.write_text("red\n")
    argv = ["learn", "--preset", "toy", "--labels", str(labels), "--out", str(tmp_path / "out"),
            "--guide", f"clip:{tmp_path / 'no-such-clip'}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load a CLIPModel" in err and not (tmp_path / "out").exists()


def test_a_clip_guide_takes_the_presets_templates_unless_its_spec_names_some():
    from augment.config import load_config

    cub = load_config("sd14-cub", overrides={"guide": "clip:openai/clip-vit-large-patch14"})
    assert loaded_spec(cub) == "clip:openai/clip-vit-large-patch14?templates=bird"
    assert loaded_spec(cub, "clip:x?templates=animal") == "clip:x?templates=animal"
    assert loaded_spec(load_config("sd14-cub-original"), "clip:x") == "clip:x?templates=bird"
    assert loaded_spec(cub, "clip:x?pool=1") == "clip:x?pool=1&templates=bird"
    assert loaded_spec(load_config("sd14-cub")) == "hf:vesteinn/vit-mae-cub"  # only clip: specs take templates
    assert loaded_spec(load_config("sd21-base"), "clip:x") == "clip:x"  # imagenet, the default, named by nothing


def test_learn_records_the_templates_its_clip_guide_used(clip_dir, tmp_path):
    """The toy world's learner with a `clip:` guide and `clip_templates: bird` from a config file: the guide it
    learned with used the bird template, and the token's meta.json says so."""
    import json

    labels = tmp_path / "l.txt"
    labels.write_text("t-shirt\ntrouser\n")
    (tmp_path / "bird.yaml").write_text("clip_templates: bird\nlearn:\n  max_steps: 1\n  batch_size: 1\n")
    argv = ["learn", "--preset", "toy", "--labels", str(labels), "--guide", f"clip:{clip_dir}",
            "--config", str(tmp_path / "bird.yaml"), "--steps", "2", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "bird")]) == 0
    meta = json.loads((tmp_path / "bird" / "tokens" / "000-t-shirt" / "meta.json").read_text())
    assert meta["guide_preprocess"]["templates"] == "bird", meta
