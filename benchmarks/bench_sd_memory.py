"""Activation memory of the token learner's gradient path on the full-size SD-1.4 architecture (issue 16).

Random weights (memory does not depend on weight values), built offline by `augment.testing`. For one image
at --size px it counts the bytes autograd saves for backward (saved-tensor hooks, each storage once) in
  - one conditional UNet call with gradient to the prompt embedding,
  - one VAE decode with gradient to the latents,
  - the guide (timm ViT-B/16 at 224 px) with gradient to the pixels,
with and without gradient checkpointing, per dtype. With checkpointing the backward pass recomputes one
checkpointed block at a time and holds its activations meanwhile: "recompute peak" is the largest block's
saved bytes (measured block by block without checkpointing). The total for a learner step is then
    classes × batch × grad_steps × UNet + decode_batch × (decode + guide) + the largest recompute,
which `augment.learn.memory` uses for `max_classes_per_step: auto`. `--step` instead runs one real learner step
of the sd14-cub preset's learner (PNDM, grad_steps 2, checkpointing, decode_batch 1) with `--classes`
classes and reports its peak next to the estimate: torch.cuda.max_memory_allocated on CUDA, the peak RSS
above the loaded models on the CPU.

    python benchmarks/bench_sd_memory.py --size 512 --dtypes fp32
    python benchmarks/bench_sd_memory.py --step --device cuda --dtypes bf16 --classes 1,2,4
    python benchmarks/bench_sd_memory.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import torch

from benchmarks.common import markdown_table, save_results

GIB = 1024**3


PARAMS: set[int] = set()  # storages of model weights: saved for backward too, but not activation memory


class SavedBytes:
    """Context manager: the bytes of distinct non-weight storages autograd saves for backward inside it."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in PARAMS:
            self.seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def measure(fn, *inputs) -> int:
    with SavedBytes() as sb:
        out = fn(*inputs)
    del out
    return sb.total


