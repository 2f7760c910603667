"""The real presets on full-size architectures with random weights (augment.testing): code paths, dtypes,
pooling and memory bookkeeping at Stable Diffusion size, on CPU, without the hub. Accuracy needs real weights
and is not tested here."""

import json

import pytest
import torch

from augment.cli import main
from augment.config import LearnConfig, load_config
from augment.labels import match_to_guide, read_label_set
from augment.learn.learner import TokenLearner
from augment.models.generator import attention_backends, load_generator
from augment.models.guides import load_guide
from augment.models.guides.hf import known_recipe
from tests.full_size import native_bf16

SMALL = """
learn: {height: 64, width: 64, num_inference_steps: 3, max_steps: 1, batch_size: 2}
generate: {height: 64, width: 64, num_inference_steps: 3, images_per_class: 2, shard_size: 2, batch_size: 2}
"""


@pytest.fixture
def two_cub_classes(tmp_path):
    path = tmp_path / "cub2.txt"
    path.write_text("0\tBlack footed Albatross\n16\tCardinal\n")
    return path


def reference_mean_pooled_logits(model, x):
    """ViT-MAE's fine-tuning head (idansc/discriminative_class_tokens vitmae.py), written out layer by layer."""
    vit = model.vit
    h = vit.embeddings(x)
    layers = vit.layers if hasattr(vit, "layers") else vit.encoder.layer
    for layer in layers:
        h = layer(h)
        h = h[0] if isinstance(h, tuple) else h
    norm = vit.layernorm
    pooled = torch.nn.functional.layer_norm(
        h[:, 1:, :].mean(dim=1), norm.normalized_shape, norm.weight, norm.bias, norm.eps
    )
    return model.classifier(pooled)


def test_vit_mae_cub_guide_classifies_the_mean_pooled_patch_tokens_in_fp32(cub_guide_dir, tmp_path):
    guide = load_guide(f"hf:{cub_guide_dir}")  # a directory named vit-mae-cub
    assert all(p.dtype == torch.float32 for p in guide.parameters())  # its checkpoint is fp16
    x = torch.rand(2, 3, 256, 256)
    logits = guide(x)
    with torch.no_grad():
        expected = reference_mean_pooled_logits(guide.model, guide.preprocess(x))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    cls = load_guide(f"hf:{cub_guide_dir}?pool=cls")(x)
    assert (cls - logits).abs().max() > 0.1  # CLS pooling is another classifier
    assert known_recipe("vesteinn/vit-mae-cub", {})[1].pool == "mean"  # the hub id of the paper's guide
    assert known_recipe("google/vit-large-patch16-224", {})[1].pool == "cls"
    (tmp_path / "vit-mae-inat21").mkdir()  # a local copy named as the hub id's model; not someone else's hub id
    assert known_recipe(f"{tmp_path}/vit-mae-inat21/", {})[1].pool == "mean"
    assert known_recipe("someone/vit-mae-inat21", {}) is None
    assert known_recipe("/models/my-vit", {}) is None


def test_presets_learn_under_the_generators_sampler_with_the_original_gradient_placement():
    for name in ("sd14-cub", "sd14-cub-original", "sd14-imagenet", "sd21-base", "sdxl-base"):
        cfg = load_config(name)
        assert cfg.learn.scheduler == cfg.generate.scheduler == "pipeline"
        assert cfg.learn.grad_steps == 2 and cfg.learn.gradient_checkpointing and cfg.learn.decode_batch == 1
        assert cfg.learn.max_classes_per_step == "auto"
    original, paper = load_config("sd14-cub-original").learn, load_config("sd14-cub").learn
    assert (original.num_inference_steps, paper.num_inference_steps) == (30, 50)
    assert len(original.prompts) == 3 and original.noise == "fixed" and original.stop_accuracy == 0.8


def grads(pipe, guide, labels, **kw):
    cfg = LearnConfig(
        **{
            "init_word": "bird",
            "batch_size": 2,
            "height": 64,
            "width": 64,
            "num_inference_steps": 3,
            "grad_steps": 2,
            "decode_batch": 1,
            "max_classes_per_step": 2,
            **kw,
        }
    )
    learner = TokenLearner(pipe, guide, labels, match_to_guide(labels, guide.labels).indices, cfg, "unused")
    assert learner.scaler.enabled == (pipe.unet.dtype == torch.float16)  # loss scaling for fp16 alone
    states = [learner.new_state(*e) for e in learner.prepare(list(labels.classes))]
    learner.losses(states, backward=True)
    assert learner.scaler.unscale([s.embedding for s in states])
    learner.injector.remove()
    assert all(s.embedding.dtype == s.embedding.grad.dtype == torch.float32 for s in states)  # token rows stay fp32
    return torch.cat([s.embedding.grad.flatten() for s in states])


def test_full_size_token_gradient_with_checkpointing(sd14_dir, cub_guide_dir, two_cub_classes):
    """SD-1.4 at 64 px under its PNDM: gradient checkpointing leaves the token gradient unchanged."""
    guide, labels = load_guide(f"hf:{cub_guide_dir}"), read_label_set(two_cub_classes)
    pipe = load_generator(str(sd14_dir), "cpu", "fp32")
    assert attention_backends(pipe) == {"AttnProcessor2_0"}  # every attention layer on torch's fused SDPA
    plain = grads(pipe, guide, labels)
    ckpt = grads(load_generator(str(sd14_dir), "cpu", "fp32"), guide, labels, gradient_checkpointing=True)
    assert plain.norm() > 0
    torch.testing.assert_close(ckpt, plain, rtol=1e-3, atol=1e-6 * float(plain.abs().max()))


