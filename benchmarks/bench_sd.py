"""Generation and learning speed on the full-size SD-1.4 architecture with random weights (issue 18).

Speed does not depend on weight values, so no hub is needed (`augment.testing`). Side by side in one process:
- plain: `StableDiffusionPipeline.from_pretrained(dir)` with its default scheduler (PNDM), one
  `pipe(prompt=[...], generator=[...], num_inference_steps=N, guidance_scale=7)` call per batch, each image
  saved as a JPEG file (what a hand-written script does);
- augment: `augment.generate.loop.generate_units` (the `augment generate` path: prompt cache, shards written on a
  background thread) at the same sampler, steps and batch;
- augment, fast sampler: the same with `--fast-scheduler` at `--fast-steps`;
- with `--guidance-cutoff C`: augment at the same sampler and steps, guidance in the first C of the steps only;
- with `--cache-interval N`: augment with feature reuse (augment.models.feature_cache: the whole UNet every N-th
  call, its shallow branch between), with the cutoff when one is given.
Then one token-learner step of the sd14-cub preset's learner (PNDM, grad_steps 2, checkpointing) for one
class at the same size (and one with the cutoff), and the UNet evaluations a learned class costs. Images/s and ratios; on a GPU the
absolute figures mean something, on the CPU only the ratios.

    python benchmarks/bench_sd.py --size 128 --steps 10 --images 8        # CPU, about 10 min
    python benchmarks/bench_sd.py --size 128 --steps 10 --images 8 --channels-last --compile
    python benchmarks/bench_sd.py --device cuda --dtype bf16 --size 512 --steps 50 --images 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import torch

from benchmarks.common import markdown_table, save_results

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--steps", type=int, default=10, help="sampling steps of plain and augment (default 10)")
    p.add_argument("--fast-scheduler", default="dpmsolver++", help="augment's fast sampler (default dpmsolver++)")
    p.add_argument("--fast-steps", type=int, default=None, help="its steps (default: 2/5 of --steps)")
    p.add_argument("--images", type=int, default=8, help="images per path (default 8)")
    p.add_argument("--channels-last", action="store_true", help="also: augment with a channels-last UNet and VAE")
    p.add_argument("--compile", action="store_true", help="also: augment with a torch.compile'd UNet (and its warm-up)")
    p.add_argument("--guidance-cutoff", type=float, help="also: augment and the learner with this guidance_cutoff")
    p.add_argument("--cache-interval", type=int, help="also: augment and the learner with this cache_interval")
    p.add_argument("--rounds", type=int, default=1, help="run the paths in turn this many times, keep each best")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, help="also save the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    from augment.config import GenerateConfig, load_config
    from augment.data.shards import image_seed, plan_units
    from augment.generate.loop import generate_units
    from augment.labels import read_label_set
    from augment.models.generator import load_generator, resolve_device, resolve_dtype
    from augment.models.sampling import make_scheduler
    from augment.testing import save_random_pipeline

    dev = resolve_device(args.device)
    dt = resolve_dtype(args.dtype, dev)
    fast_steps = args.fast_steps or max(1, round(args.steps * 2 / 5))
    labels = read_label_set(ROOT / "manifests" / "cub200.txt")
    per_class = args.images // 2
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_random_pipeline("sd14", root / "sd14")
        plain = StableDiffusionPipeline.from_pretrained(
            str(root / "sd14"), safety_checker=None, requires_safety_checker=False
        ).to(dev, dt)
        plain.set_progress_bar_config(disable=True)
        prompts = [f"A photo of {c.name}" for c in labels.classes[:2] for _ in range(per_class)]
        seeds = [image_seed(0, c.position, i) for c in labels.classes[:2] for i in range(per_class)]

        def run_plain() -> float:
            t0 = time.time()
            for lo in range(0, len(prompts), args.batch_size):
                gens = [torch.Generator().manual_seed(s) for s in seeds[lo : lo + args.batch_size]]
                with torch.no_grad():
                    images = plain(
                        prompt=prompts[lo : lo + args.batch_size],
                        generator=gens,
                        num_inference_steps=args.steps,
                        guidance_scale=7.0,
                        height=args.size,
                        width=args.size,
                    ).images
                for k, im in enumerate(images):
                    im.save(root / f"plain_{lo + k}.jpg", quality=95)
            return time.time() - t0

        pipe = load_generator(str(root / "sd14"), dev, dt)
        own = pipe.scheduler  # SD-1.4's PNDM config
        units = [u for u in plan_units(range(2), per_class, per_class)]

        def run_augment(scheduler: str, steps: int, name: str, pipe=pipe, cutoff: float = 1.0, cache: int = 1) -> float:
            cfg = GenerateConfig(
                images_per_class=per_class,
                shard_size=per_class,
                batch_size=args.batch_size,
                num_inference_steps=steps,
                guidance_scale=7.0,
                guidance_cutoff=cutoff,
                cache_interval=cache,
                height=args.size,
                width=args.size,
                prompts=["A photo of {token} {name}"],
                scheduler=scheduler,
            )
            pipe.scheduler = make_scheduler(own, scheduler)
            t0 = time.time()
            generate_units(pipe, labels, None, cfg, units, root / name, "bench")
            return time.time() - t0

        with torch.no_grad():  # one warm-up call each (allocations, kernel choice)
            plain(prompt=prompts[:1], num_inference_steps=2, height=args.size, width=args.size)
            pipe(prompt=prompts[:1], num_inference_steps=2, height=args.size, width=args.size)
        paths = {  # name: (run(round), steps); every round runs each path once, in turn; the best round counts
            "plain (PNDM)": (lambda r: run_plain(), args.steps),
            "augment (PNDM)": (lambda r: run_augment("pipeline", args.steps, f"same{r}"), args.steps),
            f"augment ({args.fast_scheduler})": (
                lambda r: run_augment(args.fast_scheduler, fast_steps, f"fast{r}"),
                fast_steps,
            ),
        }
        if args.guidance_cutoff:
            paths[f"augment (PNDM, guidance cutoff {args.guidance_cutoff})"] = (
                lambda r: run_augment("pipeline", args.steps, f"cutoff{r}", cutoff=args.guidance_cutoff),
                args.steps,
            )
        if args.cache_interval:
            cut = args.guidance_cutoff or 1.0
            paths[f"augment (PNDM, guidance cutoff {cut}, cache interval {args.cache_interval})"] = (
                lambda r: run_augment("pipeline", args.steps, f"cache{r}", cutoff=cut, cache=args.cache_interval),
                args.steps,
            )
        rounds = {name: [] for name in paths}
        for r in range(args.rounds):
            for name, (run, _) in paths.items():
                rounds[name].append(run(r))
        results["rounds"] = rounds
        timings = {name: (min(rounds[name]), steps) for name, (_, steps) in paths.items()}
        from augment.models.generator import speed_up

        variants = [("channels-last", {"channels_last": True})] if args.channels_last else []
        variants += [("compiled UNet", {"compile_unet": True})] if args.compile else []
        for label, opts in variants:  # a fresh pipeline each: both settings change it in place
            other = load_generator(str(root / "sd14"), dev, dt)
            speed_up(other, **opts)
            t0 = time.time()
            with torch.no_grad():  # warm-up at the measured batch shape (compilation happens here)
                other(prompt=prompts[: args.batch_size], num_inference_steps=2, height=args.size, width=args.size)
            results[f"{label} warm-up seconds"] = time.time() - t0
            print(f"{label}: warm-up call {time.time() - t0:.1f} s", flush=True)
            timings[f"augment (PNDM, {label})"] = (run_augment("pipeline", args.steps, label, other), args.steps)
        base = args.images / timings["plain (PNDM)"][0]
        for name, (secs, steps) in timings.items():
            ips = args.images / secs
            rows.append([name, steps, f"{secs:.1f}", f"{ips:.3f}", f"{ips / base:.2f}x"])
            results[name] = {"steps": steps, "seconds": secs, "images_per_s": ips, "ratio": ips / base}

        # one learner step of the sd14-cub preset's learner, one class
        from augment.learn.learner import TokenLearner
        from augment.models.guides import load_guide
        from augment.testing import save_vit_mae_cub

        guide = load_guide(f"hf:{save_vit_mae_cub(root / 'vit-mae-cub', labels.names(), hidden=768, layers=12)}", dev)
        lcfg = load_config("sd14-cub").learn
        lcfg.height = lcfg.width = args.size
        lcfg.num_inference_steps = args.steps
        lcfg.max_classes_per_step = 1
        pipe.scheduler = own
        learner_steps = {}
        settings = [(1.0, 1)] + ([(args.guidance_cutoff, 1)] if args.guidance_cutoff else [])
        settings += [(args.guidance_cutoff or 1.0, args.cache_interval)] if args.cache_interval else []
        for cutoff, cache in settings:
            lcfg.guidance_cutoff, lcfg.cache_interval = cutoff, cache
            learner = TokenLearner(pipe, guide, labels, list(range(len(labels))), lcfg, root / f"learn{cutoff}-{cache}")
            states = [learner.new_state(*e) for e in learner.prepare([labels.classes[0]])]
            t0 = time.time()
            learner.step(states)
            learner_steps[cutoff if cache == 1 else "cache"] = time.time() - t0
            learner.injector.remove()
    step_s = learner_steps[1.0]
    calls = args.steps + 1  # PNDM: N steps, N + 1 UNet calls
    per_step_evals = 2 * lcfg.batch_size * calls  # forward, both CFG halves
    print(
        f"full-size SD-1.4, random weights, {args.size} px, {dev} {str(dt).removeprefix('torch.')}, "
        f"{args.images} images, batch {args.batch_size}"
    )
    print(markdown_table(["path", "steps", "seconds", "images/s", "vs plain"], rows))
    print(
        f"learner step (sd14-cub learner, 1 class × {lcfg.batch_size} images, {args.steps} PNDM steps, "
        f"{lcfg.grad_steps} calls with gradient): {step_s:.1f} s; {per_step_evals} UNet forward evaluations "
        f"+ {lcfg.grad_steps * lcfg.batch_size} with backward per class step (the paper's procedure, 5 images "
        f"× 50 steps × 2 for CFG: 500 per step)"
    )
    results["learner_step_seconds"] = step_s
    if args.guidance_cutoff:
        from augment.models.sampling import guided_calls

        evals = lcfg.batch_size * (calls + guided_calls(calls, args.guidance_cutoff))
        cut_s = learner_steps[args.guidance_cutoff]
        print(
            f"learner step with guidance cutoff {args.guidance_cutoff}: {cut_s:.1f} s ({step_s / cut_s:.2f}x); "
            f"{evals} UNet forward evaluations per class step"
        )
        results["learner_step_seconds_cutoff"] = cut_s
    if args.cache_interval:
        cache_s = learner_steps["cache"]
        print(f"learner step with cutoff {args.guidance_cutoff or 1.0} and cache interval {args.cache_interval}: "
              f"{cache_s:.1f} s ({step_s / cache_s:.2f}x the step without either)")  # fmt: skip
        results["learner_step_seconds_cache"] = cache_s
    save_results(
        args.out,
        {
            "size": args.size,
            "device": str(dev),
            "dtype": str(dt),
            "images": args.images,
            "batch_size": args.batch_size,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
