"""Discriminative class tokens (Schwartz et al. 2023): learn one new token embedding S_c per class.

For each class c a new token is added to the text encoder, initialised from a word. Each step generates
images from prompts like "A photo of S_c <name>", runs all denoising steps but the last without gradient
("gradient skipping"), the last UNet call, the VAE decode and the guide classifier with gradient, and
minimises cross-entropy towards c, updating only S_c's embedding. Two options go beyond the paper where its
recipe carries no signal (docs/toy-world.md): `grad_steps` lets the gradient run through the last k steps,
and `objective: x0` classifies each of those steps' predicted clean image x̂0 instead of the final image, each
step's gradient reaching the token through that step's UNet call only (DATE's per-step gradient, as a loss).

Many classes are learned at once: every sample carries its own class's token, the UNet runs once per step
for all of them, and a class leaves the batch when it stops (the paper's three rules), making room for the
next. The embedding matrix is never written while learning: learned vectors are injected by a forward hook
on the token-embedding layer, so every other row stays bit-identical.

Memory stays bounded at Stable Diffusion size: the UNet calls with gradient run on the whole batch, but the
VAE decode, the guide and their backward run `decode_batch` images at a time, the gradient reaching the
latents and then flowing once through the UNet calls. The token rows and their optimisers are fp32 whatever
the models' dtype; with fp16 models the loss is scaled dynamically (as torch.amp.GradScaler does) so small
gradients do not vanish in fp16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from augment.config import LearnConfig
from augment.data.tokens_io import is_learned, save_token
from augment.labels import LabelClass, LabelSet
from augment.learn.original import original_accumulation
from augment.learn.precision import LossScaler
from augment.learn.state import ClassState, class_noise_seed, improves, prompt_order, record
from augment.models.decode import decode_latents
from augment.models.feature_cache import FeatureCache
from augment.models.fingerprint import source_name
from augment.models.guides import Guide
from augment.models.prompting import (
    EmbeddingInjector,
    add_placeholder_tokens,
    encode_prompts,
    encode_uncond,
    format_prompt,
    set_token_rows,
    text_pairs,
    token_parts,
    unet_forward,
)
from augment.models.sampling import guide_noise, guided_calls, make_scheduler, predicted_x0
from augment.run.storage import out_path


class TokenLearner:
    """Learns tokens for many classes in shared UNet batches. `run()` is the whole procedure."""

    def __init__(
        self,
        pipe,
        guide: Guide,
        labels: LabelSet,
        guide_indices: list[int],
        cfg: LearnConfig,
        out_dir: str | Path,
        generator_info: dict | None = None,
    ):
        self.pipe, self.guide, self.labels, self.cfg = pipe, guide, labels, cfg
        self.guide_indices = guide_indices
        self.out_dir = out_path(out_dir)
        self.generator_info = generator_info or {}
        self.device = pipe.unet.device
        self.lr = cfg.lr if cfg.lr is not None else 0.00025 * cfg.batch_size
        self.injector: EmbeddingInjector | None = None
        self._uncond: torch.Tensor | None = None  # the unconditional prompt's embedding (constant)
        self._reuse = None  # the feature cache of the step being computed (learn.cache_interval > 1)
        self.class_steps = 0  # class-steps this learner ran (the manifest's unet_evaluations)
        self.scheduler = make_scheduler(pipe.scheduler, cfg.scheduler, cfg.timestep_spacing, cfg.steps_offset)
        self.scaler = LossScaler(pipe.unet.dtype == torch.float16)
        self.classes_per_step = cfg.max_classes_per_step
        if self.classes_per_step == "auto":
            from augment.learn.memory import auto_classes_per_step

            self.classes_per_step = auto_classes_per_step(pipe, cfg)
        self.planned_classes_per_step = self.classes_per_step  # each run() (one group) starts from it

    # ---------------------------------------------------------------- one optimisation step
    def step(self, active: list[ClassState]) -> None:
        """One learner step for every active class (the paper's Algorithm, batched over classes)."""
        cfg = self.cfg
        self.class_steps += len(active)
        while True:  # 6. gradient into each token row
            per_sample, correct, probs = self.losses(active, backward=True)
            if self.scaler.unscale([s.embedding for s in active]):
                break
            for s in active:  # fp16 overflow: same noise, half scale
                s.optimizer.zero_grad(set_to_none=True)
        for i, s in enumerate(active):
            loss = float(per_sample[i].mean())
            if cfg.keep == "best" and improves(s, loss):
                s.snapshot()  # the vector this loss was measured on
            if cfg.grad_clip_mode == "step":
                grad_norm = float(torch.nn.utils.clip_grad_norm_([s.embedding], cfg.grad_clip))
            else:  # the original's clipping happened image by image (augment.learn.original)
                grad_norm = float(s.embedding.grad.norm())
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
            record(s, cfg, loss, correct[i].tolist(), float(probs[i]), grad_norm)

    def losses(self, active: list[ClassState], grad_steps: int | None = None, backward: bool = False):
        """Steps 1-5 for the active classes: per-sample cross-entropy (classes × batch, with gradient to the
        token vectors), which samples the guide gets right, and each class's mean target probability.
        `grad_steps` overrides the config's number of final UNet calls with gradient. With `backward` the loss
        (each class's mean over its own samples, summed over classes: the classes stay independent), times
        the loss scale, is backpropagated here and the returned cross-entropy is detached: decode, guide and
        their backward run `decode_batch` images at a time, then the gradient flows once through the UNet
        calls; for the x0 objective each step's part is backpropagated as soon as it exists."""
        pipe, cfg = self.pipe, self.cfg
        n = cfg.batch_size
        # 1. prompts: each class's samples alternate over the templates, each carries its own token
        prompts = [
            format_prompt(cfg.prompts[j % len(cfg.prompts)], s.token, s.cls.name)
            for s in active
            for j in prompt_order(cfg.seed, s.cls.position, s.step, n, cfg.shuffle_prompts)
        ]
        cond = encode_prompts(pipe, prompts)  # depends on the token rows (grad)
        if self._uncond is None:  # the empty prompt holds no learned token: encoded once, reused every step
            with torch.no_grad():
                self._uncond = encode_uncond(pipe)
        uncond = self._uncond.expand_as(cond)
        targets = torch.tensor([s.guide_index for s in active for _ in range(n)], device=self.guide.mean.device)
        # 2. fresh noise per class and step (or the same noise every step: `noise: fixed`)
        latents = torch.cat([self._noise(s) for s in active]).to(self.device, cond.dtype)
        reuse = FeatureCache(pipe.unet, cfg.cache_interval, cfg.cache_branch) if cfg.cache_interval > 1 else None
        with reuse or contextlib.nullcontext():  # a fresh cache: this step's trajectories
            self._reuse = reuse
            try:
                return self._trajectories(active, cond, uncond, targets, latents, n, grad_steps, backward)
            finally:
                self._reuse = None

    def _trajectories(self, active, cond, uncond, targets, latents, n: int, grad_steps, backward: bool):
        """The sampling chain, its gradient calls, decode and classify (see `losses`)."""
        cfg = self.cfg
        scheduler = self.scheduler
        scheduler.set_timesteps(cfg.num_inference_steps, device=self.device)
        latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps  # one entry = one UNet call
        guided = guided_calls(len(timesteps), cfg.guidance_cutoff)  # calls with CFG, from the first
        # 3. all calls but the last k without gradient ("gradient skipping")
        k = min(max(grad_steps or cfg.grad_steps, 1), len(timesteps))
        first = len(timesteps) - k  # index of the first call with gradient
        with torch.no_grad():
            for i, t in enumerate(timesteps[:-k]):
                noise = self._cfg_noise(latents, t, cond.detach(), uncond, i < guided)
                latents = scheduler.step(noise, t, latents).prev_sample
        # 4. the last k calls with gradient through the conditional UNet call;
        # 5. decode and classify: the final image, or ("x0") each call's predicted clean image
        weight = self.scaler.scale / n  # each class: mean over its own samples
        exact = self._reuse.exact() if self._reuse is not None else contextlib.nullcontext()
        with exact:  # the calls with gradient: the whole UNet, always
            return self._gradient_calls(active, cond, uncond, targets, n, latents, timesteps, guided, k, first,
                                        weight, backward)  # fmt: skip

    def _gradient_calls(self, active, cond, uncond, targets, n, latents, timesteps, guided, k, first, weight, backward):
        cfg, scheduler = self.cfg, self.scheduler
        if cfg.objective == "x0":
            step_cond = cond.detach().requires_grad_(True) if backward else cond
            per_step = []
            for i, t in enumerate(timesteps[-k:], first):
                noise = self._cfg_noise(latents, t, step_cond, uncond, i < guided)
                x0 = predicted_x0(scheduler, latents, noise, t)
                ce, logits = self._classify(x0, targets, backward, weight / k)
                per_step.append(ce)
                latents = scheduler.step(noise.detach() if backward else noise, t, latents).prev_sample.detach()
            if backward:  # once through the text encoder
                cond.backward(step_cond.grad)
            per_sample = torch.stack(per_step).mean(0)
        else:
            for i, t in enumerate(timesteps[-k:], first):
                latents = scheduler.step(self._cfg_noise(latents, t, cond, uncond, i < guided), t, latents).prev_sample
            per_image = (active, weight) if backward and cfg.grad_clip_mode == "original" else None
            per_sample, logits = self._classify(latents, targets, backward, weight, per_image)
        correct = (logits.argmax(1) == targets).view(len(active), n)
        with torch.no_grad():
            probs = logits.float().softmax(1).gather(1, targets[:, None]).view(len(active), n).mean(1)
        return per_sample.view(len(active), n), correct, probs

    def _classify(self, latents: torch.Tensor, targets: torch.Tensor, backward: bool, weight: float, per_image=None):
        """Decode, classify and cross-entropy, `decode_batch` images at a time. With `backward` each chunk's
        weighted loss is backpropagated into the latents at once (its decode graph freed), then the
        accumulated gradient goes once through whatever produced `latents`; returns detached (ce, logits).
        With `per_image` (the active classes and the loss weight: `grad_clip_mode: original`) it goes
        through once per image slot instead, and each token's gradient is the original's accumulation."""
        clamp = self.cfg.clamp
        if not backward:
            logits = self.guide(decode_latents(self.pipe, latents, clamp))
            return F.cross_entropy(logits, targets, reduction="none"), logits
        leaf = latents.detach().requires_grad_(True)
        ces, all_logits = [], []
        for lo in range(0, len(leaf), max(self.cfg.decode_batch, 1)):
            hi = lo + max(self.cfg.decode_batch, 1)
            logits = self.guide(decode_latents(self.pipe, leaf[lo:hi], clamp))
            ce = F.cross_entropy(logits, targets[lo:hi], reduction="none")
            (ce.sum() * weight).backward()
            ces.append(ce.detach())
            all_logits.append(logits.detach())
        if latents.requires_grad and per_image is not None:
            self._per_image_backward(latents, leaf.grad, *per_image)
        elif latents.requires_grad:
            latents.backward(leaf.grad)
        return torch.cat(ces), torch.cat(all_logits)

    def _per_image_backward(self, latents: torch.Tensor, grad: torch.Tensor, active: list[ClassState], weight: float):
        """Image slot j of every class through the UNet calls on its own (class-major rows: class i's image j is
        row i·n + j), each token's per-image gradients then combined as the code behind the paper combines them
        (augment.learn.original), in slot order (`prompt_order` shuffles which prompt a slot gets)."""
        n = self.cfg.batch_size
        rows = grad.view(len(active), n, *grad.shape[1:])
        per_class: list[list[torch.Tensor]] = [[] for _ in active]
        for j in range(n):
            only_j = torch.zeros_like(rows)
            only_j[:, j] = rows[:, j]
            latents.backward(only_j.view_as(grad), retain_graph=j < n - 1)
            for grads, s in zip(per_class, active):
                grads.append(s.embedding.grad.detach() / weight)  # this image's own cross-entropy gradient
                s.embedding.grad = None
        for grads, s in zip(per_class, active):
            s.embedding.grad = original_accumulation(grads, self.cfg.grad_clip) * self.scaler.scale

    def _noise(self, s: ClassState) -> torch.Tensor:
        pipe, cfg = self.pipe, self.cfg
        h = (cfg.height or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
        w = (cfg.width or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
        step = 0 if cfg.noise == "fixed" else s.step
        g = torch.Generator().manual_seed(class_noise_seed(cfg.seed + s.noise_offset, s.cls.position, step))
        return torch.randn((cfg.batch_size, pipe.unet.config.in_channels, h, w), generator=g)

    def _cfg_noise(self, latents, t, cond, uncond, guided: bool = True):
        """Classifier-free guidance (or, past `guidance_cutoff`, the conditional call alone). The
        unconditional half never needs gradient, so it runs apart."""
        x = self.scheduler.scale_model_input(latents, t)
        reuse = self._reuse
        uncond_stream = reuse.stream("uncond") if reuse is not None else contextlib.nullcontext()
        cond_stream = reuse.stream("cond") if reuse is not None else contextlib.nullcontext()
        if not guided:
            with cond_stream:
                return unet_forward(self.pipe, x, t, cond)
        with torch.no_grad(), uncond_stream:
            eps_u = unet_forward(self.pipe, x, t, uncond)
        with cond_stream:
            eps_c = unet_forward(self.pipe, x, t, cond)
        return guide_noise(eps_u, eps_c, self.cfg.guidance_scale)

    # ---------------------------------------------------------------- the whole procedure
    def run(
        self,
        classes: list[LabelClass] | None = None,
        progress: Callable[[dict], None] | None = None,
        checkpoint=None,
        overwrite: bool = False,
    ) -> dict[int, dict]:
        """Learn every class of `classes` (one planned group: augment.jobs.learn.plan_groups) not learned yet
        in out_dir; returns {position: meta} of the classes learned now. Each call starts afresh (loss scale,
        classes per step), so a group's tokens do not depend on the groups this learner ran before.

        With an `augment.learn.resume.LearnerCheckpoint` the state is saved every `checkpoint_every` steps and a
        usable checkpoint is restored first: the run then continues with the same batches as if uninterrupted."""
        classes = list(self.labels.classes if classes is None else classes)
        self.classes_per_step, self.scaler = self.planned_classes_per_step, LossScaler(self.scaler.enabled)
        pending = [c for c in classes if not is_learned(self.out_dir, c)]
        restored = checkpoint.load(overwrite) if checkpoint is not None else None
        if restored is not None and not self._compatible(restored[0], classes, pending):
            checkpoint.note, restored = "learner checkpoint does not match this group's classes: not used", None
        if not pending and restored is None:
            if checkpoint is not None:
                checkpoint.clear()
            return {}
        active: list[ClassState] = []
        if restored is None:
            queue = self.prepare(pending)
        else:
            state, tensors = restored
            by_pos = {c.position: c for c in classes}
            order = [e["position"] for e in state["active"]] + state["queue"]
            entries = self.prepare([by_pos[p] for p in order])
            active = [self.restore_state(entry, saved, tensors) for entry, saved in zip(entries, state["active"])]
            queue = entries[len(active) :]
            self.classes_per_step = state["classes_per_step"]
            self.scaler.scale, self.scaler.good = state["loss_scale"], state["loss_scale_good"]
        results: dict[int, dict] = {}
        every = self.cfg.checkpoint_every
        steps = 0
        try:
            while queue or active:
                while queue and len(active) < self.classes_per_step:
                    active.append(self.new_state(*queue.pop(0)))
                self.step(active)
                steps += 1
                for s in [s for s in active if s.stop_reason]:
                    active.remove(s)
                    del self.injector.vectors[s.token_id]
                    kept = s.kept(self.cfg.keep)
                    set_token_rows(self.pipe, s.token_id, kept)  # the matrix row(s) now hold it (for later use)
                    results[s.cls.position] = save_token(
                        self.out_dir, s.cls, s.token, kept, self._meta(s), token_parts(self.pipe)
                    )
                if checkpoint is not None and every and (queue or active) and steps % every == 0:
                    checkpoint.save(active, queue, self.scaler, self.classes_per_step)
                if progress:
                    progress(
                        {
                            "done": len(results),
                            "total": len(pending),
                            "active": len(active),
                            "finished": [r["class"] for r in results.values()],
                            "accuracy": (sum(s.history[-1]["accuracy"] for s in active) / len(active))
                            if active
                            else None,
                            "step": max((s.step for s in active), default=0),
                        }
                    )
        finally:
            if self.injector is not None:
                self.injector.remove()
        if checkpoint is not None:
            checkpoint.clear()
        return results

    @staticmethod
    def _compatible(state: dict, classes: list[LabelClass], pending: list[LabelClass]) -> bool:
        """A checkpoint fits when it names only this group's classes and covers every pending one."""
        named = [e["position"] for e in state["active"]] + state["queue"]
        return set(named) <= {c.position for c in classes} and {c.position for c in pending} <= set(named)

    def restore_state(self, entry: tuple, saved: dict, tensors: dict[str, torch.Tensor]) -> ClassState:
        """A class as the checkpoint left it: token row, AdamW moments and the stopping bookkeeping."""
        s = self.new_state(*entry)
        p = saved["position"]
        with torch.no_grad():
            s.embedding.copy_(tensors[f"{p}.embedding"].to(s.embedding.device))
        if saved["optimizer_step"] > 0:
            s.optimizer.state[s.embedding] = {
                "step": torch.tensor(saved["optimizer_step"]),
                "exp_avg": tensors[f"{p}.exp_avg"].to(s.embedding.device),
                "exp_avg_sq": tensors[f"{p}.exp_avg_sq"].to(s.embedding.device),
            }
        s.step, s.best_loss, s.since_best = saved["step"], saved["best_loss"], saved["since_best"]
        s.recent_correct, s.history = saved["recent_correct"], saved["history"]
        s.stop_reason, s.elapsed = saved["stop_reason"], saved["seconds"]
        s.best_step, s.noise_offset = saved.get("best_step", 0), saved.get("noise_offset", 0)
        if f"{p}.best" in tensors:
            s.best_vector = tensors[f"{p}.best"].to(s.embedding.device).float()
        return s

    def prepare(self, classes: list[LabelClass]) -> list[tuple]:
        """Add each class's placeholder token (its row initialised from its init word), freeze the three
        models and hook the embedding layer. Returns (class, token, token id, init word, init vector) each."""
        cfg, pipe = self.cfg, self.pipe
        if not classes:
            return []
        tokens = [self.labels.token(c) for c in classes]
        words = [cfg.init_words.get(c.name, cfg.init_word) for c in classes]
        token_ids, init_vectors = add_placeholder_tokens(pipe, tokens, words)
        for model in (pipe.unet, pipe.vae, *(te for _, te in text_pairs(pipe))):  # frozen, in eval mode (dropout
            model.eval().requires_grad_(False)  # off); gradient checkpointing does not depend on it (diffusers ≥ 0.32)
        if cfg.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            pipe.vae.enable_gradient_checkpointing()
        self.injector = EmbeddingInjector(pipe)
        return list(zip(classes, tokens, token_ids, words, init_vectors))

    def new_state(self, cls: LabelClass, token: str, token_id: int, word: str, vector: torch.Tensor) -> ClassState:
        """A class entering the batch: a trainable copy of its initial vector, injected under its token id."""
        emb = torch.nn.Parameter(vector.detach().float().clone())
        self.injector.vectors[token_id] = emb
        opt = torch.optim.AdamW([emb], lr=self.lr, weight_decay=self.cfg.weight_decay)
        return ClassState(cls, token, self.guide_indices[cls.position], word, emb, opt, token_id)

    def _meta(self, s: ClassState) -> dict:
        return {
            "class": s.cls.name,
            "position": s.cls.position,
            "token": s.token,
            "init_word": s.init_word,
            "guide": source_name(self.guide.spec),
            "guide_index": s.guide_index,
            "guide_preprocess": {k: v for k, v in self.guide.describe().items() if k != "spec"},
            **self.generator_info,
            "steps": s.step,
            "stop_reason": s.stop_reason,
            "kept": self.cfg.keep,  # which vector the token file holds (augment.learn.state)
            "kept_step": s.step if self.cfg.keep == "last" or s.best_vector is None else s.best_step,
            "best_loss": round(s.best_loss, 5),
            "final_loss": s.history[-1]["loss"],  # the last step's, whatever was kept
            "final_accuracy": s.history[-1]["accuracy"],
            "seconds": round(s.seconds(), 2),
            "lr": self.lr,
            "classes_per_step": self.classes_per_step,
            "config": asdict(self.cfg),
            "history": s.history,
        }