def block_peak(blocks, run) -> int:
    """The largest saved-bytes of one block (hooked on its forward), without checkpointing."""
    sizes = []
    handles = []
    for b in blocks:
        box = {}

        def pre(mod, args, box=box):
            box["sb"] = SavedBytes().__enter__()

        def post(mod, args, out, box=box):
            box["sb"].__exit__(None, None, None)
            sizes.append(box["sb"].total)

        handles += [b.register_forward_pre_hook(pre), b.register_forward_hook(post)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="image size in px (default 512)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16 (default fp32,bf16)")
    p.add_argument("--architecture", default="sd14", help="sd14, sd21-base, sd21, sdxl-base (default sd14)")
    p.add_argument("--quick", action="store_true", help="128 px, fp32 only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, help="also save the results as JSON here")
    p.add_argument("--step", action="store_true", help="measure one real learner step instead (see above)")
    p.add_argument("--device", default="cpu", help="with --step: cpu or cuda (default cpu)")
    p.add_argument("--classes", default="1", help="with --step: classes per step, comma-separated (default 1)")
    args = p.parse_args(argv)
    if args.step:
        return learner_step(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = 128 if args.quick else args.size
    dtypes = ["fp32"] if args.quick else args.dtypes.split(",")
    import tempfile

    import timm

    from augment.models.generator import resolve_dtype
    from augment.models.hub_files import HUB_CONFIGS
    from augment.models.prompting import text_pairs, unet_forward
    from augment.testing import random_pipeline
    from augment.testing.sd import random_sdxl_pipeline

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tok:
        if args.architecture in HUB_CONFIGS:  # built in the first dtype asked for (fp32 SDXL alone is 10 GiB)
            first = resolve_dtype(dtypes[0], torch.device("cpu"))
            pipe = random_sdxl_pipeline(tok, dtype=first, name=args.architecture)
        else:
            pipe = random_pipeline(args.architecture, tok)
    guide = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=200).eval()
    print(f"built {args.architecture} with random weights in {time.time() - t0:.0f} s; {size} px, batch 1")
    rows, results = [], []
    latent = size // pipe.vae_scale_factor
    for name in dtypes:
        dt = resolve_dtype(name, torch.device("cpu"))
        pipe.to(dtype=dt)
        guide.to(dtype=torch.float32)  # guides run in fp32 (augment.models.guides)
        PARAMS.clear()
        for m in (pipe.unet, pipe.vae, *(te for _, te in text_pairs(pipe)), guide):
            m.requires_grad_(False)
            PARAMS.update(q.untyped_storage().data_ptr() for q in m.parameters())
        x = torch.randn(1, 4, latent, latent, dtype=dt)
        rows_in = 78 if "text_encoder_2" in pipe.components else 77  # SDXL: + the pooled row (encode_prompts)
        cond = torch.randn(1, rows_in, pipe.unet.config.cross_attention_dim, dtype=dt, requires_grad=True)
        t = torch.tensor(500)
        unet_call = lambda: unet_forward(pipe, x, t, cond)  # noqa: E731, B023 (used in this iteration)
        z = x.clone().requires_grad_(True)
        decode = lambda: pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample  # noqa: E731, B023
        img = torch.rand(1, 3, 224, 224, requires_grad=True)
        for ckpt in (False, True):
            for m in (pipe.unet, pipe.vae):
                m.enable_gradient_checkpointing() if ckpt else m.disable_gradient_checkpointing()
            t1 = time.time()
            u, d = measure(unet_call), measure(decode)
            g = measure(guide, img)
            rec_u = rec_d = 0
            if ckpt:  # the backward recompute holds one checkpointed block's activations at a time
                for m in (pipe.unet, pipe.vae):
                    m.disable_gradient_checkpointing()
                rec_u = block_peak([*pipe.unet.down_blocks, pipe.unet.mid_block, *pipe.unet.up_blocks], unet_call)
                rec_d = block_peak([pipe.vae.decoder.mid_block, *pipe.vae.decoder.up_blocks], decode)
            secs = time.time() - t1
            row = {
                "dtype": name,
                "checkpointing": ckpt,
                "unet_call": u,
                "vae_decode": d,
                "guide": g,
                "unet_recompute_peak": rec_u,
                "decode_recompute_peak": rec_d,
                "seconds": round(secs, 1),
            }
            results.append(row)
            rows.append(
                [
                    name,
                    "on" if ckpt else "off",
                    f"{u / GIB:.3f}",
                    f"{d / GIB:.3f}",
                    f"{g / GIB:.3f}",
                    f"{rec_u / GIB:.3f}" if ckpt else "-",
                    f"{rec_d / GIB:.3f}" if ckpt else "-",
                ]
            )
            print(f"  {name} checkpointing {'on' if ckpt else 'off'}: {secs:.0f} s", flush=True)
    print(
        markdown_table(
            [
                "dtype",
                "checkpointing",
                "UNet call GiB",
                "VAE decode GiB",
                "guide GiB",
                "UNet recompute GiB",
                "decode recompute GiB",
            ],
            rows,
        )
    )
    save_results(args.out, {"architecture": args.architecture, "size": size, "per_image": results})
    return 0


def learner_step(args) -> int:
    """Peak memory of one sd14-cub learner step per number of classes, next to augment.learn.memory's estimate."""
    import resource
    import tempfile

    from augment.config import load_config
    from augment.labels import read_label_set
    from augment.learn.learner import TokenLearner
    from augment.learn.memory import step_bytes
    from augment.models.generator import load_generator, resolve_device, resolve_dtype
    from augment.models.guides import load_guide
    from augment.testing import save_random_pipeline, save_vit_mae_cub

    size = 128 if args.quick else args.size
    dev = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_random_pipeline(args.architecture, root / "sd")
        labels = read_label_set(Path(__file__).resolve().parent.parent / "manifests" / "cub200.txt")
        names = [c.name for c in labels.classes]
        guide = load_guide(f"hf:{save_vit_mae_cub(root / 'vit-mae-cub', names, hidden=768, layers=12)}", dev)
        for name in args.dtypes.split(","):
            pipe = load_generator(str(root / "sd"), dev, name)
            cfg = load_config("sd14-cub").learn
            cfg.height = cfg.width = size
            if args.quick:
                cfg.num_inference_steps = 3
            for k in [int(c) for c in args.classes.split(",")]:
                cfg.max_classes_per_step = k
                learner = TokenLearner(pipe, guide, labels, list(range(len(labels))), cfg, root / "out")
                states = [learner.new_state(*e) for e in learner.prepare(list(labels.classes[:k]))]
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(dev)
                    base = torch.cuda.memory_allocated(dev)
                else:
                    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                t0 = time.time()
                learner.step(states)
                secs = time.time() - t0
                if dev.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(dev) - base
                else:
                    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
                learner.injector.remove()
                est = step_bytes(
                    k, cfg.batch_size, cfg.grad_steps, cfg.decode_batch, size, size, resolve_dtype(name, dev), True
                )
                rows.append([name, k, f"{peak / GIB:.2f}", f"{est / GIB:.2f}", f"{secs:.1f}"])
                print(f"  {name} {k} class(es): peak {peak / GIB:.2f} GiB above the models, {secs:.1f} s", flush=True)
    print(f"one sd14-cub learner step at {size} px on {dev} (batch 5, grad_steps 2, checkpointing, decode_batch 1)")
    print(markdown_table(["dtype", "classes", "measured GiB", "estimate GiB", "seconds"], rows))
    print("CPU: peak RSS is a high-water mark of the whole process, so later rows read ≤ their true peak")
    save_results(args.out, {"architecture": args.architecture, "size": size, "device": str(dev), "step": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
