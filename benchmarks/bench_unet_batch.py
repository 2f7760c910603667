"""What a half batch costs: one full-size SD-1.4 UNet call (random weights) at batch B and at 2B (issue 18).

With classifier-free guidance every call runs 2B rows (unconditional and conditional); past `guidance_cutoff`
it runs B. The cutoff saves what a 2B call costs over a B call: half, where the device is saturated. Best of
`--repeats` calls after one warm-up, per latent size.

    python benchmarks/bench_unet_batch.py --sizes 128 256 --batch 4          # CPU, about 1 min
    python benchmarks/bench_unet_batch.py --device cuda --dtype bf16 --sizes 512 --batch 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import torch

from benchmarks.common import environment, markdown_table, print_environment, save_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="image sizes in px (default 128 256)")
    p.add_argument("--batch", type=int, default=4, help="B, the unguided batch (default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--out", type=Path, help="also save the results as JSON here")
    args = p.parse_args(argv)
    from diffusers import UNet2DConditionModel

    from augment.models.generator import resolve_device, resolve_dtype
    from augment.testing import save_random_pipeline

    dev = resolve_device(args.device)
    dt = resolve_dtype(args.dtype, dev)
    env = environment(args.device, args.dtype)
    print_environment(env)
    with tempfile.TemporaryDirectory() as tmp:
        save_random_pipeline("sd14", Path(tmp) / "sd14")
        unet = UNet2DConditionModel.from_pretrained(Path(tmp) / "sd14" / "unet").to(dev, dt).eval()

    def call_seconds(batch: int, latent: int) -> float:
        x = torch.randn(batch, 4, latent, latent, device=dev, dtype=dt)
        text = torch.randn(batch, 77, unet.config.cross_attention_dim, device=dev, dtype=dt)
        times = []
        with torch.no_grad():
            for _ in range(args.repeats + 1):  # the first is the warm-up
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                unet(x, 500, encoder_hidden_states=text)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        return min(times[1:])

    rows, results = [], {}
    for size in args.sizes:
        latent = size // 8
        half, full = call_seconds(args.batch, latent), call_seconds(2 * args.batch, latent)
        rows.append([size, f"{latent}×{latent}", f"{half:.3f}", f"{full:.3f}", f"{full / half:.2f}"])
        results[size] = {"half_batch_s": half, "full_batch_s": full, "ratio": full / half}
    b = args.batch
    print(markdown_table(["px", "latents", f"batch {b} s", f"batch {2 * b} s", f"{2 * b} / {b}"], rows))
    save_results(args.out, {"environment": env, "batch": b, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
