"""Train the toy world's text-to-image model on Fashion-MNIST, on a CPU, into a diffusers pipeline directory.

    python -m augment.toy.train_generator --out augment/toy/weights/generator --seed 0

Stages: (1) an AutoencoderKL, 32×32 RGB → 4×8×8 latents; (2) all training images encoded once;
(3) a CLIPTextModel over the real SD-1.x BPE vocabulary and a UNet2DConditionModel trained together with
the DDPM loss; (4) saved as a StableDiffusionPipeline in fp16 safetensors, with a DDIM scheduler.
`--vae-from DIR` skips (1) and reuses DIR's autoencoder (as saved: fp16 weights, so the latents differ
slightly from those of a run that trains it): the autoencoder never sees a caption, and caption experiments
save its 1,116 s (the committed generator's log).

Captions (the point of the toy world): "a photo of a {name}", where name is another word for the image's
fine class (`SYNONYM`: "trainer" for "sneaker") for `synonym_caption_p` of the images (50%), the label set's
own fine name for `fine_caption_p` (0 by default: never, as a dataset's species names are all but unknown
to Stable Diffusion), and the coarse word ("shoe") otherwise; `empty_caption_p` of captions are empty for
classifier-free guidance. So the model can draw each fine class, but not under the label set's name
(except where that name is the coarse word: "dress", "bag"): there is something for a learned token to
find. (Earlier generators: the first used `--fine-caption-p 0.25 --synonym-caption-p 0 --unet-steps 1800
--vae-steps 300 --vae-lr 1e-3 --vae-schedule constant`; the second, the first's VAE settings with
`--fine-caption-p 0.02`. docs/history.md.)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augment.toy import COARSE_WORD, FINE_NAMES, SYNONYM
from augment.toy.clip_tokenizer import write_clip_tokenizer_files
from augment.toy.data import load, to_rgb32


@dataclass
class TrainConfig:
    seed: int = 0
    vae_steps: int = 700
    vae_lr: float = 2e-3
    vae_schedule: str = "cosine"  # 50 warm-up steps, then cosine decay of vae_lr to 0; or "constant"
    kl_weight: float = 1e-6
    unet_steps: int = 3000
    lr: float = 5e-4
    batch_size: int = 64
    fine_caption_p: float = 0.0
    synonym_caption_p: float = 0.50
    empty_caption_p: float = 0.10
    ema_decay: float = 0.999
    text_hidden: int = 128
    threads: int = 2
    log_every: int = 50
    max_images: int = 0  # 0 = all 60,000; a small number makes a quick smoke run
    vae_from: str = ""  # a pipeline directory whose autoencoder to reuse instead of training one


def build_models(cfg: TrainConfig):
    """The three networks with the toy world's sizes (random weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=32,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        norm_num_groups=32,
        mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=cfg.text_hidden,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return vae, text_encoder, unet


