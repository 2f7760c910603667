"""How many classes fit in one learner step: `learn.max_classes_per_step: auto`.

The learner's gradient path holds, per image, the activations of `grad_steps` conditional UNet calls; the
VAE decode and the guide run `decode_batch` images at a time (augment.learn.learner), and with gradient
checkpointing the backward pass recomputes one block at a time. Bytes per 512×512 image in fp32, measured
on the SD-1.4 architecture with saved-tensor hooks (`python benchmarks/bench_sd_memory.py --size 512`,
benchmarks/README.md); they scale with the pixel count and the dtype's size (the guide stays fp32). Two
footprints: SD-1.x/2.x-sized UNets and SDXL's (its 2.6 B UNet); for other generators set an integer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from augment.models.decode import upcasts_decode
from augment.models.prompting import is_sdxl

GIB = 1024**3
REFERENCE_PIXELS = 512 * 512


@dataclass(frozen=True)
class Footprint:
    """Bytes per 512×512 image in fp32 of one architecture's gradient path (keys: gradient checkpointing on)."""

    unet_call: dict
    vae_decode: dict
    unet_recompute: float  # the largest checkpointed UNet block, held in backward
    decode_recompute: float  # the largest checkpointed VAE decoder block


# SD-1.4 (the SD-1.x/2.x UNets' size): `bench_sd_memory.py --size 512` in fp32
SD = Footprint(
    {False: 1.372 * GIB, True: 0.278 * GIB}, {False: 5.555 * GIB, True: 0.797 * GIB}, 0.500 * GIB, 2.625 * GIB
)
# SDXL base: `bench_sd_memory.py --architecture sdxl-base --size 512 --dtypes bf16`, doubled to fp32 (its VAE
# has SD's layout: the same decode figures; 256 px gives 1/3.8 to 1/4.0 of these: they scale with the pixels)
SDXL = Footprint(
    {False: 2.506 * GIB, True: 0.234 * GIB}, {False: 5.554 * GIB, True: 0.796 * GIB}, 0.834 * GIB, 2.626 * GIB
)
GUIDE = 0.069 * GIB  # ViT-B/16 at 224 px, any image size
HEADROOM = 0.8  # share of the free memory planned for
MAX_AUTO = 64


def step_bytes(
    classes: int,
    batch_size: int,
    grad_steps: int,
    decode_batch: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    checkpointing: bool,
    footprint: Footprint = SD,
    decode_dtype: torch.dtype | None = None,
) -> float:
    """Estimated activation bytes of one learner step with `classes` classes (weights not included).
    `decode_dtype`: the VAE decode's, where it differs from the models' (fp16 SDXL decodes in fp32)."""
    f = footprint
    scale = height * width / REFERENCE_PIXELS
    size = torch.empty((), dtype=dtype).element_size() / 4
    dsize = size if decode_dtype is None else torch.empty((), dtype=decode_dtype).element_size() / 4
    unet = classes * batch_size * grad_steps * f.unet_call[checkpointing] * scale * size
    decode = decode_batch * (f.vae_decode[checkpointing] * scale * dsize + GUIDE)
    recompute = (f.unet_recompute * size + f.decode_recompute * dsize) * scale if checkpointing else 0.0
    return unet + decode + recompute


def footprint(pipe) -> Footprint:
    """SDXL's figures for a UNet conditioned on the pooled text and time ids, SD-1.x/2.x's otherwise."""
    return SDXL if is_sdxl(pipe) else SD


def free_bytes(device: torch.device) -> int:
    """Free memory on `device`: CUDA's free memory (after returning what this process's allocator caches but no
    longer uses: a Ray worker that ran an earlier task measures as a fresh process does), or the host's
    available memory for the CPU."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 * GIB


def auto_classes_per_step(pipe, cfg, free: int | None = None) -> int:
    """The most classes whose step fits in HEADROOM of the free memory (at least 1, at most MAX_AUTO)."""
    device = pipe.unet.device
    free = free_bytes(device) if free is None else free
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    h, w = cfg.height or native, cfg.width or native
    decode_batch = min(cfg.decode_batch, cfg.batch_size)
    upcast = upcasts_decode(pipe)
    args = (cfg.batch_size, cfg.grad_steps, decode_batch, h, w, pipe.unet.dtype, cfg.gradient_checkpointing,
            footprint(pipe), torch.float32 if upcast else None)  # fmt: skip
    if upcast:  # the fp32 copy of the VAE (augment.models.decode) is not loaded yet
        free -= sum(p.numel() * 4 for p in pipe.vae.parameters())
    classes = 1
    while classes < MAX_AUTO and step_bytes(classes + 1, *args) <= HEADROOM * free:
        classes += 1
    return classes
