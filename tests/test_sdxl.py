"""SDXL as a generator (issue 37), on a tiny StableDiffusionXLPipeline built here (tests/tiny.py, diffusers' own
SDXL test size): the text side as diffusers' pipeline computes it, class tokens in both text encoders, the
token file in diffusers' SDXL format loaded into a plain pipeline, generation with the prompt cache and the
guidance cutoff, the fp16 VAE upcast, the memory model and the refusals. The full-size architecture, built
from the hub's own config files: tests/test_full_size_sdxl.py."""

from __future__ import annotations

import json

import pytest
import torch

from augment.cli import main
from augment.config import GenerateConfig
from augment.data.tokens_io import load_tokens
from augment.labels import read_label_set
from augment.learn.learner import TokenLearner
from augment.models.prompting import (
    add_placeholder_tokens,
    encode_prompts,
    encode_uncond,
    is_sdxl,
    token_parts,
    unet_forward,
)
from augment.models.sampling import guide_noise, guided_calls, make_scheduler
from tests.test_tokens import learn_config
from tests.tiny import COLOURS, colour_guide, tiny_pipeline, tiny_sdxl_pipeline

PROMPTS = ["a photo of a red thing", "blue"]


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "colours.txt"
    path.write_text("\n".join(COLOURS) + "\n")
    return read_label_set(path)


