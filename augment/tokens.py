"""Discriminative class tokens (Schwartz et al. 2023): learn one new token embedding S_c per class.

For each class c a new token is added to the text encoder, initialised from a word. Each step generates
images from prompts like "A photo of S_c <name>", runs all denoising steps but the last without gradient
("gradient skipping"), the last UNet call, the VAE decode and the guide classifier with gradient, and
minimises cross-entropy towards c, updating only S_c's embedding. Two options go beyond the paper where its
recipe carries no signal (README "The toy world"): `grad_steps` lets the gradient run through the last k steps,
and `objective: x0` classifies each of those steps' predicted clean image x̂0 instead of the final image, each
step's gradient reaching the token through that step's UNet call only (DATE's per-step gradient, as a loss).

Many classes are learned at once: every sample carries its own class's token, the UNet runs once per step
for all of them, and a class leaves the batch when it stops (the paper's three rules), making room for the
next. The embedding matrix is never written while learning: learned vectors are injected by a forward hook
on the token-embedding layer, so every other row stays bit-identical.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from augment.config import LearnConfig
from augment.guide import Guide
from augment.labels import LabelClass, LabelSet
from augment.prompting import add_placeholder_tokens, encode_prompts, format_prompt
from augment.tokens_io import is_learned, save_token


@dataclass
class ClassState:
    """One class being learned: its token row and the paper's stopping bookkeeping."""

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


class EmbeddingInjector:
    """Forward hook on the token-embedding layer: positions holding a learned token's id get its vector."""

    def __init__(self, text_encoder):
        self.layer = text_encoder.get_input_embeddings()
        self.vectors: dict[int, torch.Tensor] = {}
        self._handle = self.layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if not self.vectors:
            return output
        ids = inputs[0]
        for token_id, vec in self.vectors.items():
            mask = (ids == token_id).unsqueeze(-1)
            if mask.any():
                output = torch.where(mask, vec.to(output.dtype), output)
        return output

    def remove(self) -> None:
        self._handle.remove()


def class_noise_seed(seed: int, position: int, step: int) -> int:
    """Noise of class `position` at learning step `step`: independent of which classes share the batch."""
    return int(np.random.SeedSequence([seed, position, step]).generate_state(1)[0])


