"""Generation throughput: augment's shard-writing path vs a plain diffusers loop at batch 1 (issue 4).

Both paths make the same images (same prompts, same per-image seeds, same steps, CFG and size), in the
same process, one after the other:
- augment: `augment.generate.loop.generate_units` with the preset's batch size: one pipeline call per batch,
  PNG-encoded and written into WebDataset shards (the real `augment generate` path, model loading aside);
- plain: `StableDiffusionPipeline.from_pretrained(dir)` with default settings, one
  `pipe(prompt, num_inference_steps=..., guidance_scale=..., generator=...)` call per image, each image
  saved as a PNG file (what a hand-written script does).
Prints images/s of each and the ratio (issue 4's target: ≥ 3×), plus two sanity lines: the paths agree at
batch 1 for the same seed, and augment's batched images match the plain batch-1 ones.

    python benchmarks/bench_generate.py --quick
    python benchmarks/bench_generate.py --images 200 --out results/generate.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
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
    toy_config,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--images", type=int, help="images made by each path (default 200; --quick: 4)")
    p.add_argument("--batch-size", type=int, help="augment's batch size (default: the preset's; --quick: 4)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's; --quick: 4)")
    return p.parse_args(argv)


def plan(labels, cfg, n: int):
    """The first n images of the preset's work plan, as shard units (the last one cut short; batches never
    cross units)."""
    from augment.data.shards import ShardUnit, plan_units

    units, left = [], n
    for u in plan_units(range(len(labels)), cfg.images_per_class, cfg.shard_size, cfg.seed):
        if left <= 0:
            break
        units.append(ShardUnit(u.number, u.samples[:left]))
        left -= units[-1].count
    return units


def load_plain_pipeline(path: str, device: torch.device, dtype: torch.dtype):
    """The baseline's pipeline: diffusers defaults, as a user would load it (a dtype as the docs show; the
    toy weights are stored in fp16, which the CPU cannot run)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_image(pipe, prompt: str, seed: int, cfg, output_type: str = "pil"):
    """One image, the way the diffusers docs show it."""
    return pipe(
        prompt,
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        height=cfg.height,
        width=cfg.width,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type=output_type,
    ).images[0]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = setup(args)
    quick = {"images": 4, "batch_size": 4, "steps": 4} if args.quick else {"images": 200}
    n = args.images or quick["images"]
    gen = {
        k: v
        for k, v in {
            "batch_size": args.batch_size or quick.get("batch_size"),
            "num_inference_steps": args.steps or quick.get("steps"),
        }.items()
        if v
    }
    run_cfg = toy_config(args, generate=gen)
    cfg = run_cfg.generate
    from augment.data.shards import config_hash, image_seed, load_samples, sample_key
    from augment.generate.loop import generate_images, generate_units, image_prompt
    from augment.models.generator import load_generator, resolve_device

    device = resolve_device(args.device)
    labels = read_labels(args.labels)
    units = plan(labels, cfg, n)
    jobs = [sample for u in units for sample in u.samples]
    prompts = {(c, i): image_prompt(cfg, i, "", labels.classes[c].name) for c, i in jobs}
    seeds = {(c, i): image_seed(cfg.seed, c, i) for c, i in jobs}
    print_environment(env)
    print(
        f"{n} images of {run_cfg.generator}: {cfg.num_inference_steps} steps, CFG {cfg.guidance_scale}, "
        f"{cfg.image_format}; augment at batch {cfg.batch_size}, plain at batch 1"
    )

    ours = load_generator(run_cfg.generator, device, run_cfg.dtype)
    plain = load_plain_pipeline(run_cfg.generator, device, ours.unet.dtype)
    # sanity (and warm-up of both): the same seed at batch 1 gives the same image on both paths
    first = jobs[0]
    a = generate_images(ours, [prompts[first]], [seeds[first]], cfg)[0]
    b = plain_image(plain, prompts[first], seeds[first], cfg, output_type="np")
    same_seed_diff = float(np.abs(a - b).max())

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        t0 = time.perf_counter()
        chash = config_hash({"generator": run_cfg.generator, "generate": run_cfg.to_dict()["generate"]})
        generate_units(ours, labels, None, cfg, units, Path(tmp) / "augment", chash)
        t_ours = time.perf_counter() - t0

        plain_dir = Path(tmp) / "plain"
        plain_dir.mkdir()
        t0 = time.perf_counter()
        for c, i in jobs:
            plain_image(plain, prompts[(c, i)], seeds[(c, i)], cfg).save(plain_dir / f"{sample_key(c, i)}.png")
        t_plain = time.perf_counter() - t0

        # the batched shard images against the batch-1 files, in 8-bit levels
        from PIL import Image

        batch_diff = 0
        for s in load_samples(Path(tmp) / "augment"):
            ref = np.asarray(Image.open(plain_dir / f"{s['key']}.png").convert("RGB"), dtype=np.int16)
            batch_diff = max(batch_diff, int(np.abs(np.asarray(s["image"], dtype=np.int16) - ref).max()))

    rows = [
        ["augment (generate_units, shards)", cfg.batch_size, n, round(t_ours, 2), n / t_ours],
        ["plain diffusers loop", 1, n, round(t_plain, 2), n / t_plain],
    ]
    ratio = t_plain / t_ours
    print(markdown_table(["path", "batch", "images", "seconds", "images/s"], rows))
    print(f"\nspeed-up augment / plain: {ratio:.2f}× (target ≥ 3×)")
    print(f"sanity: same seed at batch 1, max abs pixel difference {same_seed_diff:.2e} (float, [0, 1])")
    print(f"sanity: augment batch {cfg.batch_size} vs plain batch 1, max abs difference {batch_diff}/255 over {n} PNGs")
    results = {
        "benchmark": "generate",
        "quick": args.quick,
        "environment": env,
        "images": n,
        "generator": run_cfg.generator,
        "steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "image_format": cfg.image_format,
        "augment": {"batch_size": cfg.batch_size, "seconds": t_ours, "images_per_s": n / t_ours},
        "plain": {"batch_size": 1, "seconds": t_plain, "images_per_s": n / t_plain},
        "speedup": ratio,
        "same_seed_max_abs_diff": same_seed_diff,
        "batched_vs_batch1_max_diff_255": batch_diff,
    }
    save_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
