"""The gradient the code behind the paper steps with (`learn.grad_clip_mode: original`).

idansc/discriminative_class_tokens learns one image per call and accumulates `epoch_size` = 5 of them into
one AdamW step under accelerate with fp16 mixed precision (run.py:144-147, config.py:29-30,59). Each image:

    torch.nn.utils.clip_grad_norm_(embeddings, max_grad_norm)   # run.py:343-346, *before* backward
    accelerator.backward(loss)                                   # run.py:348

`accelerator.backward` divides the loss by the accumulation steps and multiplies it by the fp16 GradScaler's
scale, 2**16 at the start (accelerate v0.18.0 accelerator.py:1673-1681); the optimizer steps, unscales and
zeroes only on the last image (optimizer.py:107-136). So each clip acts on the *scaled* gradient accumulated
so far, whose norm is far above 1: it is cut to norm 1 (in scaled units, 2**-16 of a gradient) before the
next image's scaled gradient is added, and the step is close to the last image's gradient alone, / 5.
"""

from __future__ import annotations

import torch

ORIGINAL_LOSS_SCALE = 2.0**16  # torch.cuda.amp.GradScaler's init_scale, which accelerate's fp16 uses


def original_accumulation(
    grads: list[torch.Tensor], max_norm: float, scale: float = ORIGINAL_LOSS_SCALE
) -> torch.Tensor:
    """The unscaled gradient the original steps with, from each image's gradient of its own cross-entropy in
    the order the images were drawn: clip the scaled running sum (torch's clip_grad_norm_: coefficient
    max_norm / (norm + 1e-6), at most 1), then add the next image's gradient × scale / len(grads)."""
    acc = None
    for g in grads:
        if acc is not None:
            acc = acc * torch.clamp(max_norm / (acc.norm() + 1e-6), max=1.0)
        term = g.float() * (scale / len(grads))
        acc = term if acc is None else acc + term
    return acc / scale
