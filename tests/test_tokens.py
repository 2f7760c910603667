"""The token learner on a tiny random pipeline and a colour classifier (CPU, seconds)."""

import copy

import pytest
import torch

from augment.config import LearnConfig
from augment.data.tokens_io import load_tokens, read_meta
from augment.labels import match_to_guide, read_label_set
from augment.learn.learner import TokenLearner
from augment.models.prompting import add_placeholder_tokens, encode_prompts, format_prompt
from tests.tiny import COLOURS, colour_guide, tiny_pipeline

STEPS = 2


def learn_config(**kw) -> LearnConfig:
    base = dict(
        init_word="a",
        batch_size=2,
        max_classes_per_step=3,
        lr=0.05,
        max_steps=8,
        patience=100,
        stop_window=1000,
        guidance_scale=3.0,
        num_inference_steps=STEPS,
        prompts=["a photo of {token} {name}"],
        decode_batch=100,
        keep="last",  # these tests follow the vector as it learns; tests/test_keep.py covers the kept snapshot
    )
    return LearnConfig(**{**base, **kw})


@pytest.fixture
def labels(tmp_path):
    path = tmp_path / "colours.txt"
    path.write_text("\n".join(COLOURS) + "\n")
    return read_label_set(path)


def target_probability(pipe, guide, labels, seeds=range(100, 116)) -> list[float]:
    """Mean guide probability of each class on images generated with its token prompt (fixed seeds)."""
    probs = []
    for c in labels.classes:
        prompt = format_prompt("a photo of {token} {name}", labels.token(c), c.name)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.no_grad():
            images = pipe(
                prompt=[prompt] * len(gens),
                generator=gens,
                num_inference_steps=STEPS,
                guidance_scale=3.0,
                output_type="pt",
            ).images
            probs.append(guide(images).softmax(1)[:, c.position].mean().item())
    return probs


@pytest.mark.parametrize("objective", ["final", "x0"])
def test_learning_raises_target_probability_for_every_class(tokenizer_dir, labels, tmp_path, objective):
    guide = colour_guide()
    before_pipe = tiny_pipeline(tokenizer_dir)
    add_placeholder_tokens(before_pipe, [labels.token(c) for c in labels.classes], ["a"] * len(labels))
    before = target_probability(before_pipe, guide, labels)

    pipe = tiny_pipeline(tokenizer_dir)
    cfg = learn_config(batch_size=6, max_steps=12, lr=0.03, objective=objective, grad_steps=STEPS)
    learner = TokenLearner(pipe, guide, labels, match_to_guide(labels, guide.labels).indices, cfg, tmp_path)
    results = learner.run()
    after = target_probability(pipe, guide, labels)

    assert sorted(results) == [0, 1, 2]
    for c, b, a in zip(COLOURS, before, after):
        assert a > b + 0.015, f"{c}: target probability {b:.3f} → {a:.3f}"
    for c in labels.classes:
        history = read_meta(tmp_path, c)["history"]
        assert len(history) == 12


def test_only_the_new_rows_change_and_models_stay_frozen(tokenizer_dir, labels, tmp_path):
    pipe = tiny_pipeline(tokenizer_dir)
    emb_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    unet_before = copy.deepcopy(pipe.unet.state_dict())
    guide = colour_guide()
    TokenLearner(pipe, guide, labels, [0, 1, 2], learn_config(max_steps=3), tmp_path).run()
    emb_after = pipe.text_encoder.get_input_embeddings().weight.detach()
    n = emb_before.shape[0]
    assert emb_after.shape[0] == n + 3
    assert torch.equal(emb_after[:n], emb_before)  # bit-identical, not merely close
    assert not torch.equal(emb_after[n:], emb_after[n:].mean(0).expand(3, -1))  # the new rows moved apart
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k


def test_saved_token_loads_with_load_textual_inversion_and_encodes_identically(tokenizer_dir, labels, tmp_path):
    pipe = tiny_pipeline(tokenizer_dir)
    TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], learn_config(max_steps=3), tmp_path).run()
    prompts = [format_prompt("a photo of {token} {name}", labels.token(c), c.name) for c in labels.classes]
    with torch.no_grad():
        learned = encode_prompts(pipe, prompts)

    fresh = tiny_pipeline(tokenizer_dir)
    tokens = load_tokens(fresh, tmp_path, labels)
    assert tokens == {c.position: labels.token(c) for c in labels.classes}
    with torch.no_grad():
        loaded = encode_prompts(fresh, prompts)
    assert torch.equal(loaded, learned)
    # and the learned vectors really are in use: the init word gives another encoding
    with torch.no_grad():
        plain = encode_prompts(fresh, [p.replace(labels.token(c), "a") for p, c in zip(prompts, labels.classes)])
    assert not torch.allclose(plain, loaded)


