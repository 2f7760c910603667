"""One GPU check: the figures this project cannot measure without a GPU, in one process, on the full-size SD-1.4
architecture with random weights (`augment.testing`; speed and memory do not depend on weight values, no hub).

1. Generation images/s. augment: `augment.generate.loop.generate_units` (the `augment generate` path: prompt
   cache, shards written on a background thread, `speed_up`'s defaults: channels-last and TF32 on CUDA) with the
   sd14-cub preset's generation settings (PNDM, guidance 7, guidance_cutoff 0.5, batch 16); plain: a diffusers
   `StableDiffusionPipeline` called per batch with the same prompts, seeds and steps (class by class, where
   augment's batches mix the classes as its shards do), guidance 7 at every step, JPEG files. Then augment at
   guidance_cutoff 1 (the cutoff's gain apart) and, last, augment with a `torch.compile`d UNet on a fresh
   pipeline. Each path gets one warm-up batch of 2 steps at the measured batch shapes first (its seconds are
   reported: for the compiled UNet, the compilation); model loading is not timed.
2. DATE (`--refine date` with the preset's refine_options, step size 1): seconds and peak memory of one
   generation batch of 2 images, on the generation pipeline.
3. Learner: one step of the sd14-cub preset's learner (checkpointing, decode_batch 1, grad_steps 2, PNDM,
   guidance_cutoff 0.5) at 1, 4 and 8 classes per step, with a ViT-B guide in vesteinn/vit-mae-cub's layout,
   on a fresh pipeline without `speed_up` (as `augment learn` runs) after an untimed 2-step warm-up: seconds
   per class-step (step seconds / k) and `torch.cuda.max_memory_allocated()` next to `augment.learn.memory`'s
   estimate (`step_bytes` plus the parameter bytes of UNet, VAE, text encoder and guide).
4. SDXL base (the sdxl-base preset, its architecture built from the hub's config files) at --sdxl-size (default
   1024): generation images/s (augment's path, 2 classes, the preset's settings but --steps) and one learner step
   at one class per step, peak next to the estimate with SDXL's footprint. `--skip-sdxl` leaves it out (the quick
   smoke test does unless `--sdxl`).
Peaks are absolute (everything allocated, the loaded models included); one pipeline is loaded at a time. On the
CPU memory is null. Markdown tables on stdout; everything and the environment in one JSON file (`--out`),
rewritten after each part so that a run cut short keeps what it measured. `--quick`: 64 px, 2 steps, 2 images,
classes 1,2, fp32, no compile row and no warm-ups (each overridable). About 5 minutes on one H200:

    python benchmarks/gpu_check.py --out runs/gpu_check.json
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/gc.json   # CPU smoke test; numbers mean nothing
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import torch

from benchmarks.common import environment, markdown_table, print_environment

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


def gib(b: float | None) -> float | str:
    """Bytes as GiB for the tables; "-" where not measured (CPU)."""
    return "-" if b is None else round(b / GIB, 3)


def measure(dev: torch.device, fn) -> dict:
    """Run fn(); seconds, and on CUDA the memory allocated before it and its peak (absolute, bytes)."""
    base = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    t0 = time.time()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    secs = time.time() - t0
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return {"seconds": secs, "allocated_before_bytes": base, "peak_bytes": peak}


def free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def sdxl_part(args, dev, dt, root: Path, labels, guide, indices, per_class: int, warm: bool) -> dict:
    """Part 4: the sdxl-base preset's generation and one learner step (one class) on SDXL base's architecture."""
    from augment.config import load_config
    from augment.data.shards import plan_units
    from augment.generate.loop import generate_images, generate_units, image_prompt
    from augment.learn.learner import TokenLearner
    from augment.learn.memory import footprint, step_bytes
    from augment.models.generator import load_generator
    from augment.models.prompting import text_pairs
    from augment.models.sampling import image_calls
    from augment.testing import save_random_pipeline

    preset, size = load_config("sdxl-base"), args.sdxl_size
    g = replace(preset.generate, images_per_class=per_class, shard_size=per_class, num_inference_steps=args.steps,
                height=size, width=size)  # fmt: skip
    lc = replace(preset.learn, height=size, width=size, num_inference_steps=args.steps, max_classes_per_step=1)
    t0 = time.time()
    sdxl = save_random_pipeline("sdxl-base", root / "sdxl", dtype=dt if dt != torch.float32 else torch.bfloat16)
    print(f"random SDXL base built in {time.time() - t0:.0f} s", flush=True)
    pipe = load_generator(str(sdxl), dev, dt)
    calls, guided = image_calls(pipe.scheduler, g)
    if warm:
        short = replace(g, num_inference_steps=2)
        generate_images(pipe, [image_prompt(g, 0, "", labels.classes[0].name)] * g.batch_size, [0] * g.batch_size,
                        short)  # fmt: skip
    units = plan_units(range(2), per_class, per_class, g.seed)
    m = measure(dev, lambda: generate_units(pipe, labels, None, g, units, root / "sdxl-gen", "gpu-check"))
    out = {"generation": {**m, "images_per_s": 2 * per_class / m["seconds"], "unet_evals_per_image": calls + guided}}
    print(f"SDXL generation: {out['generation']['seconds']:.1f} s", flush=True)
    models = (pipe.unet, pipe.vae, *(te for _, te in text_pairs(pipe)), guide)
    weights = sum(q.numel() * q.element_size() for m in models for q in m.parameters())
    learner = TokenLearner(pipe, guide, labels, indices, lc, root / "sdxl-learn")
    states = [learner.new_state(*e) for e in learner.prepare([labels.classes[-1]])]
    if warm:
        learner.losses(states, grad_steps=1)  # untimed: kernels and allocator, no optimiser step
    m = measure(dev, lambda: learner.step(states))
    learner.injector.remove()
    shape = (lc.batch_size, lc.grad_steps, min(lc.decode_batch, lc.batch_size), size, size, pipe.unet.dtype)
    est = weights + step_bytes(1, *shape, lc.gradient_checkpointing, footprint(pipe))
    out["learner"] = {**m, "estimate_bytes": est, "weights_bytes": weights,
                      "peak_over_estimate": None if m["peak_bytes"] is None else m["peak_bytes"] / est}  # fmt: skip
    print(f"SDXL learner step, 1 class: {m['seconds']:.1f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", help="fp32, bf16, fp16 (default bf16)")
    p.add_argument("--size", type=int, help="image size in px (default 512)")
    p.add_argument("--steps", type=int, help="sampling steps, generation and learner (default 50)")
    p.add_argument("--images", type=int, help="images per generation path, 2 classes (default 64)")
    p.add_argument("--classes", help="learner classes per step, comma-separated (default 1,4,8)")
    p.add_argument("--cache-interval", type=int, default=3, help="the feature-reuse rows' interval (default 3)")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile row")
    p.add_argument("--skip-sdxl", action="store_true", help="leave out the SDXL part")
    p.add_argument("--sdxl", action="store_true", help="with --quick: run the SDXL part too")
    p.add_argument("--sdxl-size", type=int, help="SDXL image size in px (default 1024; --quick: 64)")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: 64 px, 2 steps, 2 images, 1,2 classes, fp32")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file (default gpu_check.json)")
    args = p.parse_args(argv)
    quick = dict(size=64, steps=2, images=2, classes="1,2", dtype="fp32", skip_compile=True, sdxl_size=64)
    full = dict(size=512, steps=50, images=64, classes="1,4,8", dtype="bf16", skip_compile=False, sdxl_size=1024)
    args.skip_sdxl = args.skip_sdxl or (args.quick and not args.sdxl)
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value if getattr(args, key) in (None, False) else getattr(args, key))
    warm = not args.quick  # warm-up calls (the quick smoke test's numbers mean nothing anyway)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    from augment.config import load_config
    from augment.data.shards import image_seed, plan_units
    from augment.errors import UserError
    from augment.generate.loop import generate_images, generate_units, image_prompt
    from augment.labels import match_to_guide, read_label_set
    from augment.learn.learner import TokenLearner
    from augment.learn.memory import step_bytes
    from augment.models.feature_cache import shallow_rows
    from augment.models.generator import load_generator, resolve_device, resolve_dtype, speed_up
    from augment.models.guides import load_guide
    from augment.models.sampling import guided_calls, learner_calls, make_scheduler
    from augment.testing import save_random_pipeline, save_vit_mae_cub

    try:
        dev = resolve_device(args.device)
        dt = resolve_dtype(args.dtype, dev)
        env = environment(args.device, args.dtype)
    except UserError as e:
        print(f"gpu_check.py: {e}", file=sys.stderr)
        return 2
    print_environment(env)
    ks = [int(k) for k in args.classes.split(",")]
    if min(ks) < 1 or sum(ks) > 199:  # each size learns its own classes, after one warm-up class
        p.error("--classes: sizes ≥ 1, at most 199 classes in all")
    if args.cache_interval < 1:
        p.error("--cache-interval must be ≥ 1")
    preset = load_config("sd14-cub")
    labels = read_label_set(ROOT / "manifests" / "cub200.txt")
    per_class = max(1, args.images // 2)
    g = replace(preset.generate, images_per_class=per_class, shard_size=per_class, num_inference_steps=args.steps)
    g = replace(g, height=args.size, width=args.size)
    lc = replace(preset.learn, height=args.size, width=args.size, num_inference_steps=args.steps)
    prompts = [image_prompt(g, i, "", c.name) for c in labels.classes[:2] for i in range(per_class)]
    seeds = [image_seed(g.seed, c.position, i) for c in labels.classes[:2] for i in range(per_class)]
    owners = [c.position for c in labels.classes[:2] for _ in range(per_class)]
    b = min(g.batch_size, per_class)
    res = {"settings": {**vars(args), "out": str(args.out), "per_class": per_class, "batch": b}, "environment": env}
    res.update(generation={}, date=None, learner=[], compile=None, speed_up=None, sdxl=None)
    gen = res["generation"]

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")

    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sd = save_random_pipeline("sd14", root / "sd14")
        guide_dir = save_vit_mae_cub(root / "vit-mae-cub", labels.names(), hidden=768, layers=12)
        print(f"random SD-1.4 and ViT-B guide built in {time.time() - t_all:.0f} s", flush=True)
        # 1. plain diffusers loop, full guidance
        plain = StableDiffusionPipeline.from_pretrained(str(sd), safety_checker=None, requires_safety_checker=False)
        plain = plain.to(dev, dt)
        plain.set_progress_bar_config(disable=True)
        sched = type(plain.scheduler).from_config(plain.scheduler.config)
        sched.set_timesteps(args.steps)
        calls = len(sched.timesteps)  # UNet calls per image (PNDM: steps + 1)
        size = {"height": args.size, "width": args.size, "guidance_scale": g.guidance_scale}

        def run_plain(p, n: int, steps: int, save_to: Path | None = None) -> None:
            for lo in range(0, n, b):
                gens = [torch.Generator().manual_seed(s) for s in seeds[lo : min(lo + b, n)]]
                with torch.no_grad():
                    out = p(prompt=prompts[lo : min(lo + b, n)], generator=gens, num_inference_steps=steps, **size)
                for k, im in enumerate(out.images if save_to else []):
                    im.save(save_to / f"plain_{lo + k}.jpg", quality=95)

        if warm:  # at the measured batch shape
            run_plain(plain, b, 2)
        m = measure(dev, lambda: run_plain(plain, len(prompts), args.steps, root))
        gen["plain (diffusers, full guidance)"] = {**m, "unet_evals_per_image": 2 * calls}
        plain = None
        free(dev)

        # 1b. augment's path at the preset's cutoff and at 1.0; 2. DATE on the same pipeline
        pipe = load_generator(str(sd), dev, dt)
        pipe.scheduler = make_scheduler(pipe.scheduler, g.scheduler)
        res["speed_up"] = speed_up(pipe, g.channels_last, False)
        units = plan_units(range(2), per_class, per_class, g.seed)  # mixed shards, as augment generate

        def run_augment(p, cutoff: float, name: str, cache: int = 1) -> dict:
            cfg = replace(g, guidance_cutoff=cutoff, cache_interval=cache)
            short = replace(cfg, num_inference_steps=2)
            w = measure(dev, lambda: warm and generate_images(p, prompts[:b], seeds[:b], short))
            m = measure(dev, lambda: generate_units(p, labels, None, cfg, units, root / name, "gpu-check"))
            guided = guided_calls(calls, cutoff)
            shallow = shallow_rows(calls, cache, lambda i: 2 if i < guided else 1)
            return {**m, "unet_evals_per_image": calls + guided, "shallow_per_image": shallow,
                    "warmup_seconds": w["seconds"]}  # fmt: skip

        gen[f"augment (cutoff {g.guidance_cutoff}: the preset)"] = run_augment(pipe, g.guidance_cutoff, "aug")
        gen["augment (cutoff 1.0: guidance at every step)"] = run_augment(pipe, 1.0, "aug1")
        gen[f"augment (cutoff {g.guidance_cutoff}, cache interval {args.cache_interval})"] = run_augment(
            pipe, g.guidance_cutoff, "augc", args.cache_interval
        )
        save()
        guide = load_guide(f"hf:{guide_dir}", dev)
        indices = match_to_guide(labels, guide.labels).indices
        dopts = replace(g.refine_options, step_size=1.0)
        dcfg, targets = replace(g, refine="date", refine_options=dopts), [indices[c] for c in owners[:2]]
        if warm:
            generate_images(pipe, prompts[:2], seeds[:2], replace(dcfg, num_inference_steps=2), guide, targets)
        m = measure(dev, lambda: generate_images(pipe, prompts[:2], seeds[:2], dcfg, guide, targets))
        res["date"] = {**m, "images": 2, "options": asdict(dopts)}
        del pipe
        free(dev)
        save()

        # 3. learner, fresh pipeline (augment learn does not call speed_up)
        pipe = load_generator(str(sd), dev, dt)
        models = (pipe.unet, pipe.vae, pipe.text_encoder, guide)
        weights = sum(q.numel() * q.element_size() for m in models for q in m.parameters())
        res["weights_bytes"] = weights
        pos = iter(labels.classes)

        def learner_step(k: int, cfg) -> dict:
            learner = TokenLearner(pipe, guide, labels, indices, replace(cfg, max_classes_per_step=k), root / "learn")
            states = [learner.new_state(*e) for e in learner.prepare([next(pos) for _ in range(k)])]
            m = measure(dev, lambda: learner.step(states))
            learner.injector.remove()
            return m

        if warm:
            learner_step(1, replace(lc, num_inference_steps=min(2, args.steps)))
        shape = (lc.batch_size, lc.grad_steps, min(lc.decode_batch, lc.batch_size), args.size, args.size)
        for k in ks:
            m = learner_step(k, lc)
            if args.cache_interval > 1 and k == ks[0]:  # the learner's no-grad chain with feature reuse
                res["learner_cached"] = {**learner_step(k, replace(lc, cache_interval=args.cache_interval)),
                                         "classes": k, "cache_interval": args.cache_interval}  # fmt: skip
            est = weights + step_bytes(k, *shape, pipe.unet.dtype, lc.gradient_checkpointing)
            ratio = None if m["peak_bytes"] is None else m["peak_bytes"] / est
            row = {"classes": k, **m, "seconds_per_class_step": m["seconds"] / k, "estimate_bytes": est}
            res["learner"].append({**row, "peak_over_estimate": ratio})
            print(f"learner, {k} class(es) per step: {m['seconds']:.1f} s", flush=True)
            save()
        del pipe
        free(dev)

        # 1c. compiled UNet on a fresh pipeline; the warm-up batch (2 steps: 3 calls, 2 guided at 0.5) compiles
        # both of the UNet's batch shapes (2b rows guided, b after the cutoff)
        if not args.skip_compile:
            pipe = load_generator(str(sd), dev, dt)
            pipe.scheduler = make_scheduler(pipe.scheduler, g.scheduler)
            res["compile"] = speed_up(pipe, g.channels_last, compile_unet=True)
            row = run_augment(pipe, g.guidance_cutoff, "compiled")
            gen[f"augment (cutoff {g.guidance_cutoff}, compiled UNet)"] = row
            print(f"compiled UNet: warm-up batch {row['warmup_seconds']:.1f} s", flush=True)
            del pipe
            free(dev)
        if not args.skip_sdxl:
            res["sdxl"] = sdxl_part(args, dev, dt, root, labels, guide, indices, per_class, warm)
            free(dev)
            save()
    res["total_seconds"] = time.time() - t_all

    n = len(prompts)
    base = n / gen["plain (diffusers, full guidance)"]["seconds"]
    for r in gen.values():
        r["images_per_s"] = n / r["seconds"]
    # what `augment build --plan --rates FILE` turns into time: UNet rows per second at the preset's settings
    preset = gen[f"augment (cutoff {g.guidance_cutoff}: the preset)"]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    res["rates"] = {"device": f"{name}, {env['dtype']}, SD-1.4 size at {args.size} px",
                    "generate_rows_per_s": preset["images_per_s"] * preset["unet_evals_per_image"]}  # fmt: skip
    if res["learner"]:
        lcalls, lguided = learner_calls(sched, lc)
        first = res["learner"][0]
        res["rates"]["learn_rows_per_s"] = lc.batch_size * (lcalls + lguided) / first["seconds_per_class_step"]
    head = ["path", "steps", "UNet evals/image", "seconds", "images/s", "vs plain", "peak GiB"]
    rows = [[name, args.steps, r["unet_evals_per_image"], r["seconds"], r["images_per_s"],
             f"{r['images_per_s'] / base:.2f}x", gib(r["peak_bytes"])] for name, r in gen.items()]  # fmt: skip
    print(f"\nfull-size SD-1.4, random weights, {args.size} px, {dev} {env['dtype']}, {n} images, batch {b}")
    print(markdown_table(head, rows))
    d = res["date"]
    print(f"\nDATE, 2 images, {d['options']}: {d['seconds']:.1f} s, peak {gib(d['peak_bytes'])} GiB")
    print(
        f"\nlearner step (sd14-cub learn, {lc.batch_size} images/class, {args.steps} steps), weights {gib(weights)} GiB"
    )
    head = ["classes/step", "step s", "s per class-step", "peak GiB", "estimate GiB", "peak / estimate"]
    rows = [[r["classes"], r["seconds"], r["seconds_per_class_step"], gib(r["peak_bytes"]), gib(r["estimate_bytes"]),
             r["peak_over_estimate"] or "-"] for r in res["learner"]]  # fmt: skip
    print(markdown_table(head, rows))
    if res.get("learner_cached"):
        c = res["learner_cached"]
        print(f"learner step with cache interval {c['cache_interval']}, {c['classes']} class(es): {c['seconds']:.1f} s")
    if res["sdxl"]:
        x = res["sdxl"]
        print(f"\nSDXL base, random weights, {args.sdxl_size} px, {args.steps} steps: generation "
              f"{x['generation']['images_per_s']:.3f} images/s ({x['generation']['unet_evals_per_image']} UNet "
              f"evaluations per image); learner step, 1 class: {x['learner']['seconds']:.1f} s, peak "
              f"{gib(x['learner']['peak_bytes'])} GiB, estimate {gib(x['learner']['estimate_bytes'])} GiB")  # fmt: skip
    print(f"total {res['total_seconds']:.0f} s; results saved to {args.out}")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
