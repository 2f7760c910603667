"""Learned tokens on disk, in diffusers' textual-inversion format.

OUT/tokens/<slug>/learned_embeds.safetensors  {"<token>": tensor[1, dim]}  (pipe.load_textual_inversion)
                                              SDXL: {"clip_l": [1, 768], "clip_g": [1, 1280]}, diffusers' SDXL
                                              format (each part loaded with its tokenizer and text encoder)
OUT/tokens/<slug>/meta.json                   class, token, guide, generator, steps, loss/accuracy history
On a local OUT a class directory is written under a temporary name and renamed, so it exists only when
complete; on object storage each file is one whole PUT, meta.json last: a class is learned when both exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from augment.errors import UserError
from augment.labels import LabelClass, LabelSet
from augment.run.storage import out_path

WEIGHTS = "learned_embeds.safetensors"


def token_dir(out_dir: str | Path, cls: LabelClass) -> Path:
    return out_path(out_dir) / "tokens" / cls.slug


def is_learned(out_dir: str | Path, cls: LabelClass) -> bool:
    d = token_dir(out_dir, cls)
    return (d / WEIGHTS).is_file() and (d / "meta.json").is_file()


def save_token(
    out_dir: str | Path,
    cls: LabelClass,
    token: str,
    vector: torch.Tensor,
    meta: dict,
    parts: dict[str, int] | None = None,
) -> dict:
    """Write one class's token atomically; returns the meta written. `parts` (augment.models.prompting.token_parts):
    the vector split into named rows (SDXL's clip_l and clip_g) instead of one row named by the token."""
    from safetensors.torch import save

    final = token_dir(out_dir, cls)
    flat = vector.detach().float().cpu().reshape(-1)
    if parts is None:
        rows = {token: flat.reshape(1, -1).contiguous()}
    else:
        if sum(parts.values()) != flat.numel():
            raise ValueError(f"a {flat.numel()}-wide token vector does not split into {parts}")
        rows = dict(zip(parts, (v.reshape(1, -1).contiguous() for v in flat.split(list(parts.values())))))
    weights = save(rows)
    meta = {**meta, "sha256": hashlib.sha256(weights).hexdigest()}  # `augment verify`
    if not isinstance(final, Path):  # object storage: the weights, then meta.json (is_learned needs both)
        from augment.run.atomic import write_bytes

        (final / "meta.json").unlink(missing_ok=True)
        write_bytes(final / WEIGHTS, weights)
        write_bytes(final / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
        return meta
    tmp = final.with_name(
        f"{final.name}.{os.getpid()}.tmp"
    )  # per process: a retried Ray task may overlap its dead attempt
    for old in final.parent.glob(f"{final.name}.*tmp") if final.parent.is_dir() else ():
        shutil.rmtree(old, ignore_errors=True)  # what a killed run left
    tmp.mkdir(parents=True)
    try:
        (tmp / WEIGHTS).write_bytes(weights)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except BaseException:  # a full disk, a kill: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(out_dir: str | Path, cls: LabelClass) -> dict:
    """A learned token's meta.json (UserError naming it when it is not a JSON object with a token)."""
    path = token_dir(out_dir, cls) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}); `augment verify` on its run says more") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("token"), str):
        raise UserError(f"{path}: not a learned token's meta.json (no 'token')")
    return meta


def find_tokens_root(tokens: str | Path, labels: LabelSet) -> Path:
    """The run directory holding tokens/ for every class of `labels`, from that directory or its tokens/
    folder; a missing directory or class is a UserError (cheap: no model needed)."""
    root = out_path(tokens, "tokens")
    if not root.is_dir():
        raise UserError(f"tokens directory {root} does not exist")
    if root.name == "tokens" and not (root / "tokens").is_dir():
        root = root.parent
    missing = [c.name for c in labels.classes if not is_learned(root, c)]
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise UserError(f"{root}: no learned token for {len(missing)} class(es): {', '.join(missing[:5])}{more}")
    return root