@pytest.mark.parametrize("size", ["narrow", pytest.param("full", marks=native_bf16)])
def test_bf16_token_gradient_with_checkpointing_follows_fp32(size, request, cub_guide_dir, two_cub_classes):
    """bf16 models (no loss scale needed, token rows in fp32) with gradient checkpointing give the fp32
    gradient's direction: at SD-1.4's size where the CPU has native bf16, at sd14-narrow's size on every CPU
    (fp16 on CPU is too slow to test here; see test_tokens)."""
    generator = str(request.getfixturevalue("sd14_dir" if size == "full" else "sd14_narrow_dir"))
    guide, labels = load_guide(f"hf:{cub_guide_dir}"), read_label_set(two_cub_classes)
    plain = grads(load_generator(generator, "cpu", "fp32"), guide, labels)
    pipe = load_generator(generator, "cpu", "bf16")
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    bf16 = grads(pipe, guide, labels, gradient_checkpointing=True)
    assert plain.norm() > 0
    assert float(torch.nn.functional.cosine_similarity(bf16, plain, dim=0)) >= 0.99


@pytest.mark.parametrize(
    "dtype,size", [("fp32", "full"), ("bf16", "narrow"), pytest.param("bf16", "full", marks=native_bf16)]
)
def test_sd14_cub_preset_learns_and_generates_through_the_cli(
    cub_guide_dir, two_cub_classes, tmp_path, dtype, size, request, capsys
):
    """The sd14-cub preset end to end through the CLI (learn, generate, generate with DATE and its gradient
    checkpointing): in fp32 at SD-1.4's size; in bf16 at sd14-narrow's size on every CPU and at full size where
    the CPU has native bf16."""
    generator = request.getfixturevalue("sd14_dir" if size == "full" else "sd14_narrow_dir")
    small = tmp_path / "small.yaml"
    small.write_text(SMALL)
    common = [
        "--preset",
        "sd14-cub",
        "--config",
        str(small),
        "--labels",
        str(two_cub_classes),
        "--generator",
        str(generator),
        "--guide",
        f"hf:{cub_guide_dir}",
        "--dtype",
        dtype,
        "--no-progress",
    ]
    out = tmp_path / "run"
    assert main(["learn", *common, "--out", str(out)]) == 0
    meta = json.loads((out / "tokens" / "000-black-footed-albatross" / "meta.json").read_text())
    assert meta["steps"] == 1 and meta["config"]["scheduler"] == "pipeline" and meta["classes_per_step"] >= 1
    assert meta["guide_index"] == 0 and meta["history"][0]["grad_norm"] > 0
    assert main(["generate", *common, "--tokens", str(out), "--out", str(out)]) == 0
    assert (
        main(
            [
                "generate",
                *common,
                "--tokens",
                str(out),
                "--refine",
                "date",
                "--refine-step-size",
                "1",
                "--out",
                str(tmp_path / "date"),
            ]
        )
        == 0
    )
    for d in (out, tmp_path / "date"):
        info = json.loads((d / "_info.json").read_text())
        assert info["splits"]["train"]["num_samples"] == 4
    manifest = json.loads((tmp_path / "date" / "manifest.json").read_text())
    assert manifest["generate"]["config"]["generate"]["refine_options"]["checkpointing"] is True
    assert manifest["generate"]["config"]["dtype"] == dtype
    capsys.readouterr()


def test_auto_classes_per_step_fits_the_papers_footprint():
    """The memory model behind `max_classes_per_step: auto` (augment.learn.memory, measured by
    benchmarks/bench_sd_memory.py): one class of the SD presets at 512 px in bf16 fits 10 GB with the
    weights, and auto grows with free memory."""
    from augment.learn.memory import GIB, step_bytes

    weights = (860e6 + 84e6 + 123e6) * 2 + 86e6 * 4  # SD-1.4 in bf16, a ViT-B guide in fp32
    one = step_bytes(1, 5, 2, 1, 512, 512, torch.bfloat16, True)
    assert weights + one < 10e9
    assert step_bytes(1, 5, 2, 1, 512, 512, torch.float32, True) == pytest.approx(2 * one, rel=0.05)
    assert step_bytes(1, 5, 2, 1, 512, 512, torch.float32, False) > 2.5 * step_bytes(
        1, 5, 2, 1, 512, 512, torch.float32, True
    )
    assert step_bytes(4, 5, 2, 1, 512, 512, torch.bfloat16, True) < 24 * GIB - weights


@pytest.mark.slow
@native_bf16
def test_one_learner_step_at_512_px(sd14_dir, cub_guide_dir, two_cub_classes):
    """One real-size step of the sd14-cub preset's learner (bf16, checkpointing, decode_batch 1, PNDM)."""
    guide, labels = load_guide(f"hf:{cub_guide_dir}"), read_label_set(two_cub_classes)
    pipe = load_generator(str(sd14_dir), "cpu", "bf16")
    g = grads(
        pipe,
        guide,
        read_label_set(two_cub_classes),
        height=512,
        width=512,
        batch_size=1,
        num_inference_steps=2,
        gradient_checkpointing=True,
        max_classes_per_step=1,
    )
    assert torch.isfinite(g).all() and g.norm() > 0
    assert len(labels) == 2
