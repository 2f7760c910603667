"""`adapt_generator`: a LoRA on the generator from a label set's real shots, in diffusers' LoRA format.

OUT (a local directory) gets `pytorch_lora_weights.safetensors`, which `pipe.load_lora_weights(OUT)` loads into
a plain diffusers pipeline and `--lora OUT` fuses in before learning or generating, and `manifest.json` (section
`adapt`: the config, the generator, the shots, the steps and the loss). While it trains, OUT/checkpoint/ holds
the adapters, AdamW's and the schedule's state every `lora.checkpoint_every` steps: a killed run continues from
there with the batches it would have drawn (augment.adapt.lora), and gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from augment.config import RunConfig
from augment.data.images import Split
from augment.devices import bind_device, describe_device, resolve_device
from augment.errors import UserError
from augment.labels import LabelSet, as_label_set
from augment.models.fingerprint import manifest_config, source_identity
from augment.models.generator import check_sdxl_options, generator_source, load_generator
from augment.models.hub import check_hub, job_models
from augment.models.lora import lora_identity
from augment.run.manifest import read_manifest, update_manifest
from augment.run.storage import check_out
from augment.run.workers import lock_worker_slot
from augment.settings import LORA_WEIGHTS, require_peft

NOT_HASHED = ("weights", "scale", "checkpoint_every")  # how the adapter is used, or how often it is saved


@dataclass
class AdaptResult:
    out: Path
    steps: int
    images: int
    seconds: float
    done_before: bool = False  # OUT held this very adapter already: nothing trained
    identity: str | None = None  # augment.models.lora.lora_identity of the weights

    def summary(self) -> str:
        if self.done_before:
            return f"LoRA in {self.out} already made with this config ({self.identity}); nothing to do"
        return (f"trained a LoRA on {self.images} images in {self.steps} steps ({self.seconds:.0f} s) → "
                f"{self.out / LORA_WEIGHTS} ({self.identity}); use it with --lora {self.out}")  # fmt: skip


def shots_digest(images: Split) -> str:
    """What the adapter was trained on: each shot's label and pixels."""
    h = hashlib.sha256()
    for i in range(len(images)):
        h.update(int(images.labels[i]).to_bytes(4, "little") + images.images(i).convert("RGB").tobytes())
    return h.hexdigest()[:16]