def test_gradient_skipping_one_unet_call_with_grad_per_step(tokenizer_dir, labels, tmp_path):
    pipe = tiny_pipeline(tokenizer_dir)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(torch.is_grad_enabled()))
    TokenLearner(
        pipe, colour_guide(), labels, [0, 1, 2], learn_config(max_steps=2, num_inference_steps=4), tmp_path
    ).run()
    # 2 steps, all 3 classes in one batch: per step 4 conditional + 4 unconditional calls, one of them with grad
    assert len(calls) == 2 * 2 * 4
    assert sum(calls) == 2


def test_grad_steps_puts_gradient_through_the_last_k_conditional_calls(tokenizer_dir, labels, tmp_path):
    pipe = tiny_pipeline(tokenizer_dir)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append((int(args[1]), torch.is_grad_enabled())))
    TokenLearner(
        pipe,
        colour_guide(),
        labels,
        [0, 1, 2],
        learn_config(max_steps=1, num_inference_steps=4, grad_steps=3),
        tmp_path,
    ).run()
    assert len(calls) == 2 * 4 and sum(g for _, g in calls) == 3
    timesteps = [t for t, _ in calls[::2]]
    assert [g for _, g in calls[1::2]] == [False, True, True, True]  # the last 3 conditional calls
    assert timesteps == sorted(timesteps, reverse=True)


@pytest.mark.parametrize("objective, chained", [("final", [False, False, True, True]), ("x0", [False] * 4)])
def test_x0_objective_classifies_each_steps_prediction_without_backprop_through_the_chain(
    tokenizer_dir, labels, tmp_path, objective, chained
):
    """With grad_steps 3 of 4: "final" classifies the last image once, and the gradient runs back through the
    chain (later UNet inputs carry grad); "x0" classifies each of the 3 steps' x̂0, and every UNet input is a
    detached latent, so each step's gradient reaches the token through that step's own call only."""
    pipe, guide = tiny_pipeline(tokenizer_dir), colour_guide()
    inputs, guide_calls = [], []
    pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].requires_grad))
    guide.model.register_forward_pre_hook(lambda module, args: guide_calls.append(len(args[0])))
    TokenLearner(
        pipe,
        guide,
        labels,
        [0, 1, 2],
        learn_config(max_steps=1, num_inference_steps=4, grad_steps=3, objective=objective),
        tmp_path,
    ).run()
    assert inputs[0::2] == chained  # each step's UNet input (both CFG halves get it)
    assert len(guide_calls) == (3 if objective == "x0" else 1) and set(guide_calls) == {3 * 2}


@pytest.mark.parametrize("objective", ["final", "x0"])
def test_backward_inside_losses_gives_the_same_gradient(tokenizer_dir, labels, tmp_path, objective):
    """The learner backpropagates inside `losses` (x0: step by step, one graph alive at a time); the token
    gradients equal those of one backward through the whole returned loss, class by class."""
    learner = TokenLearner(
        tiny_pipeline(tokenizer_dir),
        colour_guide(),
        labels,
        [0, 1, 2],
        learn_config(num_inference_steps=3, grad_steps=3, objective=objective),
        tmp_path,
    )
    states = [learner.new_state(*entry) for entry in learner.prepare(list(labels.classes[:2]))]
    per_sample, _, _ = learner.losses(states)
    expected = torch.autograd.grad(per_sample.mean(1).sum(), [s.embedding for s in states])
    detached, _, _ = learner.losses(states, backward=True)
    assert not detached.requires_grad
    assert torch.allclose(detached, per_sample.detach(), atol=1e-6)
    for s, g in zip(states, expected):
        assert g.norm() > 0 and torch.allclose(s.embedding.grad, g, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(expected[0], expected[1])  # each class gets its own gradient
    learner.injector.remove()


def test_steps_offset_sets_the_learners_last_timestep(tokenizer_dir, labels, tmp_path):
    pipe = tiny_pipeline(tokenizer_dir)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(int(args[1])))
    TokenLearner(
        pipe,
        colour_guide(),
        labels,
        [0, 1, 2],
        learn_config(max_steps=1, num_inference_steps=4, timestep_spacing="leading", steps_offset=150),
        tmp_path,
    ).run()
    assert min(seen) == 150 and max(seen) == 150 + 3 * 250


def test_rerun_skips_learned_classes(tokenizer_dir, labels, tmp_path):
    pipe = tiny_pipeline(tokenizer_dir)
    TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], learn_config(max_steps=1), tmp_path).run()
    calls = []
    again = tiny_pipeline(tokenizer_dir)
    again.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    assert TokenLearner(again, colour_guide(), labels, [0, 1, 2], learn_config(max_steps=1), tmp_path).run() == {}
    assert calls == []


