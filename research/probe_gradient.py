"""Is the last denoising step's gradient a good stand-in for the whole chain's? (gradient skipping, toy world)

The paper backpropagates only through the last denoising step. For a few classes and several noise draws
this computes, at the learner's initial token, the gradient of the learner's loss w.r.t. the token three
ways on the same noise: through the last step only (`grad_steps=1`, the paper), through the whole sampling
chain (`grad_steps=N`), and the `objective: x0` loss (each step's predicted clean image classified, each
step's gradient through its own UNet call). It prints each one's norm, its cosine with the whole chain's
gradient on the same draw (near 1: it stands in for the chain; near 0: it points elsewhere) and the mean
cosine between its gradients on different draws (how consistent a direction a 10-image batch gives).
Uses TokenLearner.losses, i.e. exactly the learner's code.

    python research/probe_gradient.py                                  # the toy preset's learner sampler
    python research/probe_gradient.py --steps 5 --steps-offset 150     # another learning sampler
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (
    add_common_arguments,
    markdown_table,
    print_environment,
    probe_setup,
    save_results,
    setup,
    toy_config,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--classes", default="t-shirt,pullover,coat,shirt", help="comma-separated class names")
    p.add_argument("--draws", type=int, default=6, help="noise draws per class (default 6; --quick: 2)")
    p.add_argument("--steps", type=int, help="learning denoising steps (default: the preset's)")
    p.add_argument("--steps-offset", type=int, help="learning DDIM steps_offset (default: the preset's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = setup(args)
    print_environment(env)
    from augment.learn.learner import TokenLearner

    learn = {}
    if args.steps:
        learn["num_inference_steps"] = args.steps
    if args.steps_offset is not None:
        learn["steps_offset"] = args.steps_offset
    cfg = toy_config(args, learn=learn)
    n_steps = cfg.learn.num_inference_steps
    modes = {
        "last step": {"objective": "final", "grad_steps": 1},
        "whole chain": {"objective": "final", "grad_steps": n_steps},
        "x0 every step": {"objective": "x0", "grad_steps": n_steps},
    }
    draws = 2 if args.quick else args.draws
    labels, classes, pipe, guide, indices = probe_setup(cfg, args)
    learner = TokenLearner(pipe, guide, labels, indices, cfg.learn, "/nonexistent")
    rows, results = [], []
    for entry in learner.prepare(classes):
        state = learner.new_state(*entry)
        learner.injector.vectors = {state.token_id: state.embedding}  # this class alone
        grads: dict[str, list[torch.Tensor]] = {}
        for name, mode in modes.items():
            learner.cfg = dataclasses.replace(cfg.learn, **mode)
            grads[name] = []
            for draw in range(draws):
                state.step = draw  # the learner's noise of step `draw`
                per_sample, _, _ = learner.losses([state])
                grads[name].append(torch.autograd.grad(per_sample.mean(), state.embedding)[0])
        for name, gs in grads.items():
            result = {
                "class": state.cls.name,
                "gradient": name,
                "norm": float(np.mean([float(g.norm()) for g in gs])),
                "cosine_with_chain": float(
                    np.mean([float(F.cosine_similarity(g, c, 0)) for g, c in zip(gs, grads["whole chain"])])
                ),
                "cosine_across_draws": float(
                    np.mean([float(F.cosine_similarity(a, b, 0)) for a, b in itertools.combinations(gs, 2)])
                ),
            }
            results.append(result)
            rows.append(
                [state.cls.name, name, result["norm"], result["cosine_with_chain"], result["cosine_across_draws"]]
            )
    learner.injector.remove()
    learner.scheduler.set_timesteps(n_steps)
    ts = learner.scheduler.timesteps.tolist()
    print(
        f"learning sampler: DDIM {n_steps} steps, t = {ts[0]} … {ts[-1]}; {draws} noise draws × "
        f"{cfg.learn.batch_size} images per class"
    )
    print(
        markdown_table(
            ["class", "gradient", "‖g‖ (mean)", "cos with whole chain (same draw)", "cos across draws"], rows
        )
    )
    out = {"environment": env, "timesteps": ts, "draws": draws, "classes": results}
    save_results(args.out, out)
    return out


if __name__ == "__main__":
    main()
