"""Adapt the generator to real images: a LoRA trained on k images per class (the peers' route, DataDream).

Takes --shots images of every class of the label set from --dataset's training split (the same seeded, nested
picks as `downstream fewshot`'s trial --trial), captions each "a photo of a <class name>" (`lora.caption`) and
trains a LoRA on the UNet's attention and the text encoder (`lora:` in the config; DataDream's settings by
default). OUT gets pytorch_lora_weights.safetensors, which `pipe.load_lora_weights(OUT)` loads in diffusers
and `--lora OUT` fuses in before `augment learn`, `generate` or `build`. A killed run continues from its last
checkpoint; the same seed gives the same file.
"""

from __future__ import annotations

import argparse

from augment.commands.common import add_progress_argument, resolve_config, show_progress
from augment.commands.options import add_fields
from augment.config import LoraConfig, RunConfig, list_presets
from augment.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="label set file (manifests/*.txt format)")
    p.add_argument("--dataset", required=True,
                   help="real images: fashion-mnist, cub:DIR, inat:DIR, imagefolder:DIR, hf:ID_OR_DIR")  # fmt: skip
    p.add_argument("--shots", type=int, required=True, help="images per class to adapt to (k ≥ 1)")
    p.add_argument(
        "--trial", type=int, default=0, help="which draw of k images (downstream fewshot's trial; default 0)"
    )
    p.add_argument("--out", required=True, help="output directory (local): the LoRA and its manifest")
    p.add_argument("--preset", help=f"preset name from augment/presets ({', '.join(list_presets())})")
    p.add_argument("--config", help="YAML config file (same keys as a preset)")
    add_fields(p, RunConfig, recurse=False, only=("generator", "device", "dtype"))
    add_fields(p, LoraConfig, "lora.", only=("rank", "epochs", "max_steps", "batch_size", "lr", "seed"))
    p.add_argument("--overwrite", action="store_true", help="replace a LoRA or checkpoint made otherwise in OUT")
    add_progress_argument(p)


def run(args: argparse.Namespace) -> int:
    from augment.data.datasets import load_dataset, sample_kshot
    from augment.jobs.adapt import adapt_generator
    from augment.labels import as_label_set

    if args.shots < 1:
        raise UserError(f"--shots must be ≥ 1, got {args.shots}", "shots")
    if args.trial < 0:
        raise UserError(f"--trial must be ≥ 0, got {args.trial}", "trial")
    if not str(args.out).strip():
        raise UserError("--out: an empty path", "out")
    cfg = resolve_config(args)
    cfg.validate()
    labels = as_label_set(args.labels)
    data = load_dataset(args.dataset, labels)
    picks = sample_kshot(data.train.labels, args.shots, num_classes=len(labels), seed=cfg.lora.seed,
                         trial=args.trial, class_names=data.classes)  # fmt: skip
    result = adapt_generator(labels, data.train.subset(picks), args.out, cfg, overwrite=args.overwrite,
                             progress=show_progress(args))  # fmt: skip
    print(result.summary())
    return 0
