"""Train the toy world's two classifiers on Fashion-MNIST train, in the `ckpt:` format.

    python -m augment.toy.train_classifiers --out augment/toy/weights

guide   = timm resnet10t, seed 0 — the classifier the token learner follows;
heldout = timm regnetx_002, seed 1 — another architecture and seed, used only to score generated images,
so nobody grades their own homework. Both see 32×32 RGB in [0, 1], normalised with Fashion-MNIST's mean/std.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augment.models.checkpoint import build_model, save_classifier
from augment.toy import FINE_NAMES
from augment.toy.data import load, to_rgb32

MEAN, STD = [0.2860] * 3, [0.3530] * 3
CLASSIFIERS = {"guide": ("timm:resnet10t", 0), "heldout": ("timm:regnetx_002", 1)}


def augment_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    correct = sum(
        (model((x[i : i + batch] - mean) / std).argmax(1) == y[i : i + batch]).sum().item()
        for i in range(0, len(x), batch)
    )
    return 100.0 * correct / len(x)


def train_one(architecture: str, seed: int, epochs: int, x, y, xt, yt, log) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build_model(architecture, 10)
    steps = max(1, epochs * (len(x) // 128))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 127, 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model((augment_batch(x[idx], g) - mean) / std), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                log(f"{architecture} epoch {epoch + 1} step {step}/{steps} loss {loss.item():.3f}")
        log(f"{architecture} epoch {epoch + 1}: test accuracy {accuracy(model, xt, yt):.2f}%")
    return model.eval(), accuracy(model, xt, yt)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="writes OUT/guide and OUT/heldout")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=sorted(CLASSIFIERS), default=None)
    p.add_argument("--max-images", type=int, default=0, help="use only the first N training images (smoke runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    x, y = load("train", args.data)
    xt, yt = load("test", args.data)
    if args.max_images:
        x, y, xt, yt = x[: args.max_images], y[: args.max_images], xt[: args.max_images], yt[: args.max_images]
    x, xt = torch.from_numpy(to_rgb32(x)), torch.from_numpy(to_rgb32(xt))
    y, yt = torch.from_numpy(y), torch.from_numpy(yt)
    for name, (arch, seed) in CLASSIFIERS.items():
        if args.only and name != args.only:
            continue
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        log_file = open(out / "train_log.txt", "w")

        def log(msg: str) -> None:
            line = f"[{time.time() - t0:7.1f}s] {msg}"
            print(line, flush=True)
            log_file.write(line + "\n")  # noqa: B023 (log is used in this iteration only)

        model, acc = train_one(arch, seed, args.epochs, x, y, xt, yt, log)
        save_classifier(
            model,
            out,
            architecture=arch,
            labels=FINE_NAMES,
            input_size=(3, 32, 32),
            mean=MEAN,
            std=STD,
            trained={
                "data": "fashion-mnist train (60,000)",
                "epochs": args.epochs,
                "seed": seed,
                "test_top1": round(acc, 2),
                "command": f"python -m augment.toy.train_classifiers --out {args.out} --epochs {args.epochs}",
            },
        )
        log(f"saved {out}: test top-1 {acc:.2f}%")
        log_file.close()
    print(json.dumps({"seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
