"""DATE refinement on the toy world: plain prompts vs plain prompts + DATE, same seeds (issue 6).

Both paths make the same images per class (same prompts, per-image seeds, steps, CFG), in one process, one
after the other, through `augment.generate.loop.generate_images`; the DATE path updates the prompt embeddings
towards the guide's class while sampling. Prints seconds of each path, the time factor (DATE / plain), and
the top-1 of the preset's held-out classifier (the one that grades; never used for refining) side by side,
with the guide's own top-1 as a reference (DATE optimises that one, so it is not a fair grade).

    python benchmarks/bench_date.py --quick
    python benchmarks/bench_date.py --images-per-class 20 --step-size 0.5 --out results/date.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import numpy as np

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--images-per-class", type=int, help="images per class and path (default 20; --quick: 2)")
    p.add_argument("--classes", type=int, help="first N classes of the label set (default: all)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's; --quick: 4)")
    p.add_argument("--batch-size", type=int, help="images per sampler call (default: the preset's)")
    p.add_argument("--step-size", type=float, help="DATE step size (default: DateOptions' 0.1)")
    p.add_argument("--every", type=int, help="DATE: refine every k-th sampling step (default 1)")
    p.add_argument("--updates", type=int, help="DATE: updates per refined step (default 1)")
    return p.parse_args(argv)


def make_images(pipe, labels, cfg, n: int, guide, guide_indices: list[int]) -> tuple[np.ndarray, list[int], float]:
    """n images of every class (plain prompts, the preset's seeds), the class positions, and the seconds."""
    from augment.data.shards import image_seed
    from augment.generate.loop import generate_images, image_prompt

    images, targets = [], []
    t0 = time.perf_counter()
    for c in labels.classes:
        for start in range(0, n, cfg.batch_size):
            idx = list(range(start, min(start + cfg.batch_size, n)))
            prompts = [image_prompt(cfg, i, "", c.name) for i in idx]
            seeds = [image_seed(cfg.seed, c.position, i) for i in idx]
            images.append(generate_images(pipe, prompts, seeds, cfg, guide, [guide_indices[c.position]] * len(idx)))
            targets += [c.position] * len(idx)
    return np.concatenate(images), targets, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = setup(args)
    n = args.images_per_class or (2 if args.quick else 20)
    gen = {
        k: v
        for k, v in {
            "num_inference_steps": args.steps or (4 if args.quick else None),
            "batch_size": args.batch_size,
        }.items()
        if v
    }
    options = {
        k: v
        for k, v in {"step_size": args.step_size, "every": args.every, "updates": args.updates}.items()
        if v is not None
    }
    run_cfg = toy_config(args, generate=gen)
    plain_cfg = replace(run_cfg.generate, refine=None, refine_options={})
    date_cfg = replace(run_cfg.generate, refine="date", refine_options=options)

    from augment.labels import match_to_guide
    from augment.models.generator import load_generator, resolve_device
    from augment.models.guides import load_guide

    opts = date_cfg.date
    device = resolve_device(args.device)
    labels = read_labels(args.labels, args.classes)
    pipe = load_generator(run_cfg.generator, device, run_cfg.dtype)
    guide = load_guide(run_cfg.guide, device)
    heldout = load_guide(run_cfg.eval_classifier, device)
    guide_idx, heldout_idx = (
        match_to_guide(labels, guide.labels).indices,
        match_to_guide(labels, heldout.labels).indices,
    )
    print_environment(env)
    steps = plain_cfg.num_inference_steps
    print(
        f"{n} images × {len(labels)} classes per path, {run_cfg.generator}: {steps} steps, "
        f"CFG {plain_cfg.guidance_scale}, batch {plain_cfg.batch_size}; DATE {asdict(opts)} "
        f"({len(opts.refined_steps(steps))} of {steps} steps refined)"
    )

    make_images(pipe, labels, replace(plain_cfg, num_inference_steps=1), 1, guide, guide_idx)  # warm-up
    rows, results = [], {}
    for name, cfg in (("plain", plain_cfg), ("plain + DATE", date_cfg)):
        images, targets, seconds = make_images(pipe, labels, cfg, n, guide, guide_idx)
        held = top1(heldout, images, [heldout_idx[t] for t in targets])
        own = top1(guide, images, [guide_idx[t] for t in targets])
        results[name] = {"seconds": seconds, "images": len(images), "heldout_top1": held, "guide_top1": own}
        rows.append([name, len(images), round(seconds, 2), held, own])
    factor = results["plain + DATE"]["seconds"] / results["plain"]["seconds"]
    print(markdown_table(["path", "images", "seconds", "held-out top-1 %", "guide top-1 % (optimised)"], rows))
    print(
        f"\ntime factor DATE / plain: {factor:.2f}×; held-out top-1 change: "
        f"{results['plain + DATE']['heldout_top1'] - results['plain']['heldout_top1']:+.1f} points"
    )
    out = {
        "benchmark": "date",
        "quick": args.quick,
        "environment": env,
        "generator": run_cfg.generator,
        "guide": run_cfg.guide,
        "eval_classifier": run_cfg.eval_classifier,
        "images_per_class": n,
        "classes": len(labels),
        "steps": steps,
        "guidance_scale": plain_cfg.guidance_scale,
        "date_options": asdict(opts),
        "results": results,
        "time_factor": factor,
    }
    save_results(args.out, out)
    return out


if __name__ == "__main__":
    main()
