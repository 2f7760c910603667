"""Which word reaches each class? Plain prompts by label name, by synonym and by coarse word (toy world)

A token can only steer a generator towards images it can draw. This probe asks the toy generator for each
Fashion-MNIST class with three plain prompts, "a photo of a {word}", where word is the label set's name
("pullover"), the synonym train_generator can caption with (`augment.toy.SYNONYM`, "sweater") and the coarse
word ("top"), on the same seeds, and reports the held-out classifier's top-1 per class. A class that no word
reaches is out of reach of a learned token too; a class the name already reaches leaves it little to add.

    python benchmarks/probe_words.py --quick
    python benchmarks/probe_words.py --generator runs/gen2 --out runs/bench/words-gen2.json   # ≈ 4 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks.common import markdown_table, print_environment, environment, save_results, top1

SEED = 1000


def main(argv: list[str] | None = None) -> None:
    from augment.guide import load_guide
    from augment.toy import COARSE_WORD, FINE_NAMES, GENERATOR_DIR, HELDOUT_DIR, SYNONYM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", default=str(GENERATOR_DIR), help="toy pipeline directory")
    p.add_argument("--images-per-class", type=int, default=30)
    p.add_argument("--steps", type=int, default=10, help="DDIM steps, as the toy preset generates")
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 images per class (a smoke run)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    n = 3 if args.quick else args.images_per_class
    torch.set_num_threads(args.threads)
    env = environment("cpu")
    print_environment(env)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.generator, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    heldout = load_guide(f"ckpt:{HELDOUT_DIR}")
    words = {"label name": lambda f: f, "synonym": SYNONYM.get, "coarse word": COARSE_WORD.get}
    acc: dict[str, list[float]] = {}
    for kind, word in words.items():
        acc[kind] = []
        for y, fine in enumerate(FINE_NAMES):
            gens = [torch.Generator().manual_seed(SEED + i) for i in range(n)]
            with torch.no_grad():
                images = pipe([f"a photo of a {word(fine)}"] * n, generator=gens, output_type="np",
                              num_inference_steps=args.steps, guidance_scale=args.guidance_scale).images
            acc[kind].append(top1(heldout, images, [y] * n))
        print(f"{kind}: mean {np.mean(acc[kind]):.1f}%", flush=True)
    rows = [[fine] + [acc[k][y] for k in words] for y, fine in enumerate(FINE_NAMES)]
    rows.append(["**mean**"] + [float(np.mean(acc[k])) for k in words])
    print(markdown_table(["class"] + [f"{k} (held-out top-1 %)" for k in words], rows))
    save_results(args.out, {"environment": env, "generator": args.generator, "images_per_class": n,
                            "seed": SEED, "top1": acc, "words": {k: [w(f) for f in FINE_NAMES]
                                                                 for k, w in words.items()}})


if __name__ == "__main__":
    main()
