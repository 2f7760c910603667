"""Full-size models with random weights, built offline: Stable Diffusion architectures from committed configs,
and a guide with the layout of the paper's CUB classifier.

Speed, memory, dtypes and code paths at 512 px do not depend on weight values, so the real presets can be
tried without the hub: `random_pipeline("sd14")` is CompVis/stable-diffusion-v1-4's architecture (860 M UNet,
84 M VAE, CLIP-L text encoder over the real BPE vocabulary, its PNDM scheduler config); `save_random_pipeline`
writes it as a diffusers directory that `--generator DIR` loads like a download. Accuracy needs real weights.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from augment.models.hub_files import HUB_CONFIGS, hub_file

ARCHITECTURES = ("sd14", "sd21-base", "sd21", "sd14-narrow")  # sd14-narrow: SD-1.4 at 1/16 width (bf16 tests)
# SDXL: built from the hub's own config files (augment.models.hub_files)


def architecture_config(name: str) -> dict:
    """The component configs of a named architecture (augment/testing/sd_configs/NAME.json)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return json.loads(resources.files("augment.testing").joinpath("sd_configs", f"{name}.json").read_text())


def random_pipeline(name: str, tokenizer_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline with the named architecture and random weights (tens of seconds on CPU)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from augment.models.generator import assemble_pipeline
    from augment.toy.clip_tokenizer import clip_tokenizer

    cfg = architecture_config(name)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    sched = dict(cfg["scheduler"])
    scheduler = getattr(diffusers, sched.pop("_class_name")).from_config(sched)
    tokenizer = clip_tokenizer(tokenizer_dir)
    tokenizer.pad_token = cfg["tokenizer"]["pad_token"]
    return assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler).to(dtype=dtype)


def save_random_pipeline(name: str, out_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Build `random_pipeline(name)` (or `random_sdxl_pipeline`) and save it as a diffusers directory
    (safetensors, `dtype` on disk)."""
    out = Path(out_dir)
    if name in HUB_CONFIGS:
        pipe = random_sdxl_pipeline(out / "_tokenizer_src", seed, dtype, name)
    else:
        pipe = random_pipeline(name, out / "_tokenizer_src", seed, dtype)
    pipe.save_pretrained(str(out), safe_serialization=True)
    import shutil

    shutil.rmtree(out / "_tokenizer_src", ignore_errors=True)
    return out


def random_sdxl_pipeline(
    tokenizer_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16, name: str = "sdxl-base"
):
    """A StableDiffusionXLPipeline with SDXL base 1.0's architecture (2.6 B UNet, 123 M CLIP-L, 695 M OpenCLIP-bigG
    with projection, 84 M VAE; Euler scheduler; both tokenizers over the real CLIP BPE vocabulary, the second
    with SDXL's pad token "!"), every component built from its hub config file, random weights, in `dtype`
    (built in it: the fp32 copy alone would take 10 GiB)."""
    import copy

    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from augment.toy.clip_tokenizer import clip_tokenizer

    index = hub_file(name, "model_index.json")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = diffusers.UNet2DConditionModel.from_config(hub_file(name, "unet/config.json"))
        vae = diffusers.AutoencoderKL.from_config(hub_file(name, "vae/config.json"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**hub_file(name, "text_encoder/config.json")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**hub_file(name, "text_encoder_2/config.json")))
    finally:
        torch.set_default_dtype(previous)
    scheduler = getattr(diffusers, index["scheduler"][1]).from_config(hub_file(name, "scheduler/scheduler_config.json"))
    tokenizer = clip_tokenizer(tokenizer_dir)
    tokenizer_2 = copy.deepcopy(tokenizer)
    tokenizer_2.pad_token = hub_file(name, "tokenizer_2/tokenizer_config.json")["pad_token"]
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=index["force_zeros_for_empty_prompt"], add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)


def save_vit_mae_cub(out_dir: str | Path, labels: list[str], seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A random ViTForImageClassification at 224 px, as transformers loads vesteinn/vit-mae-cub (a ViT-MAE
    whose head reads the mean of the patch tokens), with `labels`, saved with an fp16 checkpoint dtype.
    Name the directory `vit-mae-cub` for augment.models.guides.hf to apply that pooling. Narrow by default (fast on
    CPU); hidden=768, layers=12 is ViT-B's size."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4 if hidden < 768 else 12,
        intermediate_size=2 * hidden if hidden < 768 else 4 * hidden,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(cfg)
    with torch.no_grad():  # a random head barely separates classes: make the logits spread
        model.classifier.weight.mul_(20.0)
    model.to(torch.float16).save_pretrained(out_dir)
    ViTImageProcessor(
        size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    ).save_pretrained(out_dir)
    return Path(out_dir)
