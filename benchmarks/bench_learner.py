"""Token learning: classes learned together in one UNet batch vs one class at a time (issue 6).

Both runs use `augment.learn.learner.TokenLearner` with the preset's learn section; only `max_classes_per_step`
differs: N (all classes share each step) vs 1 (the paper's procedure: one class is learned to the end,
then the next). Each class's noise depends only on (seed, class, step) and its loss only on its own
samples, so both runs learn the same tokens up to floating-point differences; the script checks that.
Reports classes/hour of each and the ratio, and the held-out classifier's top-1 accuracy on fresh-seed
images generated with each set of tokens (and with the plain prompt, for reference).

    python benchmarks/bench_learner.py --quick
    python benchmarks/bench_learner.py --classes 10 --max-steps 20 --eval-images 20 --out results/learner.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import numpy as np
import torch

from benchmarks.common import (
    add_common_arguments,
    markdown_table,
    print_environment,
    read_labels,
    save_results,
    setup,
    top1,
    toy_config,
)

EVAL_SEED = 1_000_003  # fresh seeds: generation seeds differ from the learner's noise seeds anyway


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--classes", type=int, help="first N classes of the label set (default 10; --quick: 2)")
    p.add_argument("--max-steps", type=int, help="learning steps per class at most (default 20; --quick: 2)")
    p.add_argument(
        "--stopping",
        choices=["off", "on"],
        default="off",
        help="off: every class runs exactly --max-steps (equal work, the default); "
        "on: the preset's stopping rules (patience, stop window) apply as well",
    )
    p.add_argument("--eval-images", type=int, help="images per class scored per run (default 20; --quick: 1)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain-prompt accuracy row")
    return p.parse_args(argv)


def learn(run_cfg, labels, learn_cfg, out: Path, device) -> tuple[float, dict]:
    """Learn every class of `labels` into `out` on a freshly loaded pipeline; returns (seconds, metas)."""
    from augment.labels import match_to_guide
    from augment.learn.learner import TokenLearner
    from augment.models.generator import generator_source, load_generator, text_encoder_fingerprint
    from augment.models.guides import load_guide

    guide = load_guide(run_cfg.guide, device)
    pipe = load_generator(run_cfg.generator, device, run_cfg.dtype)
    info = {"generator": generator_source(pipe), "text_encoder": text_encoder_fingerprint(pipe)}
    learner = TokenLearner(pipe, guide, labels, match_to_guide(labels, guide.labels).indices, learn_cfg, out, info)
    t0 = time.perf_counter()
    metas = learner.run(list(labels.classes))
    return time.perf_counter() - t0, metas


def held_out_accuracy(run_cfg, labels, tokens_dir: Path | None, heldout, per_class: int, device) -> dict:
    """Top-1 % of the held-out classifier on `per_class` fresh-seed images per class, made with the tokens
    in `tokens_dir` (None: the plain prompt) through augment's generation path."""
    from augment.data.shards import image_seed
    from augment.data.tokens_io import load_tokens
    from augment.generate.loop import generate_images, image_prompt
    from augment.labels import match_to_guide
    from augment.models.generator import load_generator

    cfg = run_cfg.generate
    pipe = load_generator(run_cfg.generator, device, run_cfg.dtype)
    tokens = load_tokens(pipe, tokens_dir, labels) if tokens_dir else {}
    targets = match_to_guide(labels, heldout.labels).indices
    scores = {}
    for c in labels.classes:
        images = []
        for start in range(0, per_class, cfg.batch_size):
            idx = range(start, min(start + cfg.batch_size, per_class))
            prompts = [image_prompt(cfg, i, tokens.get(c.position, ""), c.name) for i in idx]
            images.append(generate_images(pipe, prompts, [image_seed(EVAL_SEED, c.position, i) for i in idx], cfg))
        scores[c.name] = top1(heldout, np.concatenate(images), [targets[c.position]] * per_class)
    return {"top1": sum(scores.values()) / len(scores), "per_class": scores}