@torch.no_grad()
def test_prompt_embeddings_and_sampling_are_the_pipelines(tokenizer_dir):
    """encode_prompts gives diffusers' SDXL prompt embeddings (both encoders' penultimate states end to end)
    and its pooled embedding (the extra row); the empty prompt is zeros under force_zeros_for_empty_prompt and
    the encoded "" otherwise; a CFG sampling loop on unet_forward lands on the pipeline's own latents (the
    added time ids as the pipeline sets them)."""
    pipe = tiny_sdxl_pipeline(tokenizer_dir)
    assert is_sdxl(pipe) and not is_sdxl(tiny_pipeline(tokenizer_dir))
    assert token_parts(pipe) == {"clip_l": 32, "clip_g": 32}
    ours = encode_prompts(pipe, PROMPTS)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    assert ours.shape == (2, 78, 64)
    torch.testing.assert_close(ours[:, :-1], embeds)
    torch.testing.assert_close(ours[:, -1, :32], pooled)
    assert not ours[:, -1, 32:].any()
    assert not encode_uncond(pipe).any() and not negative.any() and not negative_pooled.any()
    kept = tiny_sdxl_pipeline(tokenizer_dir, force_zeros=False)
    _, neg, _, neg_pooled = kept.encode_prompt(
        prompt=PROMPTS[:1], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    uncond = encode_uncond(kept)
    assert uncond.abs().sum() > 0
    torch.testing.assert_close(uncond[:, :-1], neg)
    torch.testing.assert_close(uncond[:, -1, :32], neg_pooled)

    start = torch.randn(1, 4, 8, 4, generator=torch.Generator().manual_seed(0))  # 16 px high, 8 wide
    reference = pipe(prompt=PROMPTS[0], latents=start.clone(), num_inference_steps=3, guidance_scale=3.0, height=16,
                     width=8, output_type="latent").images  # fmt: skip
    scheduler = make_scheduler(pipe.scheduler)
    scheduler.set_timesteps(3)
    x = start * scheduler.init_noise_sigma
    cond, uncond = encode_prompts(pipe, PROMPTS[:1]), encode_uncond(pipe)
    for t in scheduler.timesteps:
        xi = scheduler.scale_model_input(x, t)
        x = scheduler.step(guide_noise(unet_forward(pipe, xi, t, uncond), unet_forward(pipe, xi, t, cond), 3.0), t, x)
        x = x.prev_sample
    torch.testing.assert_close(x, reference, rtol=1e-4, atol=1e-4)
    # the time ids matter: another target size moves the prediction
    t = scheduler.timesteps[0]
    plain = unet_forward(pipe, start, t, cond)
    swapped = pipe.unet(start, t, encoder_hidden_states=cond[:, :-1], added_cond_kwargs={
        "text_embeds": cond[:, -1, :32], "time_ids": torch.tensor([[8.0, 16, 0, 0, 8, 16]])}).sample  # fmt: skip
    assert not torch.allclose(plain, swapped)


@torch.no_grad()
def test_the_pooled_embedding_is_read_at_the_class_token_as_sdxl_reads_it(tokenizer_dir):
    """SDXL base's encoders say eos_token_id 2 (hub configs; tests/tiny.py copies them): transformers' CLIP then
    pools at the highest token id, an added class token's position. So the pooled row of "... S_c red" and
    "... S_c blue" is the same (the causal encoder has not read the name there), and diffusers' pipeline agrees."""
    pipe = tiny_sdxl_pipeline(tokenizer_dir)
    assert pipe.text_encoder_2.config.eos_token_id == 2
    plain = encode_prompts(pipe, ["a photo of red", "a photo of blue"])
    assert not torch.allclose(plain[0, -1], plain[1, -1])
    add_placeholder_tokens(pipe, ["<c>"], ["thing"])
    with_token = encode_prompts(pipe, ["a photo of <c> red", "a photo of <c> blue"])
    torch.testing.assert_close(with_token[0, -1], with_token[1, -1])
    _, _, pooled, _ = pipe.encode_prompt(prompt=["a photo of <c> red"], device="cpu", num_images_per_prompt=1,
                                         do_classifier_free_guidance=False)  # fmt: skip
    torch.testing.assert_close(with_token[0, -1, :32], pooled[0])


def test_tokens_are_learned_in_both_encoders_and_nothing_else_changes(tokenizer_dir, labels, tmp_path):
    """The learner on SDXL: each class token's vector is both rows end to end, both parts move, every other row
    of both embedding tables and every model weight stays bit-identical; the file holds clip_l and clip_g rows,
    which a plain StableDiffusionXLPipeline loads as diffusers documents for SDXL embeddings (each row with its
    own tokenizer and text encoder) and then encodes the token prompts as the learner's pipeline does."""
    from safetensors.torch import load_file

    pipe = tiny_sdxl_pipeline(tokenizer_dir)
    weights = {k: v.clone() for m in (pipe.unet, pipe.vae) for k, v in m.state_dict().items()}
    tables = [te.get_input_embeddings().weight.detach().clone() for te in (pipe.text_encoder, pipe.text_encoder_2)]
    others = {k: v.clone() for te in (pipe.text_encoder, pipe.text_encoder_2) for k, v in te.state_dict().items()
              if "token_embedding" not in k}  # fmt: skip
    probe = tiny_sdxl_pipeline(tokenizer_dir)
    _, initial = add_placeholder_tokens(probe, [labels.token(c) for c in labels.classes], ["a"] * len(labels))
    learner = TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], learn_config(max_steps=2), tmp_path / "out")
    learner.run()
    for before, te in zip(tables, (pipe.text_encoder, pipe.text_encoder_2)):
        after = te.get_input_embeddings().weight
        assert torch.equal(after[: len(before)], before)  # the vocabulary's rows
    assert all(torch.equal(v, pipe.unet.state_dict().get(k, pipe.vae.state_dict().get(k))) for k, v in weights.items())
    now = {k: v for te in (pipe.text_encoder, pipe.text_encoder_2) for k, v in te.state_dict().items()}
    assert all(torch.equal(v, now[k]) for k, v in others.items())
    prompts = [f"a photo of {labels.token(c)} {c.name}" for c in labels.classes]
    fresh = tiny_sdxl_pipeline(tokenizer_dir)
    for c, init in zip(labels.classes, initial):
        rows = load_file(str(tmp_path / "out" / "tokens" / c.slug / "learned_embeds.safetensors"))
        assert sorted(rows) == ["clip_g", "clip_l"] and rows["clip_l"].shape == rows["clip_g"].shape == (1, 32)
        assert not torch.equal(rows["clip_l"][0], init[:32]) and not torch.equal(rows["clip_g"][0], init[32:])
        token = labels.token(c)
        fresh.load_textual_inversion(rows["clip_l"], token=token, text_encoder=fresh.text_encoder,
                                     tokenizer=fresh.tokenizer)  # fmt: skip
        fresh.load_textual_inversion(rows["clip_g"], token=token, text_encoder=fresh.text_encoder_2,
                                     tokenizer=fresh.tokenizer_2)  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(encode_prompts(fresh, prompts), encode_prompts(pipe, prompts))
        assert not torch.allclose(encode_prompts(fresh, prompts), encode_prompts(probe, prompts))
    # and our own loader does the same
    ours = tiny_sdxl_pipeline(tokenizer_dir)
    assert load_tokens(ours, tmp_path / "out", labels) == {c.position: labels.token(c) for c in labels.classes}
    with torch.no_grad():
        torch.testing.assert_close(encode_prompts(ours, prompts), encode_prompts(fresh, prompts))