def test_a_class_learns_the_same_alone_or_batched_with_others(tokenizer_dir, labels, tmp_path):
    """Noise is seeded per (class, step), and each class's loss is its own: batching changes nothing."""
    cfg = learn_config(max_steps=3)
    TokenLearner(tiny_pipeline(tokenizer_dir), colour_guide(), labels, [0, 1, 2], cfg, tmp_path / "all").run()
    TokenLearner(tiny_pipeline(tokenizer_dir), colour_guide(), labels, [0, 1, 2], cfg, tmp_path / "one").run(
        classes=[labels.classes[1]]
    )
    a = read_meta(tmp_path / "all", labels.classes[1])["history"]
    b = read_meta(tmp_path / "one", labels.classes[1])["history"]
    assert [h["loss"] for h in a] == pytest.approx([h["loss"] for h in b], rel=1e-3)


def test_stopping_rules(tokenizer_dir, labels, tmp_path):
    # every sample of "red" right at once with an easy guide → the paper's first rule fires at step 1
    pipe = tiny_pipeline(tokenizer_dir)
    guide = colour_guide()
    guide.model.forward = lambda x: torch.tensor([[10.0, 0, 0]]).expand(len(x), 3) + 0 * x.mean()
    res = TokenLearner(pipe, guide, labels, [0, 1, 2], learn_config(stop_window=1), tmp_path).run(
        classes=[labels.classes[0]]
    )
    assert res[0]["stop_reason"] == "all correct" and res[0]["steps"] == 1
    # never right → runs to max_steps
    res = TokenLearner(
        tiny_pipeline(tokenizer_dir), guide, labels, [0, 1, 2], learn_config(max_steps=4), tmp_path / "b"
    ).run(classes=[labels.classes[1]])
    assert res[1]["stop_reason"] == "max steps" and res[1]["steps"] == 4


def token_gradients(learner, classes) -> torch.Tensor:
    """One backward of the learner's loss for `classes` (first step's noise): the unscaled token gradients."""
    states = [learner.new_state(*entry) for entry in learner.prepare(list(classes))]
    learner.losses(states, backward=True)
    assert learner.scaler.unscale([s.embedding for s in states])
    learner.injector.remove()
    return torch.cat([s.embedding.grad.flatten() for s in states])


def test_fp16_loss_scaling_keeps_small_token_gradients(tokenizer_dir, labels, tmp_path):
    """With fp16 models, gradients of the size Stable Diffusion's are at 512 px underflow in fp16 (here: a
    guide with small weights); the dynamic loss scale keeps them. The token rows stay fp32."""
    from augment.learn.precision import LossScaler

    def grads(dtype, scaled):
        guide = colour_guide()
        guide.model.weight.data *= 1e-4
        learner = TokenLearner(
            tiny_pipeline(tokenizer_dir).to(dtype=dtype),
            guide,
            labels,
            [0, 1, 2],
            learn_config(num_inference_steps=3, grad_steps=2),
            tmp_path,
        )
        if not scaled:
            learner.scaler = LossScaler(False)
        assert learner.scaler.enabled == (scaled and dtype == torch.float16)
        g = token_gradients(learner, labels.classes)
        assert g.dtype == torch.float32
        return g

    reference = grads(torch.float32, True)
    cos = lambda g: float(torch.nn.functional.cosine_similarity(g, reference, dim=0))  # noqa: E731
    assert cos(grads(torch.float16, True)) >= 0.999
    assert cos(grads(torch.float16, False)) < 0.99  # what fp16 gave before loss scaling


def test_fp16_overflow_retries_the_step_with_half_the_scale(tokenizer_dir, labels, tmp_path):
    """A scaled loss that overflows fp16 is retried on the same noise with a smaller scale: the step that
    lands equals the fp32 step's direction and no class loses or repeats a step."""

    def one_step(dtype):
        learner = TokenLearner(
            tiny_pipeline(tokenizer_dir).to(dtype=dtype),
            colour_guide(),
            labels,
            [0, 1, 2],
            learn_config(num_inference_steps=3, grad_steps=2, max_steps=1),
            tmp_path / str(dtype),
        )
        states = [learner.new_state(*e) for e in learner.prepare(list(labels.classes))]
        before = torch.stack([s.embedding.detach().clone() for s in states])
        learner.step(states)
        learner.injector.remove()
        return learner, states, torch.stack([s.embedding.detach() for s in states]) - before

    l16, states, d16 = one_step(torch.float16)
    _, _, d32 = one_step(torch.float32)
    assert l16.scaler.scale < 2.0**16  # it overflowed (the full-size logits are large)
    assert all(s.step == 1 for s in states) and torch.isfinite(d16).all()
    assert float(torch.nn.functional.cosine_similarity(d16.flatten(), d32.flatten(), dim=0)) > 0.99


