"""Which token a class keeps when it stops (learn.keep), and the code behind the paper's procedure that
`sd14-cub-original` reproduces: its gradient accumulation and clipping, hard clamp, collapse re-seed and
shuffled prompts (tiny random pipeline and colour guide, CPU, seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from augment.config import LearnConfig, load_config
from augment.data.tokens_io import read_meta, token_dir
from augment.labels import read_label_set
from augment.learn.learner import TokenLearner
from augment.learn.original import original_accumulation
from augment.learn.resume import LearnerCheckpoint
from augment.models.decode import decode_latents
from tests.test_tokens import learn_config
from tests.tiny import COLOURS, colour_guide, tiny_pipeline


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "colours.txt"
    path.write_text("\n".join(COLOURS) + "\n")
    return read_label_set(path)


def learn(tokenizer_dir, labels, out, **kw) -> dict[str, torch.Tensor]:
    cfg = learn_config(**{"lr": 0.2, "max_steps": 6, **kw})
    TokenLearner(tiny_pipeline(tokenizer_dir), colour_guide(), labels, [0, 1, 2], cfg, out).run()
    return {
        c.name: load_file(str(token_dir(out, c) / "learned_embeds.safetensors"))[labels.token(c)]
        for c in labels.classes
    }


def test_best_keeps_the_vector_its_lowest_loss_was_measured_on(tokenizer_dir, labels, tmp_path):
    """keep: best saves the vector held before the update of the lowest-loss step: the last vector of a run
    stopped one step earlier (the batches are the same: noise is seeded by class and step). after-best saves
    that step's updated vector, as the original code's pipeline save does."""
    best = learn(tokenizer_dir, labels, tmp_path / "best", keep="best")
    after = learn(tokenizer_dir, labels, tmp_path / "after", keep="after-best")
    for c in labels.classes:
        meta = read_meta(tmp_path / "best", c)
        losses = [h["loss"] for h in meta["history"]]
        k = meta["kept_step"]
        assert k == 1 + losses.index(min(losses)) and meta["kept"] == "best" and meta["best_loss"] == min(losses)
        assert meta["final_loss"] == losses[-1] and len(losses) == 6  # the last step's, whatever was kept
    for c in labels.classes:
        k = read_meta(tmp_path / "best", c)["kept_step"]
        before = learn(tokenizer_dir, labels, tmp_path / f"last{k - 1}-{c.name}", keep="last", max_steps=max(k - 1, 1))
        updated = learn(tokenizer_dir, labels, tmp_path / f"last{k}-{c.name}", keep="last", max_steps=k)
        if k > 1:
            assert torch.equal(best[c.name], before[c.name]), c.name
        assert torch.equal(after[c.name], updated[c.name]), c.name
    assert any(read_meta(tmp_path / "best", c)["kept_step"] < 6 for c in labels.classes)  # the test can fail


def test_resume_keeps_the_snapshot(tokenizer_dir, labels, tmp_path):
    """A learner killed after step 4 and restarted from its checkpoint keeps the same best vector."""
    cfg = learn_config(lr=0.2, max_steps=6, keep="best", checkpoint_every=1)
    whole = learn(tokenizer_dir, labels, tmp_path / "whole", keep="best")
    out = tmp_path / "resumed"
    pipe, guide = tiny_pipeline(tokenizer_dir), colour_guide()
    checkpoint = LearnerCheckpoint(out, (0, 1), "fp", torch.device("cpu"), torch.float32)
    learner = TokenLearner(pipe, guide, labels, [0, 1, 2], cfg, out)
    calls = []
    original_step = learner.step

    def step_then_die(active):
        original_step(active)
        calls.append(1)
        if len(calls) == 4:
            checkpoint.save(active, [], learner.scaler, learner.classes_per_step)
            raise KeyboardInterrupt

    learner.step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        learner.run(checkpoint=checkpoint)
    saved = json.loads(checkpoint.path.read_text())
    assert all("best_step" in e for e in saved["active"])
    TokenLearner(tiny_pipeline(tokenizer_dir), guide, labels, [0, 1, 2], cfg, out).run(checkpoint=checkpoint)
    for c in labels.classes:
        got = load_file(str(token_dir(out, c) / "learned_embeds.safetensors"))[labels.token(c)]
        assert torch.equal(got, whole[c.name])
        assert read_meta(out, c)["kept_step"] == read_meta(tmp_path / "whole", c)["kept_step"]


def test_original_accumulation_is_the_last_images_gradient_when_scaled_norms_exceed_the_clip():
    """The original's clip acts on the scaled running sum: with 2**16 as the loss scale every gradient of
    any size is cut to norm 1 (2**-16 unscaled) before the next one is added."""
    g = [torch.randn(768, generator=torch.Generator().manual_seed(i)) * 1e-3 for i in range(5)]
    step = original_accumulation(g, max_norm=1.0)
    assert torch.allclose(step, g[-1] / 5, atol=2**-16)
    assert (step - g[-1] / 5).norm() <= 2**-16 * 1.001
    mean = torch.stack(g).mean(0)
    assert torch.nn.functional.cosine_similarity(step, mean, dim=0) < 0.7  # not the mean gradient
    tiny = [x * 1e-6 for x in g]  # norms below the clip in scaled units: nothing is cut, the mean survives
    assert torch.allclose(original_accumulation(tiny, max_norm=1.0), torch.stack(tiny).mean(0), rtol=1e-5)


def test_original_mode_steps_with_the_accumulated_per_image_gradients(tokenizer_dir, labels, tmp_path):
    """grad_clip_mode: original takes each image's gradient through the UNet on its own and combines them as
    the original does; the per-image gradients sum to the batched gradient (the same graph)."""
    pipe, guide = tiny_pipeline(tokenizer_dir), colour_guide()
    cfg = learn_config(batch_size=3, grad_clip_mode="original", max_steps=1)
    learner = TokenLearner(pipe, guide, labels, [0, 1, 2], cfg, tmp_path)
    active = [learner.new_state(*e) for e in learner.prepare(list(labels.classes))]
    seen = {}
    from augment.learn import learner as module

    real = module.original_accumulation

    def spy(grads, max_norm):
        seen.setdefault("grads", []).append(torch.stack(grads))
        return real(grads, max_norm)

    module.original_accumulation = spy
    try:
        learner.losses(active, backward=True)
    finally:
        module.original_accumulation = real
    per_image = seen["grads"]
    assert len(per_image) == 3 and per_image[0].shape[0] == 3
    for s, grads in zip(active, per_image):
        assert torch.allclose(s.embedding.grad, real(list(grads), cfg.grad_clip))
    for s in active:
        s.embedding.grad = None
    learner.cfg = learn_config(batch_size=3, max_steps=1)
    learner.losses(active, backward=True)
    for s, grads in zip(active, per_image):  # the batched path's gradient: the mean of the images'
        torch.testing.assert_close(s.embedding.grad, grads.mean(0), rtol=1e-4, atol=1e-7)


def test_hard_clamp_gives_no_gradient_through_saturated_pixels(tokenizer_dir):
    pipe = tiny_pipeline(tokenizer_dir)
    latents = (torch.randn(2, 4, 8, 8) * 30).requires_grad_(True)  # far outside: many pixels saturate
    for clamp, expect_zero in (("straight-through", False), ("hard", True)):
        latents.grad = None
        images = decode_latents(pipe, latents, clamp)
        assert images.min() >= 0 and images.max() <= 1
        raw = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5
        saturated = (raw < 0) | (raw > 1)
        assert saturated.any()
        weight = torch.zeros_like(images)
        weight[saturated] = 1.0
        (images * weight).sum().backward()
        assert (latents.grad.abs().sum() == 0) == expect_zero


def test_collapse_moves_the_noise_seed_on(tokenizer_dir, labels, tmp_path):
    """reseed_on_collapse: after a step whose loss exceeds twice the best, the fixed noise changes."""
    cfg = learn_config(noise="fixed", reseed_on_collapse=True, max_steps=1)
    learner = TokenLearner(tiny_pipeline(tokenizer_dir), colour_guide(), labels, [0, 1, 2], cfg, tmp_path)
    s = learner.new_state(*learner.prepare([labels.classes[0]])[0])
    first = learner._noise(s)
    s.best_loss = 1.0
    from augment.learn.state import record

    record(s, cfg, 1.5, [False, False], 0.1, 0.0)
    assert s.noise_offset == 0 and torch.equal(learner._noise(s), first)
    record(s, cfg, 2.5, [False, False], 0.1, 0.0)
    assert s.noise_offset == 1 and not torch.equal(learner._noise(s), first)


def test_shuffled_prompts_pair_images_with_prompts_anew_each_step():
    from augment.learn.state import prompt_order

    assert prompt_order(35, 0, 0, 5, False) == [0, 1, 2, 3, 4]
    orders = {tuple(prompt_order(35, 0, step, 5, True)) for step in range(20)}
    assert len(orders) > 5 and all(sorted(o) == [0, 1, 2, 3, 4] for o in orders)
    assert prompt_order(35, 0, 3, 5, True) == prompt_order(35, 0, 3, 5, True)  # deterministic


def test_original_preset_reproduces_the_original_code():
    cfg = load_config("sd14-cub-original")
    learn: LearnConfig = cfg.learn
    assert (learn.grad_clip_mode, learn.keep, learn.clamp) == ("original", "after-best", "hard")
    assert learn.reseed_on_collapse and learn.shuffle_prompts and learn.noise == "fixed" and learn.seed == 35
    assert cfg.generate.guidance_scale == 7.5 and cfg.generate.num_inference_steps == 50 and cfg.dtype == "fp16"
    assert cfg.guide == "hf:vesteinn/vit-mae-cub"
    with pytest.raises(Exception, match="objective final"):
        LearnConfig(grad_clip_mode="original", objective="x0").validate()