@torch.no_grad()
def test_generation_uses_the_cached_pooled_embeddings_and_cuts_guidance_as_diffusers(tokenizer_dir):
    """Generation on SDXL: the prompt cache's four embeddings give the pipeline's own images, and the guidance
    cutoff halves the pooled embeddings and time ids too: for one image it is diffusers' SDXLCFGCutoffCallback
    at the same step."""
    from diffusers.callbacks import SDXLCFGCutoffCallback

    from augment.generate.loop import PromptCache, generate_images

    pipe = tiny_sdxl_pipeline(tokenizer_dir)
    cfg = GenerateConfig(num_inference_steps=4, guidance_scale=3.0, batch_size=2)
    plain = generate_images(pipe, PROMPTS, [1, 2], cfg)
    cached = generate_images(pipe, PROMPTS, [1, 2], cfg, cache=PromptCache(pipe, cfg.guidance_scale))
    assert plain.shape == (2, 16, 16, 3)
    torch.testing.assert_close(torch.from_numpy(cached), torch.from_numpy(plain))
    cfg.guidance_cutoff = 0.5
    cut = generate_images(pipe, PROMPTS[:1], [1], cfg, cache=PromptCache(pipe, cfg.guidance_scale))
    assert not torch.allclose(torch.from_numpy(cut), torch.from_numpy(plain[:1]))
    callback = SDXLCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=guided_calls(4, 0.5) - 1)
    reference = pipe(prompt=PROMPTS[0], generator=[torch.Generator().manual_seed(1)], num_inference_steps=4,
                     guidance_scale=3.0, output_type="np", callback_on_step_end=callback,
                     callback_on_step_end_tensor_inputs=callback.tensor_inputs).images  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(cut), torch.from_numpy(reference), rtol=1e-4, atol=1e-4)


def test_an_fp16_sdxl_vae_decodes_in_fp32_and_sd_does_not(tokenizer_dir):
    """SDXL's VAE overflows in fp16 (force_upcast in its config): the learner's decode runs a float copy, the
    gradient reaching the fp16 latents through it; SD-1.x/2.x decode in fp16 as their pipeline does (diffusers'
    AutoencoderKL defaults force_upcast to True, but only the SDXL pipeline reads it)."""
    from augment.models.decode import decode_latents

    pipe = tiny_sdxl_pipeline(tokenizer_dir)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = decode_latents(pipe, z)
    pipe.vae.to(torch.float16)
    leaf = z.half().requires_grad_(True)
    images = decode_latents(pipe, leaf)
    assert images.dtype == torch.float32 and pipe.vae.dtype == torch.float16
    torch.testing.assert_close(images.detach(), reference, rtol=0, atol=5e-3)  # the latents' fp16 rounding only
    images.mean().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.float16 and leaf.grad.abs().sum() > 0
    sd = tiny_pipeline(tokenizer_dir)
    sd.vae.to(torch.float16)
    assert sd.vae.config.force_upcast  # AutoencoderKL's default, unread by SD's pipeline
    with torch.no_grad():
        assert decode_latents(sd, z.half()).dtype == torch.float16