def warmup_cosine(base: float, step: int, total: int, warmup: int) -> float:
    """`base` after a linear warm-up over `warmup` steps, times a cosine decay that reaches 0 at step `total`."""
    return base * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def vae_lr(cfg: TrainConfig, step: int) -> float:
    """The autoencoder's learning rate at `step` (1-based): constant, or 50 warm-up steps and a cosine decay to 0."""
    if cfg.vae_schedule == "constant":
        return cfg.vae_lr
    return warmup_cosine(cfg.vae_lr, step, cfg.vae_steps, warmup=50)


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, log) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    g = torch.Generator().manual_seed(cfg.seed)
    for step in range(1, cfg.vae_steps + 1):
        for group in opt.param_groups:
            group["lr"] = vae_lr(cfg, step)
        x = images[torch.randint(len(images), (cfg.batch_size,), generator=g)] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            log(f"vae step {step}/{cfg.vae_steps} loss {loss.item():.4f}")


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(images[i : i + batch] * 2 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def caption_table(tokenizer) -> torch.Tensor:
    """Token ids of every caption the toy world uses: row 0 empty, then for class y: 1 + 3y its fine name,
    2 + 3y its coarse word, 3 + 3y its caption word (synonym)."""
    captions = [""]
    for fine in FINE_NAMES:
        captions += [f"a photo of a {fine}", f"a photo of a {COARSE_WORD[fine]}", f"a photo of a {SYNONYM[fine]}"]
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def draw_captions(labels: np.ndarray, rng: np.random.Generator, cfg: TrainConfig) -> torch.Tensor:
    """Row of `caption_table` per image: empty, fine name, synonym or coarse word, drawn independently."""
    empty = rng.random(len(labels)) < cfg.empty_caption_p
    u = rng.random(len(labels))
    kind = np.where(u < cfg.fine_caption_p, 0, np.where(u < cfg.fine_caption_p + cfg.synonym_caption_p, 2, 1))
    rows = np.where(empty, 0, 1 + 3 * labels + kind)
    return torch.from_numpy(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", default=None, help="directory with the Fashion-MNIST idx files")
    for field, value in asdict(TrainConfig()).items():
        p.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    args = p.parse_args(argv)
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig())})
    if not (0 <= cfg.fine_caption_p and 0 <= cfg.synonym_caption_p and cfg.fine_caption_p + cfg.synonym_caption_p <= 1):
        print(
            "train_generator: --fine-caption-p and --synonym-caption-p must be ≥ 0 and sum to at most 1",
            file=sys.stderr,
        )
        sys.exit(2)
    if cfg.vae_schedule not in ("constant", "cosine"):
        print(f"train_generator: --vae-schedule must be constant or cosine, not {cfg.vae_schedule!r}", file=sys.stderr)
        sys.exit(2)
    if cfg.vae_from and not (Path(cfg.vae_from) / "vae" / "config.json").is_file():
        print(f"train_generator: --vae-from {cfg.vae_from}: no pipeline directory with a vae/ there", file=sys.stderr)
        sys.exit(2)

    from diffusers import DDIMScheduler, DDPMScheduler
    from transformers import CLIPTokenizer

    from augment.models.generator import assemble_pipeline

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train_log.txt", "w")
    t0 = time.time()

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:7.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    log(f"config {json.dumps(asdict(cfg))}")
    images_u8, labels = load("train", args.data)
    if cfg.max_images:
        images_u8, labels = images_u8[: cfg.max_images], labels[: cfg.max_images]
    images = torch.from_numpy(to_rgb32(images_u8))
    tok_dir = out / "tokenizer"
    write_clip_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    vae, text_encoder, unet = build_models(cfg)
    log(
        f"params: vae {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M "
        f"text {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M "
        f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M"
    )

    # (1) autoencoder: trained, or reused (it never sees a caption, so caption experiments can share one)
    if cfg.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg.vae_from, subfolder="vae").float()
        log(f"vae loaded from {cfg.vae_from} (--vae-steps and --vae-lr unused)")
    else:
        train_vae(vae, images, cfg, log)
    vae.eval().requires_grad_(False)

    # (2) latents of every training image, and the scale that gives them unit variance
    means, stds = encode_all(vae, images)
    scale = 1.0 / float(means.std())
    vae.register_to_config(scaling_factor=scale)
    log(f"latents encoded: std {means.std():.3f} → scaling_factor {scale:.4f}")

    # (3) text encoder + UNet, DDPM loss
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    ema_params = list(ema_text.parameters()) + list(ema_unet.parameters())
    captions = caption_table(tokenizer)
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    running = None
    for step in range(1, cfg.unet_steps + 1):
        lr = warmup_cosine(cfg.lr, step, cfg.unet_steps, warmup=200)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scale
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, 1000, (cfg.batch_size,), generator=g)
        rows, inverse = torch.unique(draw_captions(labels[idx.numpy()], rng, cfg), return_inverse=True)
        cond = text_encoder(captions[rows])[0][inverse]  # each distinct caption encoded once
        pred = unet(noise_sched.add_noise(z, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.unet_steps:
            log(f"unet step {step}/{cfg.unet_steps} loss {running:.4f} lr {lr:.2e}")

    # (4) a standard Stable Diffusion pipeline directory, fp16 safetensors
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = assemble_pipeline(vae, ema_text, tokenizer, ema_unet, scheduler)
    pipe.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    # weights stay fp16 on disk, but the text encoder's config says fp32: transformers 5 would otherwise load
    # it fp16 next to diffusers' fp32 UNet, and a plain from_pretrained(dir) would fail on mixed dtypes
    te_config = out / "text_encoder" / "config.json"
    te_config.write_text(te_config.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    log(f"saved pipeline to {out}")
    log_file.close()


if __name__ == "__main__":
    main()
