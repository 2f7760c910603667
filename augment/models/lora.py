"""A LoRA on the generator: fused into the pipeline's weights before learning or generating, named by content.

The adapter is loaded with diffusers' own `load_lora_weights` (peft), fused at `lora.scale` and its peft layers
removed again, so the UNet and text encoder that learning, generation and feature caching see are plain modules
with the adapted weights: no extra forward kwargs, nothing for torch.compile to trace. A learned token records
the adapter's identity (`lora_identity`); generation with another adapter says so (augment.data.tokens_io).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from augment.errors import UserError
from augment.settings import LORA_WEIGHTS, check_lora_weights


def lora_identity(spec: str | None) -> str | None:
    """`lora:` + 16 hex digits of a SHA-256 over the weights file's tensors (name, dtype, shape, bytes, in name
    order) and its metadata (None without an adapter): the same adapter under any path, another adapter never.
    Not the file's bytes: safetensors writes the metadata mapping in no fixed order."""
    import json

    import torch
    from safetensors import safe_open

    if spec is None:
        return None
    h = hashlib.sha256()
    with safe_open(str(Path(spec).expanduser() / LORA_WEIGHTS), "pt") as f:
        meta = {k: json.loads(v) if k == "lora_adapter_metadata" else v for k, v in (f.metadata() or {}).items()}
        h.update(json.dumps(meta, sort_keys=True).encode())
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"lora:{h.hexdigest()[:16]}"


def describe_lora(spec: str | None, scale: float) -> dict | None:
    """How manifests and token metadata record an adapter: its directory's name, identity and scale."""
    if spec is None:
        return None
    return {"name": Path(spec).expanduser().name, "identity": lora_identity(spec), "scale": scale}


def apply_lora(pipe, spec: str | None, scale: float = 1.0):
    """Fuse the LoRA in directory `spec` into `pipe` (UNet and, if the file has it, text encoder) at `scale`;
    a file that does not fit this generator is one UserError. Returns the pipeline."""
    if spec is None:
        return pipe
    check_lora_weights(spec)
    try:
        pipe.load_lora_weights(str(Path(spec).expanduser()), weight_name=LORA_WEIGHTS, adapter_name="augment")
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise UserError(f"{spec}: this LoRA does not fit the generator ({str(e).splitlines()[0][:200]})") from None
    pipe.fuse_lora(lora_scale=scale, adapter_names=["augment"])
    pipe.unload_lora_weights()  # the peft layers go; the fused weights stay
    return pipe
