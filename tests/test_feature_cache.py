"""Feature reuse (augment.models.feature_cache): the shallow branch on kept deep features gives exactly the full
UNet's output when the features were kept from the same input (every branch of an SD-1.4-shaped UNet, and a
kept batch twice the call's, as after the guidance cutoff); a cached toy build counts what its plan says,
twice the same bytes, and tokens used under another cache setting get a note."""

from __future__ import annotations

import json

import pytest
import torch

from augment.cli import main
from augment.config import load_config
from augment.jobs.plan import plan_run
from augment.models.feature_cache import FeatureCache


@pytest.fixture(scope="module")
def narrow_unet():
    import diffusers

    from augment.testing.sd import architecture_config

    cfg = {**architecture_config("sd14-narrow")["unet"], "sample_size": 16}
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**cfg).eval()


def test_the_shallow_branch_on_features_kept_from_the_same_input_is_the_full_unet(narrow_unet):
    unet = narrow_unet
    x, t = torch.randn(4, 4, 16, 16), torch.tensor(500)
    e = torch.randn(4, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=e).sample
        for branch in range(len(unet.down_blocks) - 1):
            with FeatureCache(unet, 3, branch) as cache:
                full = unet(x, t, encoder_hidden_states=e).sample  # call 0: whole, features kept
                shallow = unet(x, t, encoder_hidden_states=e).sample  # call 1: shallow branch
                half = unet(x[2:], t, encoder_hidden_states=e[2:]).sample  # call 2: the last rows of the kept
            assert (cache.full_calls, cache.shallow_calls) == (1, 2)
            torch.testing.assert_close(full, ref, rtol=0, atol=0)
            torch.testing.assert_close(shallow, ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(half, ref[2:], rtol=1e-5, atol=1e-5)
            other = torch.randn_like(x)  # another input: the shallow branch is not the full UNet's answer
            with FeatureCache(unet, 2, branch):
                unet(x, t, encoder_hidden_states=e)
                assert not torch.allclose(unet(other, t, encoder_hidden_states=e).sample,
                                          unet.__class__.forward(unet, other, t, e).sample)  # fmt: skip
    assert "forward" not in vars(unet)  # disabled: the class's forward again


def test_a_cached_toy_build_counts_its_plan_and_repeats_its_bytes(tmp_path, capsys):
    labels = tmp_path / "l.txt"
    labels.write_text("t-shirt\ntrouser\n")
    (tmp_path / "c.yaml").write_text("learn:\n  grad_steps: 1\n")  # the toy preset's are all 10 calls
    flags = ["--preset", "toy", "--labels", str(labels), "--config", str(tmp_path / "c.yaml"),
             "--max-steps", "2", "--learn-batch-size", "2",
             "--images-per-class", "3", "--shard-size", "3", "--cache-interval", "3", "--no-progress"]  # fmt: skip
    for run in ("a", "b"):
        assert main(["build", *flags, "--out", str(tmp_path / run)]) == 0
    config = load_config("toy", overrides={"learn.max_steps": 2, "learn.batch_size": 2,
                                           "generate.images_per_class": 3, "generate.shard_size": 3,
                                           "learn.cache_interval": 3, "generate.cache_interval": 3,
                                           "learn.grad_steps": 1})  # fmt: skip
    plan = plan_run(labels, config)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    learned, made = (
        manifest["workers"]["learn"]["0of1"]["unet_evaluations"],
        manifest["workers"]["generate"]["0of1"]["unet_evaluations"],
    )
    assert learned["shallow_done"] == learned["class_steps_done"] * plan.learn.shallow_per_unit > 0
    assert made["shallow_done"] == 6 * plan.generate.shallow_per_unit > 0
    for pattern in ("shards/*.tar", "tokens/*/*.safetensors"):  # (meta.json records seconds)
        a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").glob(pattern)}
        b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").glob(pattern)}
        assert a == b and a
    capsys.readouterr()
    argv = ["generate", "--preset", "toy", "--labels", str(labels), "--tokens", str(tmp_path / "a"),
            "--images-per-class", "1", "--out", str(tmp_path / "c"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "cache_interval 3 → 1" in capsys.readouterr().err
