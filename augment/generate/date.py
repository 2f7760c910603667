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

import numpy as np
import torch

from augment.config import DateOptions
from augment.models.decode import decode_latents
from augment.models.generator import require_sd
from augment.models.sampling import guide_noise, guided_calls, predicted_x0


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
            noise = noise_cond if noise_uncond is None else guide_noise(noise_uncond[sl], noise_cond, guidance_scale)
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
    require_sd(pipe, "DATE refinement (--refine date)", "refine")  # its calls are SD-1.x/2.x's
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
                    noise = guide_noise(noise_uncond, noise, guidance_scale)
            else:
                embeds = torch.cat([uncond, cond]) if do_cfg else cond
                noise = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
                if do_cfg:
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = guide_noise(noise_uncond, noise_cond, guidance_scale)
            latents = pipe.scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
    # 4. Decode like the pipeline
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    return np.asarray(pipe.image_processor.postprocess(image, output_type="np"), dtype=np.float32)
