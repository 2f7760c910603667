"""LoRA training on the generator (`augment adapt`, augment.adapt.lora) at full SD-1.4 size: time per step and
memory, with and without gradient checkpointing (issue 35).

Random weights (speed and memory do not depend on weight values), built offline by `augment.testing` (or
--generator DIR). DataDream's adapter (rank 16 on the UNet's attention and the text encoder) on random images
at --size px, --batch-size images per step. Each setting runs in a process of its own, so each peak is its
own: torch.cuda.max_memory_allocated on CUDA; on the CPU the peak RSS (ru_maxrss) of the whole process, models
included, and the peak above the RSS after loading; on every device the bytes autograd saves for backward in the
first step (each storage once, weights apart: the activation memory; with checkpointing, the sum over the
blocks recomputed one at a time, an upper bound). The first step is reported apart (warm-up).

    python benchmarks/bench_lora.py --size 512 --dtype bf16 --steps 3
    python benchmarks/bench_lora.py --device cuda --dtype bf16 --batch-size 8
    python benchmarks/bench_lora.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import numpy as np
import torch

from benchmarks.common import environment, markdown_table, print_environment, save_results

GIB = 1024**3


def one(args: argparse.Namespace) -> dict:
    """One setting in this process: load, build the trainer, run the steps."""
    from augment.adapt.lora import LoraTrainer
    from augment.data.images import GreyImages, Split
    from augment.models.generator import load_generator
    from augment.settings import LoraConfig

    torch.set_num_threads(args.threads)
    pipe = load_generator(str(args.generator), args.device, args.dtype)
    dev = pipe.unet.device
    n = max(args.batch_size, 8)
    rng = np.random.default_rng(0)
    images = Split(
        GreyImages(rng.integers(0, 256, (n, args.size - 4, args.size - 4), dtype=np.uint8)), np.arange(n) % 2
    )  # fmt: skip  (GreyImages pads by 2 on each side)
    cfg = LoraConfig(batch_size=args.batch_size, max_steps=args.steps, gradient_checkpointing=args.checkpointing)
    trainer = LoraTrainer(pipe, images, ["class a", "class b"], cfg, args.size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = {p.untyped_storage().data_ptr() for m in (pipe.unet, pipe.text_encoder, pipe.vae) for p in m.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:  # each storage autograd keeps for backward, once; weights apart
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            saved.setdefault(st.data_ptr(), st.nbytes())
        return t

    times = []
    for s in range(args.steps):
        t0 = time.perf_counter()
        if s == 0:  # (the first step: counted, not timed against the others)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                trainer.step(s)
        else:
            trainer.step(s)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"checkpointing": args.checkpointing, "first_step_s": round(times[0], 2),
           "step_s": round(float(np.mean(times[1:])) if len(times) > 1 else times[0], 2),
           "trainable_params": sum(p.numel() for p in trainer.params),
           "weights_gib": round(sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.text_encoder, pipe.vae)
                                    for p in m.parameters()) / GIB, 2),
           "saved_for_backward_gib": round(sum(saved.values()) / GIB, 2)}  # fmt: skip
    if dev.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / GIB, 2)
    else:
        row.update(peak_rss_gib=round(peak / GIB, 2), above_loaded_gib=round((peak - base) / GIB, 2))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="training resolution in px (default 512)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step (DataDream: 8; default 1)")
    p.add_argument("--steps", type=int, default=3, help="steps per setting, the first reported apart (default 3)")
    p.add_argument("--dtype", default="bf16", help="fp32, bf16, fp16 (default bf16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda ... (default cpu)")
    p.add_argument("--generator", type=Path, help="a diffusers SD directory (default: SD-1.4's architecture, random)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="SD-1.4 at 1/16 width, 64 px, 2 steps: a smoke test")
    p.add_argument("--out", type=Path, help="also save the results as JSON here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one setting
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    for name in ("size", "batch_size", "steps", "threads"):
        if getattr(args, name) < 1:
            print(f"bench_lora.py: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            raise SystemExit(2)
    if args.one:
        print(json.dumps(one(args)))
        return
    if args.quick:
        args.size, args.steps = 64, 2
    env = environment(args.device, args.dtype)
    print_environment(env)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        if args.generator is None:
            from augment.testing import save_random_pipeline

            name = "sd14-narrow" if args.quick else "sd14"
            args.generator = save_random_pipeline(name, Path(tmp) / name)
        rows = []
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--one", "--generator", str(args.generator), "--size", str(args.size),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--dtype", args.dtype,
                   "--device", args.device, "--threads", str(args.threads)] + (["--checkpointing"] if ckpt else [])  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(done.returncode)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    keys = list(rows[0])
    print(f"\nLoRA step, {args.size} px, batch {args.batch_size}, {args.dtype}, {env.get('device', args.device)}:")
    print(markdown_table(keys, [[r[k] for k in keys] for r in rows]))
    save_results(args.out, {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
