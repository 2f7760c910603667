"""Latents → images in [0, 1] for the guide: the one decode path of the learner, DATE's reward and scoring.

The pipeline's own output (what generation writes and `--score` classifies) is clamped to [0, 1]; the guide
must see the same range when a gradient is taken. Two ways to clamp in the gradient path:
- "straight-through" (default): clamped in the forward pass, the gradient passes as if unclamped, so saturated
  pixels do not silence the classifier's signal;
- "hard": `clamp(0, 1)` with its zero gradient outside the range, as the code behind the paper does
  (run.py:302-304).
"""

from __future__ import annotations

import torch

from augment.models.prompting import is_sdxl


def decode_latents(pipe, latents: torch.Tensor, clamp: str = "straight-through") -> torch.Tensor:
    """VAE decode of SD latents (÷ the VAE's scaling factor) to images in [0, 1], clamped as `clamp` says.

    SDXL's VAE, which overflows in fp16 (`force_upcast` in its config), decodes in fp32 when the models are fp16,
    as diffusers' SDXL pipeline does (a float copy of the VAE, kept on the pipeline; bf16 has fp32's range and
    needs none). SD-1.x/2.x decode in the models' dtype, as their pipeline does (AutoencoderKL's own default
    `force_upcast` is True, but only the SDXL pipeline reads it)."""
    vae = pipe.vae
    if upcasts_decode(pipe):
        vae = _fp32_vae(pipe)
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0] / 2 + 0.5
    if clamp == "hard":
        return images.clamp(0, 1)
    return images + (images.clamp(0, 1) - images).detach()


def upcasts_decode(pipe) -> bool:
    """Whether `decode_latents` decodes `pipe`'s latents with an fp32 copy of its VAE (SDXL, fp16, force_upcast)."""
    vae = pipe.vae
    return is_sdxl(pipe) and vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


def _fp32_vae(pipe):
    copy = getattr(pipe, "_augment_fp32_vae", None)
    if copy is None or copy[0] is not pipe.vae or copy[1].device != pipe.vae.device:
        import copy as copying

        copy = (pipe.vae, copying.deepcopy(pipe.vae).float().requires_grad_(False))
        pipe._augment_fp32_vae = copy
    return copy[1]
