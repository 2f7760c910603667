"""Sampling maths shared by learning and generation: samplers by name (diffusers schedulers built from the
generator's own scheduler config), classifier-free guidance and its cutoff, and the x0 prediction.

`make_scheduler(pipe.scheduler, "dpmsolver++")` keeps the generator's betas, timestep offset and prediction
type (ε or v), and changes only the integration rule. "pipeline" is the generator's own scheduler class (SD 1.x
and 2.1-base: PNDM, the sampler behind the paper's numbers). One entry of `scheduler.timesteps` is one UNet
call for every sampler here (PNDM repeats a timestep for its warm-up call), which is how the learner counts
`grad_steps`.
"""

from __future__ import annotations

import math

import torch

from augment.errors import UserError
from augment.settings import SCHEDULERS, check_scheduler


def guide_noise(noise_uncond: torch.Tensor, noise_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε_u + w·(ε_c − ε_u) (the learner's and DATE's; the pipeline computes the same)."""
    return noise_uncond + scale * (noise_cond - noise_uncond)


def guided_calls(num_calls: int, cutoff: float) -> int:
    """How many of a sampler's `num_calls` UNet calls (len(scheduler.timesteps): PNDM makes N+1 for N steps),
    the first ones, use classifier-free guidance under `guidance_cutoff` (at least one; all at 1.0)."""
    return num_calls if cutoff >= 1 else max(1, math.ceil(cutoff * num_calls - 1e-9))


def sampler_calls(
    base, name: str, steps: int, cutoff: float, spacing: str | None = None, offset: int | None = None
) -> tuple[int, int]:
    """(UNet calls, of which guided) of sampler `name` built from scheduler `base`'s config for `steps` steps:
    what one image costs (augment.jobs.plan counts runs with it)."""
    scheduler = make_scheduler(base, name, spacing, offset)
    scheduler.set_timesteps(steps)
    calls = len(scheduler.timesteps)
    return calls, guided_calls(calls, cutoff)


def learner_calls(base, c) -> tuple[int, int]:
    """(UNet calls, guided ones) of one learner trajectory under LearnConfig `c` (the learner evaluates both
    halves where guided, whatever the scale)."""
    return sampler_calls(
        base, c.scheduler, c.num_inference_steps, c.guidance_cutoff, c.timestep_spacing, c.steps_offset
    )


def image_calls(base, g) -> tuple[int, int]:
    """(UNet calls, guided ones) of one generated image under GenerateConfig `g` (diffusers' pipelines skip
    classifier-free guidance at a scale ≤ 1)."""
    calls, guided = sampler_calls(base, g.scheduler, g.num_inference_steps, g.guidance_cutoff)
    return calls, guided if g.guidance_scale > 1 else 0


class UNetRows:
    """Counts UNet evaluations (image rows through a UNet call) while active: a forward pre-hook on the UNet."""

    def __init__(self, unet):
        self.unet, self.rows, self.shallow, self._handle = unet, 0, 0, None

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        self.rows += int(sample.shape[0])

    def __enter__(self) -> UNetRows:
        from augment.models.feature_cache import SHALLOW_ROWS

        self._handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        self._shallow_before = SHALLOW_ROWS.get(id(self.unet), 0) - self.shallow
        return self

    def __exit__(self, *exc) -> None:
        from augment.models.feature_cache import SHALLOW_ROWS

        self._handle.remove()
        self.shallow = SHALLOW_ROWS.get(id(self.unet), 0) - self._shallow_before


class GuidanceCutoff:
    """diffusers step-end callback: after the first `guided_calls(pipe.num_timesteps, cutoff)` calls the
    pipeline drops the unconditional half of the prompt embeddings and runs the UNet on the conditional half
    alone (guidance scale 0 = off).
    diffusers' own `SDCFGCutoffCallback` keeps one row of the embeddings (`prompt_embeds[-1:]`), which is
    wrong for a batch of several prompts; this keeps the whole conditional half.
    SDXL's pipeline also doubles the pooled embeddings and the time ids for guidance (`add_text_embeds`,
    `add_time_ids`): their conditional halves are kept too (diffusers' `SDXLCFGCutoffCallback` cuts the same three,
    to one row)."""

    tensor_inputs = ["prompt_embeds"]
    sdxl_inputs = ["prompt_embeds", "add_text_embeds", "add_time_ids"]

    def __init__(self, cutoff: float):
        self.cutoff = cutoff

    @classmethod
    def inputs(cls, pipe) -> list[str]:
        """The callback's tensor inputs for `pipe`."""
        return cls.sdxl_inputs if "add_time_ids" in getattr(pipe, "_callback_tensor_inputs", ()) else cls.tensor_inputs

    def __call__(self, pipe, step_index: int, timestep, kwargs: dict) -> dict:
        last = guided_calls(pipe.num_timesteps, self.cutoff) - 1
        if step_index == last and pipe.do_classifier_free_guidance:
            for name in self.sdxl_inputs:  # add_time_ids: its rows are all equal (negative = positive size and crop
                if name in kwargs:  # ids, pipeline_stable_diffusion_xl.py:1148), so any half of them is right
                    kwargs[name] = kwargs[name].chunk(2)[1]
            pipe._guidance_scale = 0.0  # the pipeline sets it again at its next call
        return kwargs


def make_scheduler(base, name: str = "pipeline", timestep_spacing: str | None = None, steps_offset: int | None = None):
    """A fresh scheduler of kind `name` from `base`'s config (never `base` itself: schedulers hold state).

    `timestep_spacing` and `steps_offset` override the config's. DDIM is built with clip_sample off: from a
    DDPM/PNDM config it would otherwise clip x0 to [-1, 1], which Stable Diffusion's latents exceed."""
    import diffusers

    check_scheduler(name, "scheduler")  # the names augment.config admits: SAMPLERS
    extra: dict = {}
    if timestep_spacing:
        extra["timestep_spacing"] = timestep_spacing
    if steps_offset is not None:
        extra["steps_offset"] = steps_offset
    entry = SCHEDULERS[name]
    if entry is None:
        cls = type(base)
    else:
        cls, defaults = getattr(diffusers, entry[0]), entry[1]
        extra = {**defaults, **extra}
    return cls.from_config(base.config, **extra)


def predicted_x0(scheduler, sample: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor:
    """Tweedie's x̂0 from x_t and the model output, without touching the scheduler's state.

    VP schedulers (DDIM, PNDM, DPM-Solver...): x_t = √ᾱ x0 + √(1−ᾱ) ε. Sigma schedulers (Euler...,
    init_noise_sigma > 1): x_t = x0 + σ ε, `sample` being the unscaled latents."""
    kind = scheduler.config.prediction_type
    if float(scheduler.init_noise_sigma) > 1.0:
        idx = (
            scheduler.step_index
            if getattr(scheduler, "step_index", None) is not None
            else scheduler.index_for_timestep(t)
        )
        s = scheduler.sigmas[idx].to(sample.device, sample.dtype)
        if kind == "epsilon":
            return sample - s * model_output
        if kind == "v_prediction":
            return model_output * (-s / (s**2 + 1) ** 0.5) + sample / (s**2 + 1)
    else:
        a = scheduler.alphas_cumprod.to(sample.device)[int(t)].to(sample.dtype)
        if kind == "epsilon":
            return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
        if kind == "v_prediction":
            return a.sqrt() * sample - (1 - a).sqrt() * model_output
        if kind == "sample":
            return model_output
    raise UserError(f"unsupported scheduler {type(scheduler).__name__} with prediction_type {kind!r}")
