"""fp16 training of the token rows: dynamic loss scaling for the learner's retry-on-overflow loop."""

from __future__ import annotations

import torch


class LossScaler:
    """Dynamic loss scaling for fp16 models, as torch.amp.GradScaler does it, for the learner's retry loop:
    the loss is multiplied by `scale` before backward; `unscale` divides the token gradients back and says
    whether they are finite. An overflowed step is retried on the same noise with half the scale; after
    `growth_interval` finite steps in a row the scale doubles. Disabled (scale 1) for fp32 and bf16."""

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = init_scale if enabled else 1.0
        self.growth_interval = growth_interval
        self.good = 0  # finite steps in a row since the last change of scale

    def unscale(self, params: list[torch.Tensor]) -> bool:
        if not self.enabled:
            return True
        finite = True
        for p in params:
            if p.grad is not None:
                p.grad.div_(self.scale)
                finite &= bool(torch.isfinite(p.grad).all())
        if not finite:
            self.scale /= 2
            self.good = 0
            if self.scale < 1.0:
                raise FloatingPointError("fp16 token gradient is not finite even without loss scaling")
        else:
            self.good += 1
            if self.good >= self.growth_interval:
                self.scale, self.good = self.scale * 2, 0
        return finite
