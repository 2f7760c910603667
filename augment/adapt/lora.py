"""LoRA on the generator from a label set's real shots: the peers' route (DataDream, ECCV'24; BOB, CVPR'26).

What a step does, as DataDream's trainer (ExplainableML/DataDream DataDream/datadream.py:770-833, itself
diffusers' examples/dreambooth/train_dreambooth_lora.py): a batch of shots, each captioned `lora.caption` with its
class name; the short side resized to the resolution (bilinear) and a random square crop; VAE latents (sampled,
times the scaling factor); t ~ U{0..T-1}; the plain DDPM forward noising; MSE between the UNet's prediction and
its target (ε, or v for v-prediction generators); AdamW on the LoRA parameters alone (UNet to_q/k/v/out.0 and
the text encoder's q/k/v/out_proj, rank = alpha = 16, gaussian init: datadream.py:470-487), clipped at 1.0.

Deterministic where DataDream is not (it sets no seed): the adapters' init comes from `lora.seed`; step s's
batch from epoch s // steps_per_epoch's permutation and its crops, latents' noise, timesteps and noise from a
generator seeded by (seed, s). A resumed run therefore continues with the very batches an uninterrupted one
would have drawn, and the same seed gives the same adapter bytes (on the same device and thread count).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from augment.data.images import Split
from augment.settings import LoraConfig

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # every Attention block: self- and cross-attention
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def steps_for(config: LoraConfig, images: int) -> int:
    """Optimizer steps of a run: epochs × ⌈images / batch⌉ (DataDream's max_train_steps), at most max_steps."""
    steps = config.epochs * math.ceil(images / config.batch_size)
    return min(steps, config.max_steps) if config.max_steps is not None else steps


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 0x10A]).generate_state(1)[0])


@dataclass
class TrainerState:
    step: int
    losses: list[float]  # each step's loss


class LoraTrainer:
    """Adds LoRA adapters to `pipe`'s UNet (and text encoder) and trains them on `images`' shots."""

    def __init__(self, pipe, images: Split, names: list[str], config: LoraConfig, resolution: int):
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig as PeftLora

        self.pipe, self.images, self.names, self.config, self.resolution = pipe, images, names, config, resolution
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.models = [pipe.unet] + ([pipe.text_encoder] if config.text_encoder else [])
        for model in (pipe.unet, pipe.text_encoder, pipe.vae):
            model.requires_grad_(False)
        torch.manual_seed(config.seed)  # the gaussian init of the adapters' A matrices
        for model, targets in zip(self.models, (UNET_TARGETS, TEXT_TARGETS)):
            model.add_adapter(PeftLora(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                       target_modules=targets))  # fmt: skip
            model.train()  # (dropout is 0 in both; transformers' checkpointing needs train mode)
        cast_training_params(self.models, dtype=torch.float32)  # frozen weights keep the run's dtype
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            if config.text_encoder:
                pipe.text_encoder.gradient_checkpointing_enable()
        self.params = [p for m in self.models for _, p in sorted(m.named_parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=config.weight_decay)  # fmt: skip
        self.total = steps_for(config, len(images))
        self.per_epoch = math.ceil(len(images) / config.batch_size)
        self.lr_schedule = self._schedule()
        self.ids = pipe.tokenizer(
            [config.caption.format(name=n) for n in names],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids  # one caption per class

    def _schedule(self):
        from diffusers.optimization import get_scheduler

        name = "cosine" if self.config.lr_schedule == "cosine" else "constant_with_warmup"
        return get_scheduler(name, self.optimizer, num_warmup_steps=self.config.warmup_steps,
                             num_training_steps=self.total)  # fmt: skip

    # ------------------------------------------------------------------ state (augment.jobs.adapt checkpoints it)
    def adapter_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """{"unet": ..., "text_encoder": ...}: the adapters' weights as peft names them."""
        from peft.utils import get_peft_model_state_dict

        parts = {"unet": self.pipe.unet, "text_encoder": self.pipe.text_encoder}
        return {k: get_peft_model_state_dict(m) for k, m in parts.items() if m in self.models}

    def load_adapter_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        from peft.utils import set_peft_model_state_dict

        parts = {"unet": self.pipe.unet, "text_encoder": self.pipe.text_encoder}
        for key, values in state.items():
            set_peft_model_state_dict(parts[key], values)
        from diffusers.training_utils import cast_training_params

        cast_training_params(self.models, dtype=torch.float32)

    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])

    # ------------------------------------------------------------------ training
    def batch_indices(self, step: int) -> np.ndarray:
        epoch, j = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.images))
        return order[j * self.config.batch_size : (j + 1) * self.config.batch_size]

    def pixels(self, indices: np.ndarray, g: torch.Generator) -> torch.Tensor:
        """The batch's images: short side to the resolution, a random square crop, in [-1, 1]."""
        r, out = self.resolution, []
        for i in indices:
            img = self.images.images(int(i)).convert("RGB")
            w, h = img.size
            s = r / min(w, h)
            img = img.resize((max(r, round(w * s)), max(r, round(h * s))), Image.BILINEAR)
            w, h = img.size
            x = int(torch.randint(0, w - r + 1, (1,), generator=g))
            y = int(torch.randint(0, h - r + 1, (1,), generator=g))
            arr = np.asarray(img.crop((x, y, x + r, y + r)), dtype=np.float32) / 127.5 - 1.0
            out.append(torch.from_numpy(arr).permute(2, 0, 1))
        return torch.stack(out)

    def step(self, step: int) -> float:
        """One optimizer step (the `step`-th of the run); returns its loss."""
        pipe, cfg = self.pipe, self.config
        g = torch.Generator().manual_seed(step_seed(cfg.seed, step))
        idx = self.batch_indices(step)
        pixels = self.pixels(idx, g).to(self.device, self.dtype)
        with torch.no_grad():
            posterior = pipe.vae.encode(pixels).latent_dist
            eps = torch.randn(posterior.mean.shape, generator=g).to(self.device, self.dtype)
            latents = (posterior.mean + posterior.std * eps) * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g).to(self.device, self.dtype)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        t = t.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        ids = self.ids[torch.as_tensor(self.images.labels[idx])].to(self.device)
        context = pipe.text_encoder(ids)[0].to(self.dtype)
        pred = pipe.unet(noisy, t, context).sample
        kind = self.noise_scheduler.config.prediction_type
        target = noise if kind == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def run(self, state: TrainerState, save: Callable[[TrainerState], None], report=None) -> TrainerState:
        """Steps from `state.step` to the end, `save(state)` every checkpoint_every steps."""
        every = self.config.checkpoint_every
        while state.step < self.total:
            state.losses.append(round(self.step(state.step), 6))
            state.step += 1
            if report is not None:
                report(state)
            if every and state.step % every == 0 and state.step < self.total:
                save(state)
        return state
