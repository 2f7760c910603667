"""Feature reuse between adjacent denoising steps (DeepCache: Ma et al., CVPR 2024), written here on diffusers'
`UNet2DConditionModel` for the SD-1.x/2.x UNets.

Every `interval`-th call of a stream is a full UNet call, and the input of up block `-(branch+1)` (the deep
part's result) is kept; the calls in between compute only the shallow branch — conv_in, down blocks
`0..branch`, then up blocks `-(branch+1)..-1` on the kept deep features with the fresh skip connections — and
the post-processing. The DeepCache package (0.1.1) does the same by patching every block, but keys its cache by
block alone and finds the step with `scheduler.timesteps.index(t)`: wrong where PNDM repeats a timestep, where
the learner calls the UNet twice per step (unconditional and conditional apart), and where the guidance cutoff
halves the batch. Here a cache has named streams (`stream("uncond")`), each counting its own calls, and a
kept batch larger than the call's (the cutoff dropped the unconditional half, which diffusers puts first)
gives its last rows.

Deterministic: the same calls give the same bytes. Calls under `exact()` (the learner's gradient calls) always
run the full UNet and keep nothing. Not for UNets with class, added-condition or image-hint embeddings, or sizes
that need diffusers' forwarded upsample size: `enable` refuses them (UserError).
"""

from __future__ import annotations

import contextlib
import types

import torch

from augment.errors import UserError

SHALLOW_ROWS: dict[
    int, int
] = {}  # id(unet) → image rows that took the shallow branch (augment.models.sampling.UNetRows)


def shallow_rows(calls: int, interval: int, rows_of=lambda i: 1, exact_from: int | None = None) -> int:
    """Of a stream of `calls` calls (call i evaluating `rows_of(i)` rows), the rows that take the shallow branch:
    every call but each `interval`-th; calls from `exact_from` on run whole (the learner's gradient calls)."""
    last = calls if exact_from is None else min(calls, exact_from)
    return sum(rows_of(i) for i in range(last) if interval > 1 and i % interval)


class FeatureCache:
    def __init__(self, unet, interval: int, branch: int = 0):
        if interval < 1:
            raise UserError(f"cache interval must be ≥ 1, got {interval}", "cache_interval")
        if not 0 <= branch < len(unet.down_blocks) - 1:
            raise UserError(f"cache branch must be in 0..{len(unet.down_blocks) - 2}, got {branch}", "cache_branch")
        for name in ("class_embedding", "add_embedding", "encoder_hid_proj"):
            if getattr(unet, name, None) is not None:
                raise UserError(f"feature caching does not handle a UNet with {name}")
        if getattr(unet.config, "center_input_sample", False):
            raise UserError("feature caching does not handle a UNet with center_input_sample")
        self.unet, self.interval, self.branch = unet, interval, branch
        self._forward = None
        self._exact = False
        self.reset()

    # ------------------------------------------------------------ driving
    def reset(self) -> None:
        """A new trajectory: every stream starts again at its call 0 (a full call)."""
        self._calls: dict[str, int] = {}
        self._kept: dict[str, torch.Tensor] = {}
        self._stream = "main"
        self.full_calls = self.shallow_calls = 0

    @contextlib.contextmanager
    def stream(self, name: str):
        """The calls inside count as stream `name` (the learner's unconditional and conditional calls)."""
        previous, self._stream = self._stream, name
        try:
            yield
        finally:
            self._stream = previous

    @contextlib.contextmanager
    def exact(self):
        """Full UNet calls that keep nothing and count nothing (calls with gradient)."""
        previous, self._exact = self._exact, True
        try:
            yield
        finally:
            self._exact = previous

    def enable(self) -> FeatureCache:
        if self._forward is None and self.interval > 1:
            self._forward = self.unet.forward
            self.unet.forward = types.MethodType(_cached_forward(self), self.unet)
        return self

    def disable(self) -> None:
        if self._forward is not None:
            del self.unet.forward  # the class's forward again
            self._forward = None

    def __enter__(self) -> FeatureCache:
        return self.enable()

    def __exit__(self, *exc) -> None:
        self.disable()

    # ------------------------------------------------------------ the two kinds of call
    def _full(self, sample, timestep, encoder_hidden_states, keep: bool, **kwargs):
        kept = {}
        handle = None
        if keep:
            target = self.unet.up_blocks[-(self.branch + 1)]

            def grab(module, args, kw):
                kept["h"] = kw["hidden_states"].detach()

            handle = target.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = self._forward(sample, timestep, encoder_hidden_states, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        if keep:
            self._kept[self._stream] = kept["h"]
        return out

    def _shallow(self, sample, timestep, encoder_hidden_states, kept: torch.Tensor):
        unet, b = self.unet, self.branch
        t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
        emb = unet.time_embedding(t_emb, None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        x = unet.conv_in(sample)
        skips: tuple = (x,)
        for block in unet.down_blocks[: b + 1]:
            if getattr(block, "has_cross_attention", False):
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                x, res = block(hidden_states=x, temb=emb)
            skips += res
        if unet.down_blocks[b].downsamplers is not None:  # its output feeds the skipped deeper up block
            skips = skips[:-1]
        x = kept[-len(sample) :] if len(kept) > len(sample) else kept
        for block in unet.up_blocks[-(b + 1) :]:
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            if getattr(block, "has_cross_attention", False):
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res,
                          encoder_hidden_states=encoder_hidden_states, upsample_size=None)  # fmt: skip
            else:
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=None)
        if unet.conv_norm_out is not None:
            x = unet.conv_act(unet.conv_norm_out(x))
        return unet.conv_out(x)


def _cached_forward(cache: FeatureCache):
    def forward(unet, sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        plain = not args and not any(v is not None for v in kwargs.values())  # (cross-attention kwargs: a LoRA scale)
        up_factor = 2**unet.num_upsamplers
        if cache._exact or not plain or any(s % up_factor for s in sample.shape[-2:]):
            return cache._forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        stream = cache._stream
        i = cache._calls.get(stream, 0)
        cache._calls[stream] = i + 1
        kept = cache._kept.get(stream)
        if i % cache.interval == 0 or kept is None or len(kept) < len(sample):
            cache.full_calls += 1
            return cache._full(sample, timestep, encoder_hidden_states, True, return_dict=return_dict, **kwargs)
        cache.shallow_calls += 1
        SHALLOW_ROWS[id(unet)] = SHALLOW_ROWS.get(id(unet), 0) + len(sample)
        out = cache._shallow(sample, timestep, encoder_hidden_states, kept)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    return forward
