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


def decode_latents(pipe, latents: torch.Tensor, clamp: str = "straight-through") -> torch.Tensor:
    """VAE decode of SD latents (÷ the VAE's scaling factor) to images in [0, 1], clamped as `clamp` says.

    A VAE that overflows in fp16 (its config's `force_upcast`: SDXL's) decodes in fp32 when the models are
    fp16, as diffusers' SDXL pipeline does (a float copy of the VAE, kept on the pipeline; bf16 has fp32's range
    and needs none)."""
    vae = pipe.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = _fp32_vae(pipe)
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0] / 2 + 0.5
    if clamp == "hard":
        return images.clamp(0, 1)
    return images + (images.clamp(0, 1) - images).detach()


def _fp32_vae(pipe):
    copy = getattr(pipe, "_augment_fp32_vae", None)
    if copy is None or copy[0] is not pipe.vae:
        import copy as copying

        copy = (pipe.vae, copying.deepcopy(pipe.vae).float().requires_grad_(False))
        pipe._augment_fp32_vae = copy
    return copy[1]
