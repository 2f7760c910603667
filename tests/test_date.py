"""DATE refinement (augment/generate/date.py) on the tiny pipeline: it raises the guide's log-probability of the target,
it is exactly the pipeline when nothing is refined, and the CLI checks its options before loading models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from augment.cli import main
from augment.config import DateOptions, GenerateConfig
from augment.data.shards import load_samples, plan_units
from augment.errors import UserError
from augment.generate.loop import generate_images, generate_units
from augment.labels import read_label_set
from augment.models.sampling import predicted_x0
from tests.tiny import COLOURS, colour_guide, tiny_pipeline

SEEDS = [11, 12, 13, 14]
PROMPTS = ["a photo of a thing"] * len(SEEDS)


def config(**refine: object) -> GenerateConfig:
    return GenerateConfig(
        num_inference_steps=4, guidance_scale=3.0, refine="date" if refine else None, refine_options=dict(refine)
    )


def mean_log_prob(guide, images: np.ndarray, target: int) -> float:
    with torch.no_grad():
        logits = guide(torch.from_numpy(images).permute(0, 3, 1, 2))
    return float(logits.log_softmax(1)[:, target].mean())


@pytest.fixture(scope="module")
def pipe(tokenizer_dir):
    return tiny_pipeline(tokenizer_dir)


@pytest.fixture(scope="module")
def plain(pipe):
    return generate_images(pipe, PROMPTS, SEEDS, config())


@pytest.mark.parametrize("target", [0, 2])
def test_date_raises_the_target_log_probability(pipe, plain, target):
    guide = colour_guide()
    refined = generate_images(pipe, PROMPTS, SEEDS, config(step_size=2.0), guide, [target] * len(SEEDS))
    before, after = mean_log_prob(guide, plain, target), mean_log_prob(guide, refined, target)
    assert after > before + 0.05, (before, after)
    # the other class's log-probability is not what went up
    other = 1
    assert after - before > mean_log_prob(guide, refined, other) - mean_log_prob(guide, plain, other)


@pytest.mark.parametrize("options", [{"step_size": 0.0}, {"updates": 0}, {"start": 0.5, "stop": 0.5}])
def test_without_refined_steps_the_sampler_is_the_pipeline(pipe, plain, options):
    images = generate_images(pipe, PROMPTS, SEEDS, config(**options), colour_guide(), [0] * len(SEEDS))
    assert images.shape == plain.shape and images.dtype == np.float32
    np.testing.assert_allclose(images, plain, atol=1e-5)


def test_the_reward_sees_images_clamped_as_the_learner_and_the_pipeline_see_them(pipe):
    """DATE's reward decodes x̂0 through augment.models.decode, clamped to [0, 1] in the forward pass (it took
    the raw decode before, values the pipeline's own output never has) with the gradient still flowing."""
    from augment.generate.date import class_log_prob

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, images):
            seen.append(images.detach())
            return images.flatten(1)[:, :3] * 10

    x0 = (torch.randn(2, 4, 8, 8) * 40).requires_grad_(True)  # far outside: saturated pixels
    logp = class_log_prob(pipe, Spy(), x0, torch.tensor([0, 1]))
    logp.sum().backward()
    assert seen[0].min() >= 0 and seen[0].max() <= 1 and x0.grad.abs().sum() > 0


def test_refinement_leaves_parameter_flags_alone(pipe):
    guide = colour_guide()
    flags = [p.requires_grad for p in pipe.unet.parameters()]
    generate_images(pipe, PROMPTS[:1], SEEDS[:1], config(step_size=1.0), guide, [0])
    assert [p.requires_grad for p in pipe.unet.parameters()] == flags
    assert all(p.grad is None for p in pipe.unet.parameters())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_predicted_x0_is_the_schedulers(prediction):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for sched in (
        DDIMScheduler(prediction_type=prediction, clip_sample=False),
        EulerDiscreteScheduler(prediction_type=prediction),
    ):
        sched.set_timesteps(10)
        t = sched.timesteps[3]
        sched._step_index = 3  # Euler's position in its sigmas (DDIM has none)
        expected = sched.step(out, t, x).pred_original_sample
        sched._step_index = 3
        torch.testing.assert_close(predicted_x0(sched, x, out, t), expected, rtol=1e-4, atol=1e-4)