def test_the_memory_model_knows_sdxl(tokenizer_dir):
    """`max_classes_per_step: auto` uses SDXL's measured footprint on an SDXL UNet; the sdxl-base preset's one
    class per step at 1024 px in bf16 fits a 24 GB GPU with its weights (SDXL base's parameter counts) and an
    fp32 ViT-L guide, and two do not."""
    from augment.config import load_config
    from augment.learn.memory import SD, SDXL, footprint, step_bytes

    assert footprint(tiny_sdxl_pipeline(tokenizer_dir)) is SDXL and footprint(tiny_pipeline(tokenizer_dir)) is SD
    c = load_config("sdxl-base").learn
    assert (c.height, c.width, c.max_classes_per_step, c.gradient_checkpointing) == (None, None, "auto", True)
    args = (c.batch_size, c.grad_steps, c.decode_batch, 1024, 1024, torch.bfloat16, True)
    one = step_bytes(1, *args, footprint=SDXL)
    weights = 3_468_837_867 * 2 + 304e6 * 4  # SDXL base in bf16 (its parameter count), a ViT-L guide in fp32
    assert weights + one < 24e9  # a 24 GB card (22.35 GiB)
    assert step_bytes(2, *args, footprint=SDXL) > 24e9 - weights  # two classes do not: auto gives one
    # fp16 models: SDXL's decode runs in fp32, twice the decode bytes
    fp16 = (c.batch_size, c.grad_steps, c.decode_batch, 1024, 1024, torch.float16, True, SDXL)
    assert step_bytes(1, *fp16, torch.float32) - step_bytes(1, *fp16) == pytest.approx(
        (SDXL.vae_decode[True] + SDXL.decode_recompute) * 4 / 2, rel=1e-9
    )


def test_auto_classes_per_step_reads_the_generators_footprint(tokenizer_dir):
    """auto_classes_per_step on a (tiny) SDXL pipeline counts SDXL's bytes, on an SD one SD's, at the same
    settings and free memory; an fp16 SDXL also counts the fp32 decode and its VAE copy."""
    from augment.config import LearnConfig
    from augment.learn.memory import SD, SDXL, auto_classes_per_step, step_bytes

    cfg = LearnConfig(batch_size=5, grad_steps=2, decode_batch=1, height=1024, width=1024, gradient_checkpointing=True)
    free = 60 * 1024**3
    expect = {}
    for name, fp in (("sdxl", SDXL), ("sd", SD)):
        args = (5, 2, 1, 1024, 1024, torch.float32, True, fp)
        expect[name] = max(k for k in range(1, 65) if k == 1 or step_bytes(k, *args) <= 0.8 * free)
    assert expect["sdxl"] != expect["sd"]
    sdxl, sd = tiny_sdxl_pipeline(tokenizer_dir), tiny_pipeline(tokenizer_dir)
    assert (
        auto_classes_per_step(sdxl, cfg, free) == expect["sdxl"]
        and auto_classes_per_step(sd, cfg, free) == expect["sd"]
    )
    sdxl.to(torch.float16)
    args16 = (5, 2, 1, 1024, 1024, torch.float16, True, SDXL)
    plain16 = max(k for k in range(1, 65) if k == 1 or step_bytes(k, *args16) <= 0.8 * free)
    assert auto_classes_per_step(sdxl, cfg, free) < plain16  # the fp32 decode counted


def _save_tiny_sdxl(tokenizer_dir, path):
    tiny_sdxl_pipeline(tokenizer_dir).save_pretrained(str(path))
    return str(path)


