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
    """VAE decode of SD latents (÷ the VAE's scaling factor) to images in [0, 1], clamped as `clamp` says."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0] / 2 + 0.5
    if clamp == "hard":
        return images.clamp(0, 1)
    return images + (images.clamp(0, 1) - images).detach()