def adapt_generator(
    labels: LabelSet | str | Path,
    images: Split,
    out: str | Path,
    config: RunConfig,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> AdaptResult:
    """Train `config.lora` on `images` (a Split whose labels are positions in `labels`), into OUT."""
    labels, config = as_label_set(labels), config
    config.validate()
    check_sdxl_options(config, ("adapt",))  # before any model loads
    if config.lora.weights is not None:
        raise UserError("lora.weights is set: adapt trains a new LoRA on the plain generator; unset it", "lora")
    require_peft()
    if "://" in str(out):
        raise UserError(f"{out}: a LoRA directory is local (a path), not a URL", "out")
    out = Path(out)
    if not len(images):
        raise UserError("no images to adapt the generator to", "images")
    if np.any((images.labels < 0) | (images.labels >= len(labels))):
        raise UserError(f"image labels must be positions 0..{len(labels) - 1} of the label set", "images")
    check_out(out)
    key = {"lora": {k: v for k, v in dataclasses.asdict(config.lora).items() if k not in NOT_HASHED},
           "generator": source_identity(config.generator), "dtype": config.dtype, "labels": labels.names(),
           "shots": shots_digest(images)}  # fmt: skip
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    made = read_manifest(out).get("adapt", {}) if out.is_dir() else {}
    if (out / LORA_WEIGHTS).is_file():
        if made.get("fingerprint") == fingerprint:
            return AdaptResult(out, made.get("steps", 0), len(images), 0.0, True, lora_identity(str(out)))
        if not overwrite:
            raise UserError(f"{out} holds a LoRA made with another config, generator or shots; use --overwrite "
                            "or another --out")  # fmt: skip
        (out / LORA_WEIGHTS).unlink()

    from augment.adapt.lora import LoraTrainer, TrainerState

    t0 = time.time()
    device = resolve_device(config.device)
    bind_device(device)
    hub_note = check_hub(job_models(config.generator, None))
    if hub_note:
        print(f"augment: note: {hub_note}", file=sys.stderr)
    pipe = load_generator(config.generator, device, config.dtype)
    check_sdxl_options(config, ("adapt",), pipe)
    out.mkdir(parents=True, exist_ok=True)
    lock_worker_slot(out, 0, 1)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    trainer = LoraTrainer(pipe, images, labels.names(), config.lora, config.lora.resolution or native)
    ckpt = out / "checkpoint"
    state = _resume(trainer, ckpt, fingerprint, overwrite) or TrainerState(0, [])
    bar = tqdm(total=trainer.total, initial=state.step, unit="step", desc="adapting the generator (LoRA)",
               disable=not progress, dynamic_ncols=True)  # fmt: skip

    def report(s: TrainerState) -> None:
        bar.update(1)
        bar.set_postfix_str(f"loss {s.losses[-1]:.4f}")

    with bar:
        trainer.run(state, lambda s: _checkpoint(trainer, ckpt, fingerprint, s), report)
    _save(trainer, out)
    identity, losses = lora_identity(str(out)), state.losses
    update_manifest(out, "adapt", {
        "fingerprint": fingerprint, "config": manifest_config(config), "generator": generator_source(pipe),
        "labels": labels.names(), "label_file": labels.path, "images": len(images),
        "images_per_class": np.bincount(images.labels, minlength=len(labels)).tolist(),
        "shots": key["shots"], "resolution": trainer.resolution, "steps": trainer.total,
        "loss_first_10": _mean(losses[:10]), "loss_last_10": _mean(losses[-10:]),
        "identity": identity, "weights": LORA_WEIGHTS,
    }, {"index": 0, "count": 1, **describe_device(device)})  # fmt: skip
    shutil.rmtree(ckpt, ignore_errors=True)
    return AdaptResult(out, trainer.total, len(images), time.time() - t0, False, identity)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _save(trainer, out: Path) -> None:
    """diffusers' LoRA file (StableDiffusionLoraLoaderMixin.save_lora_weights, with each adapter's peft config
    as metadata so alpha survives), written beside OUT and renamed into it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    state = trainer.adapter_state()
    meta = {k: m.peft_config["default"].to_dict() for k, m in
            (("unet", trainer.pipe.unet), ("text_encoder", trainer.pipe.text_encoder)) if k in state}  # fmt: skip
    tmp = out / f".save.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionPipeline.save_lora_weights(
        tmp,
        unet_lora_layers=convert_state_dict_to_diffusers(state["unet"]),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(state["text_encoder"])
        if "text_encoder" in state
        else None,
        unet_lora_adapter_metadata=meta.get("unet"),
        text_encoder_lora_adapter_metadata=meta.get("text_encoder"),
    )
    os.replace(tmp / LORA_WEIGHTS, out / LORA_WEIGHTS)
    shutil.rmtree(tmp, ignore_errors=True)


def _checkpoint(trainer, ckpt: Path, fingerprint: str, state) -> None:
    """The adapters (safetensors), AdamW and the schedule (torch.save, read back weights_only), then the JSON
    that names them: each file replaced atomically, the JSON last."""
    from safetensors.torch import save_file

    ckpt.mkdir(parents=True, exist_ok=True)
    flat = {f"{part}.{k}": v.detach().contiguous().cpu() for part, sd in trainer.adapter_state().items()
            for k, v in sd.items()}  # fmt: skip
    save_file(flat, str(ckpt / "adapters.tmp"))
    os.replace(ckpt / "adapters.tmp", ckpt / "adapters.safetensors")
    buf = io.BytesIO()
    torch.save(trainer.optimizer_state(), buf)
    (ckpt / "optimizer.tmp").write_bytes(buf.getvalue())
    os.replace(ckpt / "optimizer.tmp", ckpt / "optimizer.pt")
    info = {"fingerprint": fingerprint, "step": state.step, "losses": state.losses}
    (ckpt / "state.tmp").write_text(json.dumps(info))
    os.replace(ckpt / "state.tmp", ckpt / "state.json")


def _resume(trainer, ckpt: Path, fingerprint: str, overwrite: bool):
    """The TrainerState of OUT's checkpoint, loaded into `trainer` (None when there is none)."""
    from augment.adapt.lora import TrainerState

    if not (ckpt / "state.json").is_file():
        return None
    info = json.loads((ckpt / "state.json").read_text())
    if info.get("fingerprint") != fingerprint:
        if not overwrite:
            raise UserError(f"{ckpt.parent}: a LoRA checkpoint of another config, generator or shots is here; "
                            "use --overwrite or another --out")  # fmt: skip
        shutil.rmtree(ckpt)
        return None
    from safetensors.torch import load_file

    flat = load_file(str(ckpt / "adapters.safetensors"))
    parts: dict[str, dict] = {}
    for k, v in flat.items():
        part, _, name = k.partition(".")
        parts.setdefault(part, {})[name] = v.to(trainer.device)
    trainer.load_adapter_state(parts)
    trainer.load_optimizer_state(torch.load(io.BytesIO((ckpt / "optimizer.pt").read_bytes()), weights_only=True))
    print(f"augment: note: LoRA resumed at step {info['step']} of {trainer.total}", file=sys.stderr)
    return TrainerState(int(info["step"]), list(info["losses"]))
