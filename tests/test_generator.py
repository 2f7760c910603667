"""Generator loading: local directories, hub ids without network, device and dtype choices."""

import pytest
import torch

from augment.errors import UserError
from augment.models.generator import load_generator, resolve_dtype, text_encoder_fingerprint
from tests.tiny import tiny_pipeline


def test_a_saved_pipeline_loads_from_its_directory_with_the_same_fingerprint(tokenizer_dir, tmp_path):
    pipe = tiny_pipeline(tokenizer_dir)
    pipe.save_pretrained(tmp_path / "gen")
    loaded = load_generator(str(tmp_path / "gen"), "cpu", "fp32")
    assert loaded.safety_checker is None
    assert text_encoder_fingerprint(loaded) == text_encoder_fingerprint(pipe)
    half = load_generator(str(tmp_path / "gen"), "cpu", "fp16")  # the same model in another dtype
    assert half.unet.dtype == torch.float16
    assert text_encoder_fingerprint(half) == text_encoder_fingerprint(pipe)
    assert text_encoder_fingerprint(tiny_pipeline(tokenizer_dir, seed=1)) != text_encoder_fingerprint(pipe)


def test_a_directory_that_is_not_a_pipeline_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model_index.json"):
        load_generator(str(tmp_path), "cpu")


def test_unreachable_hub_says_how_to_use_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hf download nobody/no-such-pipeline --local-dir DIR") as raised:
        load_generator("nobody/no-such-pipeline", "cpu")
    assert str(raised.value).endswith("give DIR as generator")
    from augment.cli import as_flags, build_parser

    shown = as_flags(raised.value, build_parser(), ["generate", "--preset", "toy"])
    assert shown.endswith("give DIR as --generator") and shown.startswith("cannot load 'nobody/no-such-pipeline'")


def test_dtype_rules():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserError):
        resolve_dtype("fp8", torch.device("cpu"))


def test_a_slow_half_precision_on_this_cpu_is_said_once_before_loading(tokenizer_dir, tmp_path, monkeypatch, capsys):
    """--dtype bf16 on a CPU without native bf16 (AVX2: a matrix product ~80x slower than fp32) gets one line
    saying so; a CPU where it is fast, fp32, auto and CUDA get none."""
    from augment import devices
    from augment.models import generator

    monkeypatch.setattr(generator, "_NOTED", set())  # an earlier bf16 load in this process may have shown one
    tiny_pipeline(tokenizer_dir).save_pretrained(tmp_path / "gen")
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_slowdown", lambda dtype: 84.0)
    note = devices.dtype_note(torch.bfloat16, cpu)
    assert "bf16" in note and "84x slower than fp32" in note and "--dtype fp32" in note
    assert devices.dtype_note(torch.float32, cpu) is None
    assert devices.dtype_note(torch.bfloat16, torch.device("cuda")) is None
    load_generator(str(tmp_path / "gen"), "cpu", "bf16")
    load_generator(str(tmp_path / "gen"), "cpu", "bf16")
    load_generator(str(tmp_path / "gen"), "cpu", "auto")
    err = capsys.readouterr().err
    assert err.count("augment: note: --dtype bf16 on this CPU") == 1 and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(devices, "cpu_slowdown", lambda dtype: 0.4)  # native bf16: faster than fp32
    assert devices.dtype_note(torch.bfloat16, cpu) is None


def test_the_cpu_slowdown_is_measured_as_a_positive_ratio():
    from augment.devices import cpu_slowdown

    ratio = cpu_slowdown(torch.bfloat16)
    assert ratio > 0 and ratio == cpu_slowdown(torch.bfloat16)  # measured once per process


def test_the_committed_toy_generator_loads_with_a_plain_from_pretrained_and_generates():
    """What the README promises: no dtype argument, diffusers' and transformers' own defaults."""
    from diffusers import StableDiffusionPipeline

    from augment.toy import WEIGHTS_DIR

    pipe = StableDiffusionPipeline.from_pretrained(str(WEIGHTS_DIR / "generator"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder.dtype == pipe.unet.dtype == torch.float32
    image = pipe(
        "a photo of a top", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert image.shape == (1, 32, 32, 3)


def test_speed_settings_use_sdpa_keep_the_images_and_compile_only_on_request(tokenizer_dir):
    """channels-last changes the memory layout, not the images (beyond float rounding); attention runs on
    torch's fused SDPA; torch.compile wraps the UNet only when asked (lazily: nothing compiles here)."""
    from augment.config import GenerateConfig
    from augment.generate.loop import generate_images
    from augment.models.generator import speed_up

    cfg = GenerateConfig(num_inference_steps=3, guidance_scale=3.0, prompts=["a photo of {name}"])
    pipe = tiny_pipeline(tokenizer_dir)
    before = generate_images(pipe, ["a photo of red", "a photo of blue"], [1, 2], cfg)
    applied = speed_up(pipe, channels_last=None)  # CPU: channels-last stays off unless asked
    assert applied == {"attention": ["AttnProcessor2_0"], "channels_last": False, "compile_unet": False}
    applied = speed_up(pipe, channels_last=True)
    assert applied["channels_last"] and pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    after = generate_images(pipe, ["a photo of red", "a photo of blue"], [1, 2], cfg)
    assert abs(after - before).max() < 1e-4
    assert type(pipe.unet).__name__ != "OptimizedModule"
    speed_up(pipe, compile_unet=True)
    assert type(pipe.unet).__name__ == "OptimizedModule" and pipe.unet.config.in_channels == 4