class TokenLearner:
    """Learns tokens for many classes in shared UNet batches. `run()` is the whole procedure."""

    def __init__(self, pipe, guide: Guide, labels: LabelSet, guide_indices: list[int], cfg: LearnConfig,
                 out_dir: str | Path, generator_info: dict | None = None):
        self.pipe, self.guide, self.labels, self.cfg = pipe, guide, labels, cfg
        self.guide_indices = guide_indices
        self.out_dir = Path(out_dir)
        self.generator_info = generator_info or {}
        self.device = pipe.unet.device
        self.lr = cfg.lr if cfg.lr is not None else 0.00025 * cfg.batch_size
        self.injector: EmbeddingInjector | None = None
        self.scheduler = learning_scheduler(pipe.scheduler, cfg.timestep_spacing, cfg.steps_offset)

    # ---------------------------------------------------------------- one optimisation step
    def step(self, active: list[ClassState]) -> None:
        """One learner step for every active class (the paper's Algorithm, batched over classes)."""
        cfg = self.cfg
        per_sample, correct, probs = self.losses(active, backward=True)   # 6. gradient into each token row
        for i, s in enumerate(active):
            grad_norm = float(torch.nn.utils.clip_grad_norm_([s.embedding], cfg.grad_clip))
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
            self._record(s, float(per_sample[i].mean()), correct[i].tolist(), float(probs[i]), grad_norm)

    def losses(self, active: list[ClassState], grad_steps: int | None = None, backward: bool = False):
        """Steps 1-5 for the active classes: per-sample cross-entropy (classes × batch, with gradient to the
        token vectors), which samples the guide gets right, and each class's mean target probability.
        `grad_steps` overrides the config's number of final denoising steps with gradient. With `backward`
        the loss (each class's mean over its own samples, summed over classes: the classes stay independent)
        is backpropagated here and the returned cross-entropy is detached; for the x0 objective each step's
        part is backpropagated as soon as it exists, so only one step's graph is alive at a time."""
        pipe, cfg = self.pipe, self.cfg
        n = cfg.batch_size
        # 1. prompts: each class's samples alternate over the templates, each carries its own token
        prompts = [format_prompt(cfg.prompts[j % len(cfg.prompts)], s.token, s.cls.name)
                   for s in active for j in range(n)]
        cond = encode_prompts(pipe, prompts)                       # depends on the token rows (grad)
        with torch.no_grad():
            uncond = encode_prompts(pipe, [""]).expand_as(cond)
        targets = torch.tensor([s.guide_index for s in active for _ in range(n)], device=self.guide.mean.device)
        # 2. fresh noise per class and step
        latents = torch.cat([self._noise(s) for s in active]).to(self.device, cond.dtype)
        scheduler = self.scheduler
        latents = latents * scheduler.init_noise_sigma
        scheduler.set_timesteps(cfg.num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps
        # 3. all steps but the last without gradient ("gradient skipping")
        k = min(max(grad_steps or cfg.grad_steps, 1), len(timesteps))
        with torch.no_grad():
            for t in timesteps[:-k]:
                latents = scheduler.step(self._cfg_noise(latents, t, cond.detach(), uncond),
                                         t, latents).prev_sample
        # 4. the last step (the last k with grad_steps) with gradient through the conditional UNet call;
        # 5. decode and classify: the final image, or ("x0") each step's predicted clean image
        class_loss = lambda ce: ce.view(len(active), n).mean(1).sum()  # noqa: E731
        if cfg.objective == "x0":
            step_cond = cond.detach().requires_grad_(True) if backward else cond
            per_step = []
            for t in timesteps[-k:]:
                out = scheduler.step(self._cfg_noise(latents, t, step_cond, uncond), t, latents)
                logits = self.guide(decode_latents(pipe, out.pred_original_sample))
                ce = F.cross_entropy(logits, targets, reduction="none")
                if backward:                                       # into step_cond.grad, then this graph goes
                    (class_loss(ce) / k).backward()
                    ce, logits = ce.detach(), logits.detach()
                per_step.append(ce)
                latents = out.prev_sample.detach()
            if backward:                                           # once through the text encoder
                cond.backward(step_cond.grad)
            per_sample = torch.stack(per_step).mean(0)
        else:
            for t in timesteps[-k:]:
                latents = scheduler.step(self._cfg_noise(latents, t, cond, uncond), t, latents).prev_sample
            logits = self.guide(decode_latents(pipe, latents))
            per_sample = F.cross_entropy(logits, targets, reduction="none")
            if backward:
                class_loss(per_sample).backward()
                per_sample = per_sample.detach()
        correct = (logits.argmax(1) == targets).view(len(active), n)
        with torch.no_grad():
            probs = logits.float().softmax(1).gather(1, targets[:, None]).view(len(active), n).mean(1)
        return per_sample.view(len(active), n), correct, probs

    def _noise(self, s: ClassState) -> torch.Tensor:
        pipe, cfg = self.pipe, self.cfg
        h = (cfg.height or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
        w = (cfg.width or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
        g = torch.Generator().manual_seed(class_noise_seed(cfg.seed, s.cls.position, s.step))
        return torch.randn((cfg.batch_size, pipe.unet.config.in_channels, h, w), generator=g)

    def _cfg_noise(self, latents, t, cond, uncond):
        """Classifier-free guidance. The unconditional half never needs gradient, so it runs apart."""
        x = self.scheduler.scale_model_input(latents, t)
        with torch.no_grad():
            eps_u = self.pipe.unet(x, t, encoder_hidden_states=uncond).sample
        eps_c = self.pipe.unet(x, t, encoder_hidden_states=cond).sample
        return eps_u + self.cfg.guidance_scale * (eps_c - eps_u)

    # ---------------------------------------------------------------- stopping rules
    def _record(self, s: ClassState, loss: float, correct: list[bool], prob: float, grad_norm: float) -> None:
        cfg = self.cfg
        s.step += 1
        acc = sum(correct) / len(correct)
        s.history.append({"step": s.step, "loss": round(loss, 5), "accuracy": acc, "target_prob": round(prob, 5),
                          "grad_norm": round(grad_norm, 5), "token_norm": round(float(s.embedding.detach().norm()), 5)})
        s.recent_correct = (s.recent_correct + [correct])[-cfg.stop_window:]
        if loss < s.best_loss:
            s.best_loss, s.since_best = loss, 0
        else:
            s.since_best += 1
        window = [c for step in s.recent_correct for c in step]
        if len(s.recent_correct) == cfg.stop_window and all(window):
            s.stop_reason = "all correct"
        elif s.since_best >= cfg.patience and acc >= cfg.patience_min_accuracy:
            s.stop_reason = f"no loss improvement for {cfg.patience} steps"
        elif s.step >= cfg.max_steps:
            s.stop_reason = "max steps"

    # ---------------------------------------------------------------- the whole procedure
    def run(self, classes: list[LabelClass] | None = None,
            progress: Callable[[dict], None] | None = None) -> dict[int, dict]:
        """Learn every class not learned yet in out_dir; returns {position: meta} of the classes learned now."""
        classes = list(self.labels.classes if classes is None else classes)
        pending = [c for c in classes if not is_learned(self.out_dir, c)]
        if not pending:
            return {}
        queue = self.prepare(pending)
        active: list[ClassState] = []
        results: dict[int, dict] = {}
        try:
            while queue or active:
                while queue and len(active) < self.cfg.max_classes_per_step:
                    active.append(self.new_state(*queue.pop(0)))
                self.step(active)
                for s in [s for s in active if s.stop_reason]:
                    active.remove(s)
                    del self.injector.vectors[s.token_id]
                    with torch.no_grad():  # the matrix row now holds the learned vector (for later use)
                        self.pipe.text_encoder.get_input_embeddings().weight[s.token_id] = s.embedding.to(
                            self.pipe.text_encoder.dtype)
                    results[s.cls.position] = save_token(self.out_dir, s.cls, s.token, s.embedding.detach(),
                                                         self._meta(s))
                if progress:
                    progress({"done": len(results), "total": len(pending), "active": len(active),
                              "finished": [r["class"] for r in results.values()],
                              "accuracy": (sum(s.history[-1]["accuracy"] for s in active) / len(active))
                              if active else None,
                              "step": max((s.step for s in active), default=0)})
        finally:
            self.injector.remove()
        return results

    def prepare(self, classes: list[LabelClass]) -> list[tuple]:
        """Add each class's placeholder token (its row initialised from its init word), freeze the three
        models and hook the embedding layer. Returns (class, token, token id, init word, init vector) each."""
        cfg, pipe = self.cfg, self.pipe
        tokens = [self.labels.token(c) for c in classes]
        words = [cfg.init_words.get(c.name, cfg.init_word) for c in classes]
        token_ids, init_vectors = add_placeholder_tokens(pipe, tokens, words)
        for p in (*pipe.unet.parameters(), *pipe.vae.parameters(), *pipe.text_encoder.parameters()):
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            pipe.vae.enable_gradient_checkpointing()
        self.injector = EmbeddingInjector(pipe.text_encoder)
        return list(zip(classes, tokens, token_ids, words, init_vectors))

    def new_state(self, cls: LabelClass, token: str, token_id: int, word: str, vector: torch.Tensor) -> ClassState:
        """A class entering the batch: a trainable copy of its initial vector, injected under its token id."""
        emb = torch.nn.Parameter(vector.detach().float().clone())
        self.injector.vectors[token_id] = emb
        opt = torch.optim.AdamW([emb], lr=self.lr, weight_decay=0.0)
        return ClassState(cls, token, self.guide_indices[cls.position], word, emb, opt, token_id)

    def _meta(self, s: ClassState) -> dict:
        return {
            "class": s.cls.name, "position": s.cls.position, "token": s.token, "init_word": s.init_word,
            "guide": self.guide.spec, "guide_index": s.guide_index, **self.generator_info,
            "steps": s.step, "stop_reason": s.stop_reason,
            "final_loss": s.history[-1]["loss"], "final_accuracy": s.history[-1]["accuracy"],
            "seconds": round(time.time() - s.started, 2), "lr": self.lr, "config": asdict(self.cfg),
            "history": s.history,
        }


def learning_scheduler(scheduler, timestep_spacing: str | None = None, steps_offset: int | None = None):
    """The learner's own DDIM sampler, from the generator's scheduler config: DDIM's last step is a single
    deterministic UNet call (multistep samplers such as SD 1.4's default PNDM mix in earlier calls).
    clip_sample is forced off: a DDIM built from a DDPM/PNDM config would otherwise clip x0 to [-1, 1].
    `timestep_spacing` and `steps_offset` override the config's. With "leading" spacing the last step is at
    t = steps_offset (SD: 1, where x0 barely depends on the UNet's output, so its gradient carries little);
    a larger offset moves the gradient-carrying step to a noisier t where the token still shapes the image."""
    from diffusers import DDIMScheduler

    extra = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    if steps_offset is not None:
        extra["steps_offset"] = steps_offset
    return DDIMScheduler.from_config(scheduler.config, clip_sample=False, **extra)


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode to images in [0, 1]. Clamped in the forward pass only: a straight-through gradient keeps
    saturated pixels from silencing the classifier's signal."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5
    return images + (images.clamp(0, 1) - images).detach()

