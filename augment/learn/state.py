"""One class being learned: its token row, the paper's stopping rules, and which token is kept when it stops.

Stopping (Schwartz et al. 2023, §4): all of the step's images right (`stop_accuracy`, over `stop_window`
steps), `patience` steps without a loss improvement (with at least `patience_min_accuracy` right), or
`max_steps`. Kept token (`learn.keep`): "best", the vector whose step scored the lowest loss (the one the
loss was measured on); "after-best", that vector after the update its step made, as the code behind the paper
saves it (run.py:377-403 saves its pipeline after `optimizer.step()` when the epoch's loss is a new minimum);
"last", the vector held when the class stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from augment.labels import LabelClass


@dataclass
class ClassState:
    """One class being learned: its token row and the stopping bookkeeping."""

    cls: LabelClass
    token: str
    guide_index: int
    init_word: str
    embedding: torch.nn.Parameter
    optimizer: torch.optim.Optimizer
    token_id: int = -1
    step: int = 0
    best_loss: float = math.inf
    since_best: int = 0
    recent_correct: list[list[bool]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0  # seconds spent before a restart (augment.learn.resume)
    best_vector: torch.Tensor | None = None  # the kept snapshot (keep: best / after-best)
    best_step: int = 0  # the step whose loss was the lowest
    noise_offset: int = 0  # seeds moved on after a collapse (learn.reseed_on_collapse)

    def seconds(self) -> float:
        return self.elapsed + time.time() - self.started

    def kept(self, keep: str) -> torch.Tensor:
        """The vector saved when the class stops."""
        if keep == "last" or self.best_vector is None:
            return self.embedding.detach()
        return self.best_vector

    def snapshot(self) -> None:
        self.best_vector = self.embedding.detach().float().clone()


def class_noise_seed(seed: int, position: int, step: int) -> int:
    """Noise of class `position` at learning step `step`: independent of which classes share the batch."""
    return int(np.random.SeedSequence([seed, position, step]).generate_state(1)[0])


def prompt_order(seed: int, position: int, step: int, n: int, shuffled: bool) -> list[int]:
    """Which prompt index each of a class's n images takes at a step: 0..n-1, or (`shuffled`, the original
    code's DataLoader(shuffle=True) over its prompt dataset, run.py:112-118) a permutation drawn per step."""
    if not shuffled:
        return list(range(n))
    rng = np.random.default_rng(np.random.SeedSequence([seed, position, step, 1]))
    return [int(i) for i in rng.permutation(n)]


def record(s: ClassState, cfg, loss: float, correct: list[bool], prob: float, grad_norm: float) -> None:
    """Book one finished step of class `s` (its loss was measured before the step's update) and apply the
    stopping rules. Call after the update; the "best" snapshot is taken before it (`improves`)."""
    s.step += 1
    acc = sum(correct) / len(correct)
    s.history.append(
        {
            "step": s.step,
            "loss": round(loss, 5),
            "accuracy": acc,
            "target_prob": round(prob, 5),
            "grad_norm": round(grad_norm, 5),
            "token_norm": round(float(s.embedding.detach().norm()), 5),
        }
    )
    s.recent_correct = (s.recent_correct + [correct])[-cfg.stop_window :]
    if cfg.reseed_on_collapse and math.isfinite(s.best_loss) and loss > 2 * s.best_loss:
        s.noise_offset += 1  # run.py:372-375: "training collapse", the seed moves on by one
    if loss < s.best_loss:
        s.best_loss, s.since_best, s.best_step = loss, 0, s.step
        if cfg.keep == "after-best":
            s.snapshot()
    else:
        s.since_best += 1
    window = [c for step in s.recent_correct for c in step]
    if len(s.recent_correct) == cfg.stop_window and sum(window) >= cfg.stop_accuracy * len(window):
        s.stop_reason = "all correct" if all(window) else f"at least {cfg.stop_accuracy:.0%} correct"
    elif s.since_best >= cfg.patience and acc >= cfg.patience_min_accuracy:
        s.stop_reason = f"no loss improvement for {cfg.patience} steps"
    elif s.step >= cfg.max_steps:
        s.stop_reason = "max steps"


def improves(s: ClassState, loss: float) -> bool:
    return loss < s.best_loss
