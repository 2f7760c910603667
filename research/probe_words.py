"""Which word reaches each class? Plain prompts by label name, by synonym and by coarse word (toy world)

A token can only steer a generator towards images it can draw. This probe asks the toy generator for each
Fashion-MNIST class with three plain prompts, "a photo of a {word}", where word is the label set's name
("pullover"), the synonym train_generator can caption with (`augment.toy.SYNONYM`, "sweater") and the coarse
word ("top"), on the same seeds, and reports the held-out classifier's top-1 per class. A class that no word
reaches is out of reach of a learned token too; a class the name already reaches leaves it little to add.

    python research/probe_words.py --quick
    python research/probe_words.py --generator runs/gen2 --out runs/bench/words-gen2.json   # ≈ 4 min
"""

from __future__ import annotations

import argparse

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import numpy as np

from benchmarks.common import add_common_arguments, heldout_probe_setup, markdown_table, save_results, top1

SEED = 1000


def main(argv: list[str] | None = None) -> dict:
    from augment.generate.loop import generate_images
    from augment.toy import COARSE_WORD, FINE_NAMES, SYNONYM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p)
    p.add_argument("--generator", help="toy pipeline directory (default: the preset's)")
    p.add_argument("--images-per-class", type=int, default=30, help="default 30; --quick: 3")
    args = p.parse_args(argv)
    n = 3 if args.quick else args.images_per_class
    env, cfg, generator, pipe, heldout = heldout_probe_setup(args)
    seeds = list(range(SEED, SEED + n))
    words = {"label name": lambda f: f, "synonym": SYNONYM.get, "coarse word": COARSE_WORD.get}
    acc: dict[str, list[float]] = {}
    for kind, word in words.items():
        acc[kind] = []
        for y, fine in enumerate(FINE_NAMES):
            images = generate_images(pipe, [f"a photo of a {word(fine)}"] * n, seeds, cfg.generate)
            acc[kind].append(top1(heldout, images, [y] * n))
        print(f"{kind}: mean {np.mean(acc[kind]):.1f}%", flush=True)
    rows = [[fine] + [acc[k][y] for k in words] for y, fine in enumerate(FINE_NAMES)]
    rows.append(["**mean**"] + [float(np.mean(acc[k])) for k in words])
    print(markdown_table(["class"] + [f"{k} (held-out top-1 %)" for k in words], rows))
    out = {
        "environment": env,
        "generator": generator,
        "classifier": cfg.eval_classifier,
        "images_per_class": n,
        "seed": SEED,
        "top1": acc,
        "words": {k: [w(f) for f in FINE_NAMES] for k, w in words.items()},
    }
    save_results(args.out, out)
    return out


if __name__ == "__main__":
    main()
