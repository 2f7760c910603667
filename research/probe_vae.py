"""What does the toy generator's autoencoder keep? Held-out top-1 on real images and on their VAE reconstructions

Every generated image is decoded by the pipeline's VAE, so a class detail that the VAE loses (a shirt's collar
and buttons next to a T-shirt) is out of reach of any prompt and of any learned token. This probe encodes real
Fashion-MNIST test images (latent mean), decodes them, and reports the held-out classifier's top-1 per class
on the originals and on the reconstructions, with the reconstruction error. The reconstruction column is a
ceiling, by class, for what a generator with this VAE can show the classifier.

    python research/probe_vae.py --quick
    python research/probe_vae.py --generator runs/gen4 --out runs/bench/vae-gen4.json   # ≈ 1 min
"""

from __future__ import annotations

import argparse

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import numpy as np
import torch

from benchmarks.common import add_common_arguments, heldout_probe_setup, markdown_table, save_results, top1


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """N×3×H×W float images in [0, 1] → their VAE reconstructions (latent mean, no sampling), N×H×W×3."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).to(vae.device, vae.dtype) * 2 - 1
        out.append(((vae.decode(vae.encode(x).latent_dist.mean).sample + 1) / 2).clamp(0, 1).float().cpu())
    return torch.cat(out).permute(0, 2, 3, 1).numpy()


def main(argv: list[str] | None = None) -> dict:
    from augment.toy import FINE_NAMES
    from augment.toy.data import load, to_rgb32

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p)
    p.add_argument("--generator", help="toy pipeline directory (default: the preset's)")
    p.add_argument("--images", type=int, default=2000, help="first N test images (default 2000; --quick: 100)")
    p.add_argument("--data", help="directory with the Fashion-MNIST idx files (default: found as the toy world does)")
    args = p.parse_args(argv)
    env, cfg, generator, pipe, heldout = heldout_probe_setup(args)
    images, labels = load("test", args.data)
    n = 100 if args.quick else args.images
    real = to_rgb32(images[:n])  # N×3×32×32 in [0, 1]
    labels = labels[:n]
    recon = reconstruct(pipe.vae, real)
    real_hwc = real.transpose(0, 2, 3, 1)
    rows, result = [], {}
    for y, fine in enumerate(FINE_NAMES):
        m = labels == y
        if not m.any():
            continue
        a, b = top1(heldout, real_hwc[m], [y] * int(m.sum())), top1(heldout, recon[m], [y] * int(m.sum()))
        mse = float(np.mean((recon[m] - real_hwc[m]) ** 2))
        result[fine] = {"images": int(m.sum()), "real_top1": a, "recon_top1": b, "mse": mse}
        rows.append([fine, int(m.sum()), a, b, mse])
    # means over all images, weighted from the per-class scores (no second pass of the classifier)
    real_mean, recon_mean = (
        sum(r[key] * r["images"] for r in result.values()) / n for key in ("real_top1", "recon_top1")
    )
    mse_mean = float(np.mean((recon - real_hwc) ** 2))
    rows.append(["**all**", n, real_mean, recon_mean, mse_mean])
    print(markdown_table(["class", "images", "real top-1 %", "reconstruction top-1 %", "reconstruction MSE"], rows))
    out = {
        "environment": env,
        "generator": generator,
        "classifier": cfg.eval_classifier,
        "images": n,
        "per_class": result,
        "real_top1": real_mean,
        "recon_top1": recon_mean,
        "mse": mse_mean,
    }
    save_results(args.out, out)
    return out


if __name__ == "__main__":
    main()
