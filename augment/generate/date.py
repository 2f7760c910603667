"""DATE refinement (Diffusion Adaptive Text Embedding, Na et al. 2025, github.com/aailab-kaist/DATE).

While sampling, at chosen steps the prompt's text embedding c (the encoder hidden states, learned token
included) takes a normalised gradient step that raises a reward of the predicted clean image:

    x̂0 = x0-prediction from x_t and the guided noise prediction ε_u + w·(ε_c(c) − ε_u)
    loss = −log softmax(guide(decode(x̂0)))[target] + prior_weight · mean((c − c_orig)²)   (per image)
    c ← c − step_size · ∇_c loss / ‖∇_c loss‖                                              (per image)

then the step x_t → x_{t−1} uses the updated c. Following DATE's `pipeline_stable_diffusion_date_clip.py`:
the update accumulates over steps (or restarts from c_orig with `from_original`, their `init_org`), the
unconditional half is not refined, and the last sampling step is never refined. The reward is our guide's
log-probability of the image's class, where DATE uses CLIP or ImageReward scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from augment.errors import UserError
from augment.generate.sampling import guided_calls, predicted_x0
from augment.models.decode import decode_latents

METHODS = ("date",)


@dataclass(frozen=True)
class DateOptions:
    """`generate.refine_options` when `generate.refine: date`. Defaults are DATE's (generate_date_*.py)."""

    step_size: float = 0.1  # η of the normalised step on c (DATE --lr_upt_prompt)
    updates: int = 1  # gradient updates of c per refined step (--num_upt_prompt)
    every: int = 1  # refine sampling steps i with i % every == 0 (--skip_freq) ...
    start: float = 0.0  # ... and start ≤ i / steps < stop (--skip_intervals, as fractions)
    stop: float = 1.0
    prior_weight: float = 0.0  # pull towards the prompt's own embedding, inside the loss (--weight_prior)
    from_original: bool = False  # each update starts from c_orig instead of accumulating (--init_org)
    batch: int = 0  # images per gradient pass (UNet call, decode, guide, backward); 0 = all at
    # once. Bounds DATE's memory at 512 px (not DATE's: it samples one image)
    checkpointing: bool = False  # UNet and VAE gradient checkpointing during the updates

    @classmethod
    def parse(cls, options: dict[str, Any]) -> DateOptions:
        """Check keys, types and ranges; UserError (one line) on anything wrong."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise UserError(
                f"generate.refine_options: unknown key(s) {', '.join(unknown)} for DATE; known: {', '.join(fields)}"
            )
        values = {}
        for key, value in options.items():
            kind = type(getattr(cls, key))
            ok = (
                isinstance(value, bool)
                if kind is bool
                else (isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool))
            )
            if not ok:
                raise UserError(f"generate.refine_options.{key} must be {kind.__name__}, got {value!r}")
            values[key] = kind(value)
        opts = cls(**values)
        if opts.step_size < 0 or opts.prior_weight < 0:
            raise UserError("generate.refine_options: step_size and prior_weight must be ≥ 0")
        if opts.updates < 0 or opts.every < 1 or opts.batch < 0:
            raise UserError("generate.refine_options: updates and batch must be ≥ 0 and every ≥ 1")
        if not 0.0 <= opts.start <= opts.stop <= 1.0:
            raise UserError(f"generate.refine_options: need 0 ≤ start ≤ stop ≤ 1, got {opts.start}, {opts.stop}")
        return opts

    def refined_steps(self, num_steps: int) -> list[int]:
        """Indices of the sampling steps whose conditioning is refined (never the last one)."""
        if self.step_size == 0 or self.updates == 0:
            return []
        return [
            i
            for i in range(num_steps - 1)
            if i % self.every == 0 and self.start * num_steps <= i < self.stop * num_steps
        ]


def refine_options(method: str | None, options: dict[str, Any]) -> DateOptions | None:
    """The parsed options of `generate.refine` (None: no refinement); UserError on a bad method or option."""
    if method is None:
        return None
    if method not in METHODS:
        raise UserError(f"generate.refine must be one of {', '.join(METHODS)} (or null), got {method!r}")
    if not isinstance(options, dict):
        raise UserError(f"generate.refine_options must be a mapping, got {options!r}")
    return DateOptions.parse(options)


@contextlib.contextmanager
def _frozen(*modules: torch.nn.Module):
    """No parameter gradients inside (the only gradient wanted is w.r.t. the conditioning); restored after."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def class_log_prob(pipe, guide, x0: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reward: the guide's log-probability of each image's target class, on the decoded x̂0, clamped to
    [0, 1] as the learner's and the pipeline's images are (straight-through: augment.models.decode)."""
    image = decode_latents(pipe, x0)
    logp = guide(image).float().log_softmax(1)
    return logp[torch.arange(len(targets), device=logp.device), targets]


def date_update(
    pipe,
    guide,
    targets: torch.Tensor,
    latents: torch.Tensor,
    model_input: torch.Tensor,
    t,
    cond: torch.Tensor,
    original: torch.Tensor,
    noise_uncond: torch.Tensor | None,
    guidance_scale: float,
    opts: DateOptions,
) -> torch.Tensor:
    """One DATE update of the conditional text embedding (module docstring); returns the new c, detached.
    Images are independent here, so the gradient is taken `opts.batch` images at a time (bounded memory)."""
    n = len(cond)
    size = opts.batch or n
    grads = []
    for lo in range(0, n, size):
        sl = slice(lo, lo + size)
        with torch.enable_grad():
            c = cond[sl].detach().requires_grad_(True)
            noise_cond = pipe.unet(model_input[sl], t, encoder_hidden_states=c, return_dict=False)[0]
            noise = (
                noise_cond
                if noise_uncond is None
                else noise_uncond[sl] + guidance_scale * (noise_cond - noise_uncond[sl])
            )
            x0 = predicted_x0(pipe.scheduler, latents[sl], noise, t)
            loss = -class_log_prob(pipe, guide, x0, targets[sl])
            if opts.prior_weight:
                loss = loss + opts.prior_weight * (c - original[sl]).float().pow(2).mean(dim=(1, 2))
            (grad,) = torch.autograd.grad(loss.sum(), c)
        grads.append(grad)
    grad = torch.cat(grads).float()
    grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    base = original if opts.from_original else cond
    return (base.float() - opts.step_size * grad).to(cond.dtype).detach()


@contextlib.contextmanager
def _checkpointing(on: bool, *modules: torch.nn.Module):
    """Gradient checkpointing on the diffusers models inside (restored after)."""
    if not on:
        yield
        return
    models = [m for m in modules if hasattr(m, "enable_gradient_checkpointing")]
    before = [m.is_gradient_checkpointing for m in models]
    for m in models:
        m.enable_gradient_checkpointing()
    try:
        yield
    finally:
        for m, flag in zip(models, before):
            if not flag:
                m.disable_gradient_checkpointing()


@torch.no_grad()
def sample_date(
    pipe,
    prompts: list[str],
    generators: list[torch.Generator],
    num_inference_steps: int,
    guidance_scale: float,
    height: int | None,
    width: int | None,
    guide,
    targets: list[int],
    opts: DateOptions,
    guidance_cutoff: float = 1.0,
) -> np.ndarray:
    """Stable Diffusion sampling as `pipe(...)` does it (same latents from the same generators, CFG, the
    pipeline's scheduler), with DATE updates of the prompt embeddings; N×H×W×3 floats in [0, 1].
    Only the first calls (`guidance_cutoff` of them, as `sampling.guided_calls` counts) use classifier-free
    guidance."""
    # 1. Encode the prompts (learned tokens are already in the tokenizer / text encoder)
    device = pipe._execution_device
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    do_cfg = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    cond, uncond = pipe.encode_prompt(prompts, device, 1, do_cfg)
    original = cond.clone()
    # 2. Timesteps, initial latents (same draws as the pipeline), scheduler kwargs
    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = pipe.scheduler.timesteps
    latents = pipe.prepare_latents(
        len(prompts), pipe.unet.config.in_channels, height, width, cond.dtype, device, generators
    )
    extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
    refined = set(opts.refined_steps(len(timesteps)))
    target = torch.tensor(targets, device=next(guide.parameters()).device) if refined else None
    # 3. Denoising loop: at refined steps, update c on the reward of x̂0, then step with the new c
    with (
        _frozen(pipe.unet, pipe.vae, pipe.text_encoder, guide),
        _checkpointing(opts.checkpointing, pipe.unet, pipe.vae),
    ):
        guided = guided_calls(len(timesteps), guidance_cutoff)
        for i, t in enumerate(timesteps):
            if i == guided:
                do_cfg = False
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = pipe.scheduler.scale_model_input(model_input, t)
            if i in refined:
                half = model_input[len(prompts) :] if do_cfg else model_input
                noise_uncond = (
                    pipe.unet(model_input[: len(prompts)], t, encoder_hidden_states=uncond, return_dict=False)[0]
                    if do_cfg
                    else None
                )
                for _ in range(opts.updates):
                    cond = date_update(
                        pipe, guide, target, latents, half, t, cond, original, noise_uncond, guidance_scale, opts
                    )
                noise = pipe.unet(half, t, encoder_hidden_states=cond, return_dict=False)[0]
                if do_cfg:
                    noise = noise_uncond + guidance_scale * (noise - noise_uncond)
            else:
                embeds = torch.cat([uncond, cond]) if do_cfg else cond
                noise = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
                if do_cfg:
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = pipe.scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
    # 4. Decode like the pipeline
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    return np.asarray(pipe.image_processor.postprocess(image, output_type="np"), dtype=np.float32)