def test_what_is_not_built_for_sdxl_is_one_line(tokenizer_dir, tmp_path, capsys, monkeypatch):
    """DATE, feature caching, `augment adapt` and `--lora` on an SDXL generator: one line on stderr, exit 2,
    before any model loads (`build` refuses DATE before learning); a pipeline class that does not fit: one line."""
    import augment.jobs.adapt
    import augment.jobs.generate
    import augment.jobs.learn

    def no_loading(*a, **k):
        raise AssertionError("a model loaded before the refusal")

    from augment.errors import UserError
    from augment.models.generator import load_generator
    from augment.settings import LORA_WEIGHTS, LoraConfig

    sdxl = _save_tiny_sdxl(tokenizer_dir, tmp_path / "sdxl")
    labels = tmp_path / "c.txt"
    labels.write_text("0\tt-shirt\n1\ttrouser\n")
    common = ["--preset", "toy", "--labels", str(labels), "--generator", sdxl, "--no-progress"]
    for module in (augment.jobs.adapt, augment.jobs.generate, augment.jobs.learn):
        monkeypatch.setattr(module, "load_generator", no_loading)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / LORA_WEIGHTS).write_bytes(b"")
    cases = [
        (["generate", *common, "--no-tokens", "--refine", "date", "--images-per-class", "1"], "DATE refinement"),
        (["generate", *common, "--no-tokens", "--cache-interval", "2", "--images-per-class", "1"], "feature caching"),
        (["build", *common, "--refine", "date"], "DATE refinement"),
        (["learn", *common, "--lora", str(lora)], "--lora"),
    ]
    for argv, needle in cases:
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and needle in err[-1] and "not SDXL" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "o" / "shards").exists() and not (tmp_path / "o" / "tokens").exists()
    pytest.importorskip("peft")
    adapt = ["adapt", *common, "--dataset", "fashion-mnist", "--shots", "1", "--out", str(tmp_path / "a")]
    assert main(adapt) == 2
    assert "augment adapt (the LoRA route) is built for SD-1.x/2.x generators" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(UserError, match="--lora .* not SDXL"):  # the library's loader itself, after the load
        load_generator(sdxl, "cpu", "fp32", LoraConfig(weights=str(lora)))
    index = json.loads((tmp_path / "sdxl" / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"  # SDXL's parts under SD's name: they do not fit
    (tmp_path / "sdxl" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="an SDXL UNet, but its model_index.json names StableDiffusionPipeline"):
        load_generator(sdxl, "cpu", "fp32")


def test_the_committed_hub_files_are_the_ones_their_source_names():
    """augment/testing/hub/sdxl-base-1.0: each file's sha256 is the one SOURCES.md gives for the hub's file (read
    from a git mirror of the hub repo, two copies agreeing), so an edit here cannot pass for the hub's bytes."""
    import hashlib
    import re
    from importlib import resources

    root = resources.files("augment.testing").joinpath("hub", "sdxl-base-1.0")
    listed = re.findall(
        r"^\| ([\w/.]+\.json) \| \d+ \| ([0-9a-f]{64}) \|", root.joinpath("SOURCES.md").read_text(), re.M
    )
    assert len(listed) == 10
    for path, digest in listed:
        assert hashlib.sha256(root.joinpath(path).read_bytes()).hexdigest() == digest, path


def test_sdxl_learning_resumes_from_its_checkpoint_to_the_uninterrupted_tokens(
    labels3, tokenizer_dir, tmp_path, capsys
):
    """The learner's checkpoint on SDXL (each class's 2 × 32-wide vector, its AdamW moments): stopped after one
    step and continued, the same token files as an uninterrupted run, through the CLI on a saved tiny SDXL."""
    from tests.helpers import token_bytes
    from tests.test_resume import interrupted_after_one_step, learn_args

    sdxl = ["--generator", _save_tiny_sdxl(tokenizer_dir, tmp_path / "sdxl")]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(learn_args(labels3, ref, *sdxl)) == 0
    with interrupted_after_one_step():
        assert main(learn_args(labels3, out, *sdxl)) == 130
    assert (out / "checkpoints" / "learn-g0.json").is_file()
    assert main(learn_args(labels3, out, *sdxl)) == 0
    assert token_bytes(out) == token_bytes(ref) and len(token_bytes(ref)) == 3
    capsys.readouterr()