def sampling_note(tokens_root: Path, labels: LabelSet, generate, lora: str | None = None) -> str | None:
    """A note when `generate` (a GenerateConfig) samples otherwise than the tokens were learned (sampler, steps,
    guidance), or on another generator adapter than theirs (`lora`: augment.models.lora.lora_identity): a token
    is learned for the sampler and generator it was learned with, and elsewhere it does less well."""
    from augment.config import ADDED_LATER

    meta = read_meta(tokens_root, labels.classes[0])
    notes = []
    adapter = (meta.get("lora") or {}).get("identity")
    if adapter != lora:
        notes.append(f"tokens learned on {'LoRA ' + adapter if adapter else 'the generator without a LoRA'}, used "
                     f"{'with LoRA ' + lora if lora else 'without one'}")  # fmt: skip
    learned = meta.get("config") or {}
    differ = []
    for key in (
        "scheduler",
        "num_inference_steps",
        "guidance_scale",
        "guidance_cutoff",
        "cache_interval",
        "cache_branch",
    ):
        was, now = learned.get(key, ADDED_LATER.get(key)), getattr(generate, key)
        if learned and was is not None and was != now:
            differ.append(f"{key} {was} → {now}")
    if differ:
        notes.append(f"sampling otherwise than the tokens were learned ({', '.join(differ)})")
    if not notes:
        return None
    return "; ".join(notes) + ": tokens do best on the generator and sampler they were learned with"


def load_tokens(pipe, tokens_root: str | Path, labels: LabelSet, fingerprint: str | None = None) -> dict[int, str]:
    """Load every class's learned token into `pipe` (load_textual_inversion); returns {position: token}.

    `tokens_root` is a learn/build output directory (holding tokens/) or the tokens/ directory itself.
    Refuses missing classes and tokens learned on another text encoder (by fingerprint)."""
    root = find_tokens_root(tokens_root, labels)
    paths, tokens, out = [], [], {}
    for c in labels.classes:
        meta = read_meta(root, c)
        if fingerprint is not None and meta.get("text_encoder") not in (None, fingerprint):
            raise UserError(
                f"{token_dir(root, c)}: token learned with another generator "
                f"({meta.get('generator', '?')}); learn tokens for this one"
            )
        out[c.position] = meta["token"]
        if meta["token"] in pipe.tokenizer.get_vocab():
            continue  # already loaded in this pipeline
        path = token_dir(root, c) / WEIGHTS
        paths.append(str(path) if isinstance(path, Path) else _state_dict(path))  # diffusers opens local paths
        tokens.append(meta["token"])
    if paths:
        try:
            _load_into(pipe, paths, tokens)
        except (OSError, ValueError, RuntimeError, KeyError) as e:  # diffusers' and safetensors' own errors
            first = (str(e).splitlines() or [""])[0][:200]
            raise UserError(f"{root}: a token file does not load ({type(e).__name__}: {first}); "
                            "`augment verify` on it names which") from None  # fmt: skip
    return out


def _load_into(pipe, paths: list, tokens: list[str]) -> None:
    """diffusers' textual-inversion loader: the files as they are (one encoder), or for SDXL each file's clip_l
    row into tokenizer/text_encoder and its clip_g row into tokenizer_2/text_encoder_2, as diffusers documents
    for SDXL embeddings."""
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    if encoder_2 is None:
        pipe.load_textual_inversion(paths, token=tokens)
        return
    files = [_state_dict(p) for p in paths]
    for name, tokenizer, text_encoder in (("clip_l", pipe.tokenizer, pipe.text_encoder),
                                          ("clip_g", pipe.tokenizer_2, encoder_2)):  # fmt: skip
        rows = [f[name] for f in files]  # a KeyError: not an SDXL token file
        pipe.load_textual_inversion(rows, token=tokens, text_encoder=text_encoder, tokenizer=tokenizer)


def _state_dict(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if isinstance(path, dict):
        return path
    return load(Path(path).read_bytes() if isinstance(path, str) else path.read_bytes())
