"""Mass generation: images of each work unit with the class tokens (or without: the plain baseline), into shards.

Image i of class c always gets the same seed and the same prompt (templates alternate by i), whatever the
batch size, the worker or the order of units, so an interrupted or split run gives the same samples. A unit
holds images of many classes (augment.data.shards), so a batch does too: each image carries its own prompt.
Each distinct prompt of a unit is encoded once (PromptCache), and image encoding and shard writing run on a
background thread while the next batch samples; both give the same bytes as the plain serial path.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from augment.config import GenerateConfig
from augment.data.shards import ShardUnit, encode_image, encode_sample, image_seed, write_unit
from augment.generate.date import sample_date
from augment.labels import LabelSet
from augment.models.feature_cache import FeatureCache
from augment.models.prompting import format_prompt, text_pairs
from augment.models.sampling import GuidanceCutoff


def image_prompt(cfg: GenerateConfig, i: int, token: str, name: str) -> str:
    """The prompt of image i: templates alternate by image index; an empty token gives the plain prompt."""
    return format_prompt(cfg.prompts[i % len(cfg.prompts)], token, name)


class PromptCache:
    """Prompt embeddings (conditional, unconditional) by prompt: each distinct prompt of a unit is encoded
    once, not once per batch. Holds one unit's prompts at a time (`reset` between units)."""

    def __init__(self, pipe, guidance_scale: float):
        self.pipe, self.cfg_on = pipe, guidance_scale > 1
        # SD: (cond, uncond); SDXL: (cond, uncond, pooled, uncond pooled), as their encode_prompt returns them
        self.names = ["prompt_embeds", "negative_prompt_embeds"]
        if len(text_pairs(pipe)) == 2:
            self.names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        self.table: dict[str, tuple[torch.Tensor | None, ...]] = {}

    def reset(self) -> None:
        self.table.clear()

    @torch.no_grad()
    def embeds(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        device = self.pipe._execution_device
        for p in dict.fromkeys(prompts):
            if p not in self.table:
                self.table[p] = self.pipe.encode_prompt(
                    prompt=p, device=device, num_images_per_prompt=1, do_classifier_free_guidance=self.cfg_on
                )
        return {name: torch.cat([self.table[p][i] for p in prompts])
                for i, name in enumerate(self.names) if self.cfg_on or "negative" not in name}  # fmt: skip


def generate_images(
    pipe,
    prompts: list[str],
    seeds: list[int],
    cfg: GenerateConfig,
    guide=None,
    targets: list[int] | None = None,
    cache: PromptCache | None = None,
) -> np.ndarray:
    """One pipeline call: N×H×W×3 floats in [0, 1], one CPU generator per image.

    With `cfg.refine == "date"` our own sampler (augment.generate.date) replaces the pipeline call: same seeds and
    latents, plus DATE updates of the prompt embeddings towards the guide's `targets` (one per image).
    With a `cache` the prompt embeddings come from it (the same tensors the pipeline would compute)."""
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    opts = cfg.date
    if opts is not None:
        if guide is None or targets is None:
            raise ValueError("DATE refinement needs the guide and a target guide index per image")
        return sample_date(
            pipe,
            prompts,
            gens,
            cfg.num_inference_steps,
            cfg.guidance_scale,
            cfg.height,
            cfg.width,
            guide,
            targets,
            opts,
            cfg.guidance_cutoff,
        )
    text = cache.embeds(prompts) if cache is not None else {"prompt": prompts}
    if cfg.guidance_cutoff < 1:
        text["callback_on_step_end"] = GuidanceCutoff(cfg.guidance_cutoff)
        text["callback_on_step_end_tensor_inputs"] = GuidanceCutoff.inputs(pipe)
    reuse = FeatureCache(pipe.unet, cfg.cache_interval, cfg.cache_branch) if cfg.cache_interval > 1 else None
    with torch.no_grad(), reuse or contextlib.nullcontext():  # a fresh cache: one trajectory per pipeline call
        out = pipe(
            **text,
            generator=gens,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            height=cfg.height,
            width=cfg.width,
            output_type="np",
        )
    return np.asarray(out.images, dtype=np.float32)


def guide_probabilities(guide, images: np.ndarray, indices: list[int]) -> list[float]:
    """The guide's softmax probability of each image's target index."""
    device = next(guide.parameters()).device
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
    with torch.no_grad():
        probs = guide(x).float().softmax(1)
    return [float(probs[k, j]) for k, j in enumerate(indices)]


def unit_samples(
    pipe,
    labels: LabelSet,
    tokens: dict[int, str] | None,
    cfg: GenerateConfig,
    unit: ShardUnit,
    guide=None,
    guide_indices: list[int] | None = None,
    on_images: Callable[[int], None] | None = None,
    cache: PromptCache | None = None,
    encoder: ThreadPoolExecutor | None = None,
) -> list[dict[str, Any]] | list[Future]:
    """Generate the samples (webdataset dicts of bytes) of one unit, `cfg.batch_size` images per call, each
    image with its own class's prompt, seed and (scoring, DATE) guide target.

    With a guide and guide indices, each sample records the guide's probability; DATE refinement
    (`cfg.refine`) needs both and records its settings in the sample's json. With an `encoder` thread pool the
    images are encoded there while the next batch samples, and the result is one future per batch (each
    giving that batch's samples); without, the samples themselves."""
    opts = cfg.date
    refine = None if opts is None else {"method": cfg.refine, **dataclasses.asdict(opts)}
    batches = []
    for start in range(0, unit.count, max(cfg.batch_size, 1)):
        batch = unit.samples[start : start + cfg.batch_size]
        names = [labels.classes[p].name for p, _ in batch]
        tokens_of = ["" if tokens is None else tokens[p] for p, _ in batch]
        prompts = [image_prompt(cfg, i, token, name) for (_, i), token, name in zip(batch, tokens_of, names)]
        seeds = [image_seed(cfg.seed, p, i) for p, i in batch]
        targets = None if guide_indices is None else [guide_indices[p] for p, _ in batch]
        images = generate_images(pipe, prompts, seeds, cfg, guide, targets, cache)
        probs: list[float | None] = [None] * len(batch)
        if guide is not None and targets is not None:
            probs = guide_probabilities(guide, images, targets)
        job = (cfg, batch, names, tokens_of, prompts, seeds, images, probs, refine)
        batches.append(encoder.submit(encode_samples, *job) if encoder is not None else encode_samples(*job))
        if on_images is not None:
            on_images(len(batch))
    return batches if encoder is not None else [s for batch in batches for s in batch]


def encode_samples(
    cfg: GenerateConfig,
    batch: tuple[tuple[int, int], ...],
    names: list[str],
    tokens: list[str],
    prompts: list[str],
    seeds: list[int],
    images: np.ndarray,
    probs: list,
    refine: dict | None,
) -> list[dict[str, Any]]:
    """One batch's webdataset samples (augment.data.shards.encode_sample): image, class index, json record."""
    samples = []
    for (position, i), name, token, prompt, seed, image, prob in zip(
        batch, names, tokens, prompts, seeds, images, probs
    ):
        meta = {"class": name, "seed": seed, "prompt": prompt, "token": token or None}
        if prob is not None:
            meta["guide_prob"] = round(prob, 6)
        if refine is not None:
            meta["refine"] = refine
        data = encode_image(image, cfg.image_format, cfg.jpeg_quality)
        samples.append(encode_sample(position, i, data, cfg.image_format, meta))
    return samples


def generate_units(
    pipe,
    labels: LabelSet,
    tokens: dict[int, str] | None,
    cfg: GenerateConfig,
    units: list[ShardUnit],
    out: str | Path,
    chash: str,
    guide=None,
    guide_indices: list[int] | None = None,
    on_images: Callable[[int], None] | None = None,
    on_unit: Callable[[ShardUnit, dict], None] | None = None,
    overlap: bool = True,
) -> list[dict[str, Any]]:
    """Generate and write each unit in turn (atomically, see augment.data.shards); returns their markers.

    `tokens=None` is the `--no-tokens` baseline: same seeds, same prompts without the token. With `overlap`
    a background thread encodes images and writes each unit's shard while sampling goes on; `on_unit` is
    still called in unit order, from this thread, once the unit's shard and marker exist."""
    cache = PromptCache(pipe, cfg.guidance_scale)  # a unit's prompts, encoded once each
    markers: list[dict[str, Any]] = []
    pending: list[tuple[ShardUnit, Future]] = []

    def finish(block: bool) -> None:
        while pending and (block or pending[0][1].done()):
            unit, future = pending.pop(0)
            markers.append(future.result())
            if on_unit is not None:
                on_unit(unit, markers[-1])

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment-writer") if overlap else None
    with writer or contextlib.nullcontext() as pool:
        for unit in units:
            cache.reset()
            batches = unit_samples(pipe, labels, tokens, cfg, unit, guide, guide_indices, on_images, cache, pool)
            if pool is not None:  # the same single thread: it writes after encoding this unit's batches, in order
                pending.append(
                    (
                        unit,
                        pool.submit(
                            lambda u=unit, b=batches: write_unit(
                                out, labels.name, u, [s for f in b for s in f.result()], chash
                            )
                        ),
                    )
                )
            else:
                pending.append((unit, _done(write_unit(out, labels.name, unit, batches, chash))))
            finish(block=False)
        finish(block=True)
    return markers


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f