def token_agreement(labels, dir_a: Path, dir_b: Path) -> dict:
    """How far apart two runs' tokens are: max abs difference and lowest cosine similarity."""
    from safetensors.torch import load_file

    from augment.data.tokens_io import WEIGHTS, token_dir

    diffs, cosines = [], []
    for c in labels.classes:
        a, b = (next(iter(load_file(str(token_dir(d, c) / WEIGHTS)).values())).flatten() for d in (dir_a, dir_b))
        diffs.append(float((a - b).abs().max()))
        cosines.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    return {"max_abs_diff": max(diffs), "min_cosine": min(cosines)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = setup(args)
    q = args.quick
    classes = args.classes or (2 if q else 10)
    max_steps = args.max_steps or (2 if q else 20)
    per_class = args.eval_images or (1 if q else 20)
    learn_over = {"max_steps": max_steps, **({"batch_size": 2, "num_inference_steps": 2} if q else {})}
    if args.stopping == "off":  # no rule but max steps can fire
        learn_over.update(patience=max_steps + 1, stop_window=max_steps + 1)
    run_cfg = toy_config(args, learn=learn_over, generate={"num_inference_steps": 2} if q else {})
    from augment.models.generator import resolve_device
    from augment.models.guides import load_guide

    device = resolve_device(args.device)
    labels = read_labels(args.labels, classes)
    lc = run_cfg.learn
    print_environment(env)
    print(
        f"{classes} classes, ≤ {lc.max_steps} steps each (stopping rules {args.stopping}), {lc.batch_size} images "
        f"per class per step, {lc.num_inference_steps} denoising steps; evaluation: {per_class} images per "
        f"class, {run_cfg.generate.num_inference_steps} steps, held-out {run_cfg.eval_classifier}"
    )

    heldout = load_guide(run_cfg.eval_classifier, device)
    runs = {"batched": classes, "one class at a time": 1}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp:
        # warm-up (untimed): one step of one class pays the process's one-off costs before either run
        warm = toy_config(args, learn={**learn_over, "max_steps": 1, "max_classes_per_step": 1})
        learn(warm, read_labels(args.labels, 1), warm.learn, Path(tmp) / "warm-up", device)
        dirs = {}
        for name, per_step in runs.items():
            dirs[name] = Path(tmp) / name.replace(" ", "-")
            cfg = toy_config(args, learn={**learn_over, "max_classes_per_step": per_step})
            seconds, metas = learn(cfg, labels, cfg.learn, dirs[name], device)
            steps = sum(m["steps"] for m in metas.values())
            print(f"  {name}: learned {len(metas)} classes in {seconds:.1f} s", flush=True)
            results[name] = {
                "classes_per_step": per_step,
                "seconds": seconds,
                "classes_per_hour": 3600 * classes / seconds,
                "class_steps": steps,
                "mean_steps": steps / classes,
                "stop_reasons": sorted({m["stop_reason"] for m in metas.values()}),
                "final_batch_accuracy": sum(m["final_accuracy"] for m in metas.values()) / classes,
            }
            results[name]["held_out"] = held_out_accuracy(run_cfg, labels, dirs[name], heldout, per_class, device)
        agreement = token_agreement(labels, *dirs.values())
    plain = None if args.no_plain else held_out_accuracy(run_cfg, labels, None, heldout, per_class, device)

    rows = [
        [
            name,
            r["classes_per_step"],
            round(r["seconds"], 1),
            round(r["mean_steps"], 1),
            r["classes_per_hour"],
            round(r["held_out"]["top1"], 1),
        ]
        for name, r in results.items()
    ]
    if plain is not None:
        rows.append(["plain prompt (no tokens)", "-", "-", "-", "-", round(plain["top1"], 1)])
    batched, single = results["batched"], results["one class at a time"]
    ratio = batched["classes_per_hour"] / single["classes_per_hour"]
    print(markdown_table(["run", "classes/step", "learn s", "steps/class", "classes/hour", "held-out top-1 %"], rows))
    print(
        f"\nspeed-up batched / one at a time: {ratio:.2f}×; held-out top-1 {batched['held_out']['top1']:.1f}% "
        f"vs {single['held_out']['top1']:.1f}%"
    )
    print(
        f"sanity: tokens of the two runs: max abs difference {agreement['max_abs_diff']:.2e}, "
        f"lowest cosine similarity {agreement['min_cosine']:.6f}"
    )
    out = {
        "benchmark": "learner",
        "quick": q,
        "environment": env,
        "classes": classes,
        "stopping": args.stopping,
        "learn": asdict(lc),
        "eval_images_per_class": per_class,
        "eval_steps": run_cfg.generate.num_inference_steps,
        "eval_classifier": run_cfg.eval_classifier,
        "runs": results,
        "plain": plain,
        "speedup": ratio,
        "token_agreement": agreement,
    }
    save_results(args.out, out)
    return out


if __name__ == "__main__":
    main()