def test_decode_batch_changes_memory_not_gradients(tokenizer_dir, labels, tmp_path):
    """Decode + guide + backward in chunks of 1 image give the gradient of the whole batch at once."""
    guide_calls = []

    def grads(decode_batch):
        guide = colour_guide()
        guide.model.register_forward_pre_hook(lambda m, a: guide_calls.append(len(a[0])))
        learner = TokenLearner(
            tiny_pipeline(tokenizer_dir),
            guide,
            labels,
            [0, 1, 2],
            learn_config(num_inference_steps=3, grad_steps=2, decode_batch=decode_batch),
            tmp_path,
        )
        return token_gradients(learner, labels.classes)

    whole = grads(100)
    assert guide_calls == [6]
    guide_calls.clear()
    chunked = grads(1)
    assert guide_calls == [1] * 6
    assert torch.allclose(chunked, whole, rtol=1e-4, atol=1e-7) and whole.norm() > 0


def test_pipeline_sampler_counts_grad_steps_in_unet_calls_like_the_original_code(tokenizer_dir, labels, tmp_path):
    """Under SD's PNDM (`scheduler: pipeline`), N steps make N+1 UNet calls (its warm-up repeats a
    timestep); grad_steps 2 puts the gradient through the last two, t = 34 and t = 1 at 30 steps, where
    idansc/discriminative_class_tokens' `i >= N - 1` puts it."""
    from diffusers import PNDMScheduler

    pipe = tiny_pipeline(tokenizer_dir)
    pipe.scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type="v_prediction",
    )
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, a: calls.append((int(a[1]), torch.is_grad_enabled())))
    TokenLearner(
        pipe,
        colour_guide(),
        labels,
        [0, 1, 2],
        learn_config(max_steps=1, num_inference_steps=30, grad_steps=2, scheduler="pipeline"),
        tmp_path,
    ).run()
    cond = calls[1::2]  # the conditional half of each call
    assert len(cond) == 31
    assert [t for t, g in cond if g] == [34, 1]
    ddim = []
    pipe2 = tiny_pipeline(tokenizer_dir)
    pipe2.scheduler = pipe.scheduler
    pipe2.unet.register_forward_pre_hook(lambda m, a: ddim.append(int(a[1])))
    TokenLearner(
        pipe2,
        colour_guide(),
        labels,
        [0, 1, 2],
        learn_config(max_steps=1, num_inference_steps=30, scheduler="ddim"),
        tmp_path / "ddim",
    ).run()
    assert len(ddim) == 2 * 30  # the learner's own DDIM stays one flag away


def test_original_codes_stopping_rules_and_fixed_noise(tokenizer_dir, labels, tmp_path):
    """stop_accuracy 0.8 stops a class at 4 of 5 right (the original code's `> 0.7`); patience stops a class
    whose loss stops improving; `noise: fixed` draws the same noise at every step."""
    pipe = tiny_pipeline(tokenizer_dir)
    guide = colour_guide()
    right = iter([True] * 4 + [False] + [True] * 100)
    guide.model.forward = lambda x: (
        torch.stack(  # noqa: E731
            [torch.tensor([10.0, 0, 0]) if next(right) else torch.tensor([0, 10.0, 0]) for _ in range(len(x))]
        )
        + 0 * x.mean()
    )
    res = TokenLearner(
        pipe, guide, labels, [0, 1, 2], learn_config(batch_size=5, stop_accuracy=0.8, stop_window=1), tmp_path / "a"
    ).run(classes=[labels.classes[0]])
    assert res[0]["steps"] == 1 and res[0]["stop_reason"] == "at least 80% correct"

    flat = colour_guide()
    flat.model.forward = lambda x: torch.tensor([[0.0, 5.0, 0]]).expand(len(x), 3) + 0 * x.mean()  # noqa: E731
    res = TokenLearner(
        tiny_pipeline(tokenizer_dir),
        flat,
        labels,
        [0, 1, 2],
        learn_config(patience=3, patience_min_accuracy=0.0, max_steps=50),
        tmp_path / "b",
    ).run(classes=[labels.classes[0]])
    assert res[0]["stop_reason"] == "no loss improvement for 3 steps" and res[0]["steps"] == 4

    learner = TokenLearner(
        tiny_pipeline(tokenizer_dir), colour_guide(), labels, [0, 1, 2], learn_config(noise="fixed"), tmp_path / "c"
    )
    state = learner.new_state(*learner.prepare([labels.classes[0]])[0])
    first = learner._noise(state)
    state.step = 7
    assert torch.equal(learner._noise(state), first)
    learner.cfg.noise = "fresh"
    assert not torch.equal(learner._noise(state), first)
    learner.injector.remove()