def test_refined_steps_follow_the_options():
    assert DateOptions().refined_steps(5) == [0, 1, 2, 3]  # never the last step
    assert DateOptions(every=2).refined_steps(6) == [0, 2, 4]
    assert DateOptions(start=0.5, stop=1.0).refined_steps(10) == [5, 6, 7, 8]
    assert DateOptions(start=0.0, stop=0.3).refined_steps(10) == [0, 1, 2]
    assert DateOptions(step_size=0.0).refined_steps(10) == []
    assert (
        GenerateConfig(refine_options={"step_size": 1}).date is None
    )  # typed when the config is built, used with date
    assert GenerateConfig(refine="date", refine_options={"step_size": 1}).date == DateOptions(step_size=1.0)
    for method, options in [
        ("dart", {}),
        ("date", {"bogus": 1}),
        ("date", {"every": 0}),
        ("date", {"step_size": "big"}),
        ("date", {"start": 0.8, "stop": 0.2}),
        ("date", {"updates": 1.5}),
        ("date", {"from_original": 1}),
    ]:
        with pytest.raises(UserError):
            GenerateConfig(refine=method, refine_options=options).validate()


def test_units_record_the_refine_settings(pipe, tmp_path):
    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    labels = read_label_set(tmp_path / "colours.txt")
    cfg = GenerateConfig(
        images_per_class=2,
        shard_size=2,
        batch_size=2,
        num_inference_steps=2,
        guidance_scale=3.0,
        refine="date",
        refine_options={"step_size": 0.5},
    )
    generate_units(pipe, labels, None, cfg, plan_units([1], 2, 2), tmp_path / "out", "h", colour_guide(), [0, 1, 2])
    samples = load_samples(tmp_path / "out")
    assert len(samples) == 2
    for s in samples:
        assert s["meta"]["refine"] == {"method": "date", **DateOptions(step_size=0.5).__dict__}


@pytest.mark.parametrize(
    "extra, config_text",
    [
        (["--refine", "date", "--refine-every", "0"], None),
        (["--refine", "date", "--refine-step-size", "-1"], None),
        (["--refine-step-size", "1"], None),  # without --refine date
        (["--refine", "date"], "generate:\n  refine_options: {bogus: 1}\n"),
        ([], "generate:\n  refine: dart\n"),
    ],
)
def test_cli_rejects_bad_refine_options_before_loading_models(tmp_path, capsys, extra, config_text):
    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    out = tmp_path / "out"
    args = [
        "generate",
        "--labels",
        str(tmp_path / "colours.txt"),
        "--out",
        str(out),
        "--no-tokens",
        "--generator",
        str(tmp_path / "no-such-generator"),
        "--guide",
        "ckpt:" + str(tmp_path / "no-guide"),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]
    if config_text is not None:
        (tmp_path / "c.yaml").write_text(config_text)
        args += ["--config", str(tmp_path / "c.yaml")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refine" in err, err
    assert not out.exists()


def test_cli_generates_with_date(pipe, tmp_path):
    import timm

    from augment.models.checkpoint import save_classifier

    pipe.save_pretrained(tmp_path / "pipe")
    save_classifier(
        timm.create_model("test_resnet", pretrained=False, num_classes=3),
        tmp_path / "guide",
        architecture="timm:test_resnet",
        labels=COLOURS,
        input_size=(3, 16, 16),
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )
    (tmp_path / "colours.txt").write_text("\n".join(COLOURS) + "\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--labels",
                str(tmp_path / "colours.txt"),
                "--out",
                str(out),
                "--no-tokens",
                "--generator",
                str(tmp_path / "pipe"),
                "--guide",
                f"ckpt:{tmp_path / 'guide'}",
                "--refine",
                "date",
                "--refine-step-size",
                "0.5",
                "--images-per-class",
                "1",
                "--shard-size",
                "1",
                "--steps",
                "2",
                "--no-progress",
                "--device",
                "cpu",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    samples = load_samples(out)
    assert len(samples) == 3
    assert all(s["meta"]["refine"]["step_size"] == 0.5 for s in samples)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generate"]["config"]["generate"]["refine_options"]["step_size"] == 0.5  # typed: every key
