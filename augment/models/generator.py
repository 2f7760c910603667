"""The text-to-image generator: any diffusers Stable Diffusion pipeline, from a hub id or a local directory."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from augment.devices import dtype_note, resolve_device, resolve_dtype
from augment.errors import UserError
from augment.models.quiet import quiet_libraries

# every pipeline here runs without the safety checker (we make training data; the checker costs time per image)
NO_SAFETY_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
_NOTED: set[str] = set()  # dtype notes already shown by this process


def load_generator(spec: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", lora=None):
    """A StableDiffusionPipeline or StableDiffusionXLPipeline (as its model_index.json names it) from a hub id
    ("CompVis/stable-diffusion-v1-4") or a local directory; `lora`
    (a LoraConfig whose `weights` is set): that adapter fused in (augment.models.lora).

    No safety checker (we make training data, and the checker costs time per image). Missing weights with
    no reachable hub give one clear UserError that says how to point at a local directory instead.
    """
    quiet_libraries()  # library chatter (loading bars, deprecations passed between libraries) is not for users
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
    note = dtype_note(dt, dev)
    if note and note not in _NOTED:  # once per process, before minutes of loading and sampling
        _NOTED.add(note)
        print(f"augment: note: {note}", file=sys.stderr, flush=True)
    local = Path(spec).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise UserError(f"{spec}: not a diffusers pipeline directory (no model_index.json)")
    try:
        source = str(local) if local.exists() else spec
        cls, extra = pipeline_class(source)
        pipe = cls.from_pretrained(source, **_dtype_kwarg(dt), **extra)
    except (OSError, ValueError) as e:
        if local.exists():
            raise UserError(f"{spec}: cannot load the pipeline ({str(e).splitlines()[0]})") from None
        raise UserError(
            f"cannot load {spec!r}: weights not found locally and the hub is unreachable or has no such model "
            f"({type(e).__name__}). Download it where you have network (`hf download {spec} "
            f"--local-dir DIR`) and give DIR as generator",
            argument="generator",
        ) from None
    if getattr(pipe.unet.config, "addition_embed_type", None) == "text_time" and not hasattr(pipe, "text_encoder_2"):
        raise UserError(f"{spec}: an SDXL UNet, but its model_index.json names {type(pipe).__name__}; an SDXL "
                        "checkpoint's names StableDiffusionXLPipeline", "generator")  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    if lora is not None and lora.weights is not None:
        from augment.models.lora import apply_lora

        require_sd(pipe, "--lora (lora.weights)", "lora")
        apply_lora(pipe, lora.weights, lora.scale)
    return pipe.to(dev)


def pipeline_class(source: str):
    """(pipeline class, its loading kwargs) from a pipeline's model_index.json (a local directory, or the hub's
    file: one small download): an SDXL checkpoint (StableDiffusionXL…) as StableDiffusionXLPipeline, without
    the invisible watermark (it would add a dependency and change every image's pixels); anything else as
    StableDiffusionPipeline without the safety checker, as before SDXL (what does not fit is one UserError)."""
    import diffusers

    if _sdxl_name(diffusers.DiffusionPipeline.load_config(source).get("_class_name")):
        return diffusers.StableDiffusionXLPipeline, {"add_watermarker": False}
    return diffusers.StableDiffusionPipeline, NO_SAFETY_CHECKER


def _sdxl_name(name) -> bool:
    return isinstance(name, str) and name.startswith("StableDiffusionXL")


def is_sdxl_source(spec: str) -> bool | None:
    """Whether the generator `spec` is SDXL, from its model_index.json alone, without the network: a local
    directory's, the hub id's in the local cache or committed here (augment/testing/hub); None where none has it
    (the check waits for the load)."""
    local = Path(spec).expanduser()
    try:
        if local.exists():
            index = json.loads((local / "model_index.json").read_text())
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "model_index.json")
            if isinstance(cached, str):
                index = json.loads(Path(cached).read_text())
            else:  # a hub repo whose files augment carries (augment/testing/hub), else unknown for now
                from augment.models.hub_files import HUB_IDS, hub_file

                if spec not in HUB_IDS:
                    return None
                index = hub_file(HUB_IDS[spec], "model_index.json")
    except (OSError, ValueError):
        return None  # the load says what is wrong
    return _sdxl_name(index.get("_class_name")) if isinstance(index, dict) else None


def sdxl_unsupported(config, stages: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(what, argument) of each option of RunConfig `config` that the SDXL path does not have, in `stages`
    (learn, generate, adapt)."""
    found: list[tuple[str, str | None]] = []
    if "adapt" in stages:
        found.append(("augment adapt (the LoRA route)", None))
    if config.lora.weights is not None and {"learn", "generate"} & set(stages):
        found.append(("--lora (lora.weights)", "lora"))
    if "learn" in stages and config.learn.cache_interval > 1:
        found.append(("feature caching (learn.cache_interval)", "cache_interval"))
    if "generate" in stages and config.generate.refine is not None:
        found.append(("DATE refinement (--refine date)", "refine"))
    if "generate" in stages and config.generate.cache_interval > 1:
        found.append(("feature caching (generate.cache_interval)", "cache_interval"))
    return found


def check_sdxl_options(config, stages: tuple[str, ...], pipe=None) -> None:
    """One UserError for the first option of `config` not built for SDXL when the generator is SDXL: known from
    the loaded `pipe`, or before any model loads from the generator's model_index.json (is_sdxl_source)."""
    if pipe is not None:
        for what, argument in sdxl_unsupported(config, stages)[:1]:
            require_sd(pipe, what, argument)
    elif is_sdxl_source(config.generator):
        for what, argument in sdxl_unsupported(config, stages)[:1]:
            raise UserError(_not_for_sdxl(what), argument)


def require_sd(pipe, what: str, argument: str | None = None) -> None:
    """One UserError when `pipe` is an SDXL pipeline and `what` is built for SD-1.x/2.x generators only."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise UserError(_not_for_sdxl(what), argument)


def _not_for_sdxl(what: str) -> str:
    return f"{what} is built for SD-1.x/2.x generators, not SDXL"


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A StableDiffusionPipeline from its five parts, as `load_generator` loads one: no safety checker, no bar."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, **NO_SAFETY_CHECKER
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attention_backends(pipe) -> set[str]:
    """The attention processor classes of the UNet and VAE: `AttnProcessor2_0` is torch's fused
    scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)."""
    names = set()
    for model in (pipe.unet, pipe.vae):
        names |= {type(p).__name__ for p in model.attn_processors.values()}
    return names


def speed_up(pipe, channels_last: bool | None = None, compile_unet: bool = False) -> dict[str, object]:
    """Generation speed settings that do not change what is drawn beyond float rounding. On CUDA: TF32 for
    fp32 matmuls and convolutions, channels-last UNet and VAE (`channels_last=None`: on CUDA only); SDPA
    attention (diffusers' default with torch 2) is checked, not set. `compile_unet`: torch.compile the UNet
    (opt-in: the first batches pay the compilation). Returns what was applied, for the manifest."""
    dev = pipe.unet.device
    applied: dict[str, object] = {"attention": sorted(attention_backends(pipe))}
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        applied["tf32"] = True
    if channels_last is None:
        channels_last = dev.type == "cuda"
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    applied["channels_last"] = bool(channels_last)
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    applied["compile_unet"] = compile_unet
    return applied


def _dtype_kwarg(dt: torch.dtype) -> dict:
    """diffusers renamed `torch_dtype` to `dtype` (the old name warns); older releases only know the old one."""
    from diffusers.utils import deprecation_utils

    new = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype": dt} if new else {"torch_dtype": dt}


def text_encoder_fingerprint(pipe) -> str:
    """A short hash of what a learned token depends on: the text encoder's shape and its embedding table.

    Uses the sign of each of the first 512 rows' means, so the same model loaded in fp32, fp16 or bf16 gives
    the same fingerprint, while another text encoder (SD 1.x CLIP-L vs SD 2.x OpenCLIP-H, or a toy) does not.
    SDXL's second text encoder counts too (SD-1.x tokens have no row for it).
    """
    text = ""
    for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):  # SDXL: both (its first is SD-1's CLIP-L)
        if te is None:
            continue
        c = te.config
        text += json.dumps({"hidden": c.hidden_size, "layers": c.num_hidden_layers, "vocab": c.vocab_size})
        rows = te.get_input_embeddings().weight[:512].detach().float().mean(dim=1)
        text += "".join("1" if v > 0 else "0" for v in rows.cpu().tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def generator_source(pipe) -> str:
    """What the pipeline was loaded from, for manifests: its hub id, or a local directory's name and content
    identity (augment.models.fingerprint.source_name; never an absolute path)."""
    from augment.models.fingerprint import source_name

    return source_name(str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "unknown")))
