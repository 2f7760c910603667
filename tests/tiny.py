"""Tiny models built inside the tests: a random-weight Stable Diffusion pipeline over the real CLIP
tokenizer, and a colour classifier whose gradient is easy to reason about."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from augment.models.generator import assemble_pipeline
from augment.models.guides import Guide, Preprocess
from augment.toy.clip_tokenizer import clip_tokenizer

COLOURS = ["red", "green", "blue"]
TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
}


def tiny_vae(**kw):
    """A 2-level AutoencoderKL: 16×16 images ↔ 8×8×4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=16,
        **kw,
    )


def tiny_pipeline(tokenizer_dir: Path, seed: int = 0):
    """A StableDiffusionPipeline with random weights: 16×16 images, 8×8 latents, 32-wide text encoder."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    with torch.no_grad():  # random cross-attention barely reacts to text: make the prompt matter
        for name, param in unet.named_parameters():
            if "attn2.to_out.0.weight" in name:
                param.mul_(30.0)
    # v-prediction keeps a random UNet's predicted x0 bounded (with ε-prediction it explodes at t≈T)
    scheduler = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        prediction_type="v_prediction",
        steps_offset=1,
    )
    return assemble_pipeline(vae, text_encoder, clip_tokenizer(tokenizer_dir), unet, scheduler)


def tiny_sdxl_pipeline(tokenizer_dir: Path, seed: int = 0, force_zeros: bool = True):
    """A StableDiffusionXLPipeline with random weights at diffusers' own SDXL test size (its
    tests/pipelines/stable_diffusion_xl get_dummy_components: a `text_time` UNet whose added embedding reads the
    six time ids and the 32-wide pooled text embedding; CLIPTextModel + CLIPTextModelWithProjection), over the
    real CLIP tokenizer (the second with SDXL's pad token "!"): 16×16 images, 8×8 latents."""
    import copy as copying

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,  # 32 + 32: both encoders' hidden states end to end
        norm_num_groups=16,
    )
    vae = tiny_vae(force_upcast=True)  # as SDXL's VAE config says
    te_config = CLIPTextConfig(  # the special ids as SDXL base's hub configs say (eos 2: pooled at the top id)
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=32,
    )
    text_encoder, text_encoder_2 = CLIPTextModel(te_config), CLIPTextModelWithProjection(te_config)
    with torch.no_grad():  # random cross-attention barely reacts to text: make the prompt matter
        for name, param in unet.named_parameters():
            if "attn2.to_out.0.weight" in name:
                param.mul_(30.0)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
        prediction_type="v_prediction", steps_offset=1,
    )  # fmt: skip
    tokenizer = clip_tokenizer(tokenizer_dir)
    tokenizer_2 = copying.deepcopy(tokenizer)
    tokenizer_2.pad_token = "!"
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=force_zeros,
        add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


class PixelLinear(nn.Module):
    """A fixed random linear classifier on pixels: every class is a direction in image space, so the
    generator can move an image towards any class (a mean-colour classifier can't: the VAE decoder's
    GroupNorms wash global colour shifts out)."""

    def __init__(self, num_classes: int = 3, size: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(num_classes, 3 * size * size, generator=g) / size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def colour_guide() -> Guide:
    return Guide(PixelLinear(), COLOURS, Preprocess((16, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "test:pixels")
