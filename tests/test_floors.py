"""What the dependency floors promise. CI runs this file, with the toy and full-size smoke tests it names in
.ci/floors, a second time in an environment holding the floors of diffusers, transformers and timm."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from augment.config import LearnConfig
from augment.labels import read_label_set
from augment.learn.learner import TokenLearner
from tests.helpers import REPO
from tests.tiny import COLOURS, colour_guide, tiny_pipeline

FLOORED = ("torch", "torchvision", "diffusers", "transformers", "timm")


def test_installed_versions_meet_the_floors():
    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    floors = {r.name: r for r in deps if r.name in FLOORED}
    assert set(floors) == set(FLOORED) and all(r.specifier for r in floors.values())
    for name, req in floors.items():
        assert req.specifier.contains(version(name).split("+")[0], prereleases=True), (name, version(name))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_with_the_models_in_eval_mode(tokenizer_dir, tmp_path, checkpointing):
    """The learner keeps the UNet and VAE in eval mode; checkpointing must still recompute their blocks in
    backward (diffusers before 0.32 checkpointed only in training mode: memory then silently ran out).
    Counted: forward calls of one checkpointed UNet block and one VAE decoder block during a learner step."""
    path = tmp_path / "colours.txt"
    path.write_text("\n".join(COLOURS) + "\n")
    labels = read_label_set(path)
    pipe = tiny_pipeline(tokenizer_dir)
    cfg = LearnConfig(init_word="a", batch_size=2, max_classes_per_step=3, num_inference_steps=3, grad_steps=2,
                      guidance_scale=3.0, prompts=["a photo of {token} {name}"], decode_batch=2,
                      gradient_checkpointing=checkpointing)  # fmt: skip
    learner = TokenLearner(pipe, colour_guide(), labels, [0, 1, 2], cfg, tmp_path)
    states = [learner.new_state(*e) for e in learner.prepare(list(labels.classes))]
    assert not pipe.unet.training and not pipe.vae.training
    calls = {"unet": 0, "vae": 0}
    unet_block = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0]  # reads the prompt: on the gradient path
    vae_block = pipe.vae.decoder.up_blocks[0]
    unet_block.register_forward_pre_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))
    vae_block.register_forward_pre_hook(lambda *a: calls.__setitem__("vae", calls["vae"] + 1))
    learner.losses(states, backward=True)
    assert all(s.embedding.grad is not None and s.embedding.grad.norm() > 0 for s in states)
    # Pre-hooks: torch stops a recomputation early, once it has what backward needs, so a forward hook may not
    # run again. Forward: 3 guided sampler calls, unconditional and conditional halves apart: 6 evaluations of
    # the block; the decode once per chunk (3 chunks of 2 images). Backward recomputes what the gradient
    # passes: the block in the conditional halves of the 2 calls with gradient, and the 3 decode chunks.
    forward_unet, forward_vae = 6, 3
    if checkpointing:
        assert calls == {"unet": forward_unet + 2, "vae": forward_vae + 3}
    else:
        assert calls == {"unet": forward_unet, "vae": forward_vae}
