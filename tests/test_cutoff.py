"""Guidance cutoff (`guidance_cutoff`): classifier-free guidance only in the first fraction of the sampler's UNet
calls, one evaluation per call after it; in generation (pipeline callback and DATE's own sampler) and learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.cli import main
from augment.config import GenerateConfig
from augment.generate.loop import generate_images
from augment.learn.learner import TokenLearner
from augment.models.sampling import guided_calls
from tests.test_tokens import learn_config
from tests.tiny import COLOURS, colour_guide, tiny_pipeline

SEEDS = [11, 12, 13]
PROMPTS = ["a photo of a thing", "red", "a green square"]  # distinct: every row of the batch must stay its own


@pytest.fixture(scope="module")
def pipe(tokenizer_dir):
    return tiny_pipeline(tokenizer_dir)


def unet_batches(pipe, fn) -> list[int]:
    sizes = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, kw: sizes.append(len(a[0])), with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return sizes


def pndm():
    """SD 1.x's own sampler: N steps make N + 1 UNet calls."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         steps_offset=1, set_alpha_to_one=False)  # fmt: skip


@pytest.mark.parametrize(
    ("calls", "cutoff", "guided"),
    [(10, 1.0, 10), (51, 1.0, 51), (10, 0.5, 5), (51, 0.5, 26), (10, 0.7, 7), (50, 0.4, 20), (4, 0.01, 1)],
)
def test_guided_calls(calls, cutoff, guided):
    assert guided_calls(calls, cutoff) == guided


@pytest.mark.parametrize(("sampler", "sizes"), [("ddim", [6, 6, 3, 3]), ("pndm", [6, 6, 6, 3, 3])])
def test_the_pipeline_drops_the_unconditional_half_after_the_cutoff_like_our_own_sampler(tokenizer_dir, sampler, sizes):
    """The pipeline path (a step-end callback) and DATE's sampler with no refined step are two
    implementations: the same images, with 2N-row UNet calls for the guided calls and N-row calls after
    (4 DDIM steps: 4 calls, 2 guided; 4 PNDM steps: 5 calls, 3 guided)."""
    pipe = tiny_pipeline(tokenizer_dir)
    if sampler == "pndm":
        pipe.scheduler = pndm()
    cfg = GenerateConfig(num_inference_steps=4, guidance_scale=3.0, guidance_cutoff=0.5)
    images = {}
    assert unet_batches(pipe, lambda: images.setdefault("pipe", generate_images(pipe, PROMPTS, SEEDS, cfg))) == sizes
    date = GenerateConfig(**{**cfg.__dict__, "refine": "date", "refine_options": {"step_size": 0.0}})
    images["own"] = generate_images(pipe, PROMPTS, SEEDS, date, colour_guide(), [0, 1, 2])
    np.testing.assert_allclose(images["pipe"], images["own"], atol=1e-5)
    full = generate_images(pipe, PROMPTS, SEEDS, GenerateConfig(num_inference_steps=4, guidance_scale=3.0))
    assert np.abs(full - images["pipe"]).max() > 1e-3  # the cutoff changes the samples
    again = generate_images(pipe, PROMPTS, SEEDS, GenerateConfig(num_inference_steps=4, guidance_scale=3.0))
    np.testing.assert_array_equal(full, again)  # and the pipeline's guidance is back for the next call


def test_date_refines_after_the_cutoff_too(pipe):
    """DATE's updates at steps without guidance use the conditional call alone (the whole batch)."""
    from tests.test_date import mean_log_prob

    guide = colour_guide()
    base = dict(num_inference_steps=4, guidance_scale=3.0, guidance_cutoff=0.25, refine="date")
    plain = generate_images(pipe, PROMPTS, SEEDS, GenerateConfig(**base, refine_options={"step_size": 0.0}), guide,
                            [2, 2, 2])  # fmt: skip
    late = {"step_size": 2.0, "start": 0.25}  # refined steps 1-3, all after the cutoff (1 guided call)
    refined = generate_images(pipe, PROMPTS, SEEDS, GenerateConfig(**base, refine_options=late), guide, [2, 2, 2])
    assert mean_log_prob(guide, refined, 2) > mean_log_prob(guide, plain, 2) + 0.05


def test_the_learner_makes_one_call_per_step_after_the_cutoff_and_still_learns(tokenizer_dir, tmp_path):
    from augment.labels import read_label_set

    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    labels = read_label_set(tmp_path / "colours.txt")
    pipe = tiny_pipeline(tokenizer_dir)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: calls.append(torch.is_grad_enabled()), with_kwargs=True)
    cfg = learn_config(max_steps=1, num_inference_steps=4, grad_steps=3, guidance_cutoff=0.5)
    result = TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], cfg, tmp_path / "out").run()
    # DDIM: calls 0-1 guided (unconditional + conditional), calls 2-3 conditional only; gradient in the last 3
    assert calls == [False, False, False, True, True, True]
    assert all(r["steps"] == 1 for r in result.values())
    calls.clear()
    pipe.scheduler = pndm()  # 4 PNDM steps: 5 calls, 3 guided (as generation counts them), the last 2 with grad
    cfg = learn_config(max_steps=1, num_inference_steps=4, grad_steps=2, guidance_cutoff=0.5)
    TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], cfg, tmp_path / "pndm").run()
    assert calls == [False] * 6 + [True, True]


@pytest.mark.parametrize("command", ["generate", "learn"])
@pytest.mark.parametrize("value", ["0", "1.5"])
def test_a_cutoff_outside_0_1_is_refused_before_loading_models(tmp_path, capsys, command, value):
    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    out = tmp_path / "out"
    args = [command, "--labels", str(tmp_path / "colours.txt"), "--out", str(out), "--generator",
            str(tmp_path / "no-such-generator"), "--guide", "ckpt:" + str(tmp_path / "no-guide"), "--no-progress",
            "--device", "cpu", "--guidance-cutoff", value]  # fmt: skip
    if command == "generate":
        args.append("--no-tokens")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "guidance_cutoff" in err, err
    assert not out.exists()


def test_learner_checkpoints_of_earlier_versions_keep_their_fingerprint(tmp_path):
    """The learner checkpoint's fingerprint hashes the learn config without guidance_cutoff at its default
    (what a version without the setting hashed) and with it otherwise."""
    from dataclasses import asdict

    from augment.config import LearnConfig, hashed_settings
    from augment.labels import read_label_set
    from augment.learn.resume import learn_fingerprint

    assert "guidance_cutoff" not in hashed_settings(asdict(LearnConfig()))
    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    labels = read_label_set(tmp_path / "colours.txt")
    fp = [learn_fingerprint(LearnConfig(guidance_cutoff=c), labels, "g", "t") for c in (1.0, 1.0, 0.5)]
    assert fp[0] == fp[1] != fp[2]
