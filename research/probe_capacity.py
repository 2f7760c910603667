"""Can one learned token steer the generator at all? (toy world)

The learner's stopping and noise make its progress hard to read. This probe removes both: for a few classes
it learns each token on ONE fixed batch of noise (the same `batch_size` seeds at every step, so the objective
is deterministic) for `--steps` steps with stopping off, exactly as TokenLearner otherwise does. If the
guide's target probability on that batch climbs towards 1, a token can move this generator's images where the
guide wants them, and what limits the learner is generalising across noise; if it stalls far below 1, one
token has too little say over the images (the generator's limit, not the optimiser's). It then generates
`--fresh-images` new-seed images per class with the plain prompt and with the learned token, and reports the
guide's top-1 on both.

    python research/probe_capacity.py --quick
    python research/probe_capacity.py --out results/capacity.json      # 4 classes: ≈ 10 min on 2 shared cores
"""

from __future__ import annotations

import argparse

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import numpy as np

from benchmarks.common import (
    add_common_arguments,
    markdown_table,
    print_environment,
    probe_setup,
    save_results,
    setup,
    top1,
    toy_config,
)

FRESH_SEED = 2_000_003


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--classes", default="pullover,coat,sandal,shirt", help="comma-separated class names")
    p.add_argument("--steps", type=int, help="learning steps on the fixed batch (default 40; --quick: 2)")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--fresh-images", type=int, help="new-seed images per class scored (default 40; --quick: 2)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = setup(args)
    print_environment(env)
    import tempfile

    from augment.generate.loop import generate_images
    from augment.learn.learner import TokenLearner
    from augment.models.prompting import format_prompt

    steps = args.steps or (2 if args.quick else 40)
    fresh = args.fresh_images or (2 if args.quick else 40)
    learn = {"max_steps": steps, "patience": 10**9, "stop_window": 10**9}
    if args.lr is not None:
        learn["lr"] = args.lr
    cfg = toy_config(args, learn=learn)
    labels, classes, pipe, guide, indices = probe_setup(cfg, args)

    class FixedNoiseLearner(TokenLearner):
        def _noise(self, s):  # every step draws the noise of step 0
            step, s.step = s.step, 0
            try:
                return super()._noise(s)
            finally:
                s.step = step

    with tempfile.TemporaryDirectory() as out:
        metas = FixedNoiseLearner(pipe, guide, labels, indices, cfg.learn, out).run(classes)
    # the learned vectors now sit in the text encoder's rows for the tokens; the plain prompt does not use them
    template = cfg.generate.prompts[0]
    seeds = list(range(FRESH_SEED, FRESH_SEED + fresh))
    rows, results = [], []
    for c in classes:
        history = metas[c.position]["history"]
        scores = {}
        for kind, token in (("plain", ""), ("token", labels.token(c))):
            prompt = format_prompt(template, token, c.name)
            images = np.concatenate(
                [
                    generate_images(pipe, [prompt] * len(chunk), chunk, cfg.generate)
                    for chunk in (
                        seeds[i : i + cfg.generate.batch_size] for i in range(0, len(seeds), cfg.generate.batch_size)
                    )
                ]
            )
            scores[kind] = top1(guide, images, [indices[c.position]] * len(images))
        last = history[-5:]
        result = {
            "class": c.name,
            "fixed_prob_start": history[0]["target_prob"],
            "fixed_prob_end": float(np.mean([h["target_prob"] for h in last])),
            "fixed_accuracy_end": float(np.mean([h["accuracy"] for h in last])) * 100,
            "token_norm": [history[0]["token_norm"], history[-1]["token_norm"]],
            "fresh_plain_top1": scores["plain"],
            "fresh_token_top1": scores["token"],
        }
        results.append(result)
        rows.append(
            [
                c.name,
                result["fixed_prob_start"],
                result["fixed_prob_end"],
                result["fixed_accuracy_end"],
                scores["plain"],
                scores["token"],
            ]
        )
    print(
        f"{steps} steps on one fixed batch of {cfg.learn.batch_size} seeds per class, lr {cfg.learn.lr}; "
        f"fresh seeds: {fresh} images per class"
    )
    print(
        markdown_table(
            [
                "class",
                "fixed batch: target prob, step 1",
                "last 5 steps",
                "top-1 % last 5",
                "fresh: plain top-1 %",
                "fresh: token top-1 %",
            ],
            rows,
        )
    )
    out = {"environment": env, "steps": steps, "fresh_images": fresh, "classes": results}
    save_results(args.out, out)
    return out


if __name__ == "__main__":
    main()
