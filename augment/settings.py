"""What a config's values may be: the names some options take, the checks of values, DATE's options and the
flag helper with which each field declares its command-line flag. The layer under augment.config (no project
imports but errors), so samplers, guides and the learner check values against the same lists."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from augment.errors import UserError

# Samplers by name, declared once: name → (diffusers scheduler class, the settings it is built with), or None for
# "pipeline" (the generator's own). augment.models.sampling.make_scheduler builds them.
SCHEDULERS = {
    "pipeline": None,
    "ddim": ("DDIMScheduler", {"clip_sample": False}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}
SAMPLERS = tuple(SCHEDULERS)
REFINE_METHODS = ("date",)
KEEP = ("best", "after-best", "last")  # which token a class keeps: augment.learn.state
CLAMPS = ("straight-through", "hard")  # how decoded pixels are clamped for the guide: augment.models.decode
DTYPE_NAMES = ("auto", "fp32", "float32", "fp16", "float16", "bf16", "bfloat16")  # augment.devices.DTYPES + auto
LABEL_MATCH = ("check", "by-index", "by-name")  # how classes find the guide's index: augment.labels.match_to_guide


def check_templates(templates: list[str], need_token: bool = False) -> None:
    """Every template must be non-empty and mention {name} (and {token} with `need_token`: learning prompts,
    where the token is what learning changes); unknown fields are a user error."""
    if not templates:
        raise UserError("at least one prompt template is needed")
    for t in templates:
        try:
            t.format(token="", name="")
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"prompt template {t!r}: only {{token}} and {{name}} can be used ({e})") from None
        filled = t.format(token="\x01", name="\x02")  # ("{{name}}" is a literal "{name}", not the slot)
        if "\x02" not in filled:
            raise UserError(f"prompt template {t!r} must contain {{name}}")
        if need_token and "\x01" not in filled:
            raise UserError(f"prompt template {t!r} must contain {{token}}: it is what learning changes")


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list of strings"
    if origin is dict:
        return "a mapping of strings to strings"
    return {int: "a whole number", float: "a finite number", str: "a string", bool: "true or false",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))  # fmt: skip


def _fits(value, hint) -> bool:
    if hint is Any:
        return True
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (tuple, list)) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if origin is dict:
        k, v = typing.get_args(hint)
        return isinstance(value, dict) and all(_fits(a, k) and _fits(b, v) for a, b in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str) and "\0" not in value
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_types(obj, where: str) -> None:
    """Each field of config dataclass `obj` holds a value of its declared type (a YAML file or a caller can put
    anything there): UserError naming `where.key` and the type, before any value is used. Floats must be
    finite; strings hold no NUL."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue  # a section: checked by its own validate()
        if not _fits(value, hints[f.name]):
            key = f"{where}.{f.name}" if where else f.name
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise UserError(f"{key} must be {_describe(hints[f.name])}, got {shown}", key)


def check_size(section, where: str) -> None:
    """height and width, when set: positive multiples of 8 (what diffusers' Stable Diffusion pipelines accept)."""
    for key in ("height", "width"):
        value = getattr(section, key)
        if value is not None and (value < 8 or value % 8):
            raise UserError(f"{where}.{key} must be a positive multiple of 8 (or null: the generator's), got {value}")


def check_device(device: str, argument: str = "device") -> None:
    """A device name's form (auto, cpu, cuda[:N], mps[:N], xpu[:N]), and MPS/XPU available in this process
    (CUDA's index is checked where each process binds its GPU: augment.devices)."""
    if not re.fullmatch(r"auto|cpu|(cuda|mps|xpu)(:[0-9]+)?", device):
        raise UserError(f"{argument} must be auto, cpu, cuda, cuda:N, mps or xpu, got {device!r}", argument)
    if device.startswith(("mps", "xpu")):
        from augment.devices import resolve_device

        resolve_device(device)


def check_cache(section, where: str) -> None:
    """Feature caching: an interval ≥ 1 (1: off) and a branch ≥ 0 (its upper bound is the UNet's: checked as it loads)."""
    if section.cache_interval < 1:
        raise UserError(f"{where}.cache_interval must be ≥ 1, got {section.cache_interval}", f"{where}.cache_interval")
    if section.cache_branch < 0:
        raise UserError(f"{where}.cache_branch must be ≥ 0, got {section.cache_branch}")


def flag(name: str, help: str, type=None, **argparse_kwargs) -> dict[str, Any]:
    """A field's command-line flag, as field metadata: augment.commands.options derives every parser from these.
    `shared=True`: `build` sets the learn and generate fields of that name with one flag; `build_flag`: the
    name `build` gives it (two sections' fields of the same name that stay apart)."""
    return {"flag": name, "help": help, "type": type, **argparse_kwargs}


def classes_per_step(value: str) -> int | str:
    """--classes-per-step: a whole number or auto."""
    return value if value == "auto" else int(value)


CUTOFF_HELP = (
    "fraction of the denoising steps, the first ones, with classifier-free guidance; the rest make one UNet "
    "evaluation instead of two (default: preset, SD presets 0.5; 1 = all, the paper's)"
)


def check_scheduler(name: str, key: str) -> None:
    if name not in SAMPLERS:
        raise UserError(f"{key} must be one of {', '.join(SAMPLERS)}, got {name!r}")


@dataclass(frozen=True)
class DateOptions:
    """`generate.refine_options` when `generate.refine: date`. Defaults are DATE's (generate_date_*.py)."""

    step_size: float = field(
        default=0.1, metadata=flag("--refine-step-size", "DATE: normalised step on the embeddings (default 0.1)", float)
    )  # η of the normalised step on c (DATE --lr_upt_prompt)
    updates: int = 1  # gradient updates of c per refined step (--num_upt_prompt)
    every: int = field(
        default=1, metadata=flag("--refine-every", "DATE: refine every k-th sampling step (default 1)", int)
    )  # refine sampling steps i with i % every == 0 (--skip_freq) ...
    start: float = 0.0  # ... and start ≤ i / steps < stop (--skip_intervals, as fractions)
    stop: float = 1.0
    prior_weight: float = 0.0  # pull towards the prompt's own embedding, inside the loss (--weight_prior)
    from_original: bool = False  # each update starts from c_orig instead of accumulating (--init_org)
    batch: int = 0  # images per gradient pass (UNet call, decode, guide, backward); 0 = all at
    # once. Bounds DATE's memory at 512 px (not DATE's: it samples one image)
    checkpointing: bool = False  # UNet and VAE gradient checkpointing during the updates

    @classmethod
    def parse(cls, options: dict[str, Any]) -> DateOptions:
        """Check keys, types and ranges; UserError (one line) on anything wrong."""
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise UserError(f"generate.refine_options must be a mapping, got {options!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise UserError(
                f"generate.refine_options: unknown key(s) {', '.join(unknown)} for DATE; known: {', '.join(fields)}"
            )
        values = {}
        for key, value in options.items():
            kind = type(getattr(cls, key))
            ok = (
                isinstance(value, bool)
                if kind is bool
                else (isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool))
            )
            if not ok:
                raise UserError(f"generate.refine_options.{key} must be {kind.__name__}, got {value!r}")
            if kind is float and not math.isfinite(value):
                raise UserError(f"generate.refine_options.{key} must be a finite number, got {value!r}")
            values[key] = kind(value)
        opts = cls(**values)
        if opts.step_size < 0 or opts.prior_weight < 0:
            raise UserError("generate.refine_options: step_size and prior_weight must be ≥ 0")
        if opts.updates < 0 or opts.every < 1 or opts.batch < 0:
            raise UserError("generate.refine_options: updates and batch must be ≥ 0 and every ≥ 1")
        if not 0.0 <= opts.start <= opts.stop <= 1.0:
            raise UserError(f"generate.refine_options: need 0 ≤ start ≤ stop ≤ 1, got {opts.start}, {opts.stop}")
        return opts

    def refined_steps(self, num_steps: int) -> list[int]:
        """Indices of the sampling steps whose conditioning is refined (never the last one)."""
        if self.step_size == 0 or self.updates == 0:
            return []
        return [
            i
            for i in range(num_steps - 1)
            if i % self.every == 0 and self.start * num_steps <= i < self.stop * num_steps
        ]


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name (StableDiffusionLoraLoaderMixin)


@dataclass
class LoraConfig:
    """`lora:` — adapting the generator to a label set's real shots (`augment adapt`, augment.adapt.lora) and the
    adapter the learner and generation apply (`weights`). The training defaults are DataDream's (ExplainableML/
    DataDream datadream.py, bash_run.sh; ../shared/PEERS-LORA.md): rank = alpha = 16, gaussian init, the UNet's
    to_q/k/v/out.0 and the text encoder's q/k/v/out_proj, AdamW lr 1e-4 wd 1e-2, cosine with 100 warm-up steps,
    batch 8, 200 epochs, clip 1.0, plain ε-MSE (no prior loss); dataset-level (one adapter on all classes' shots)."""

    weights: str | None = field(
        default=None,
        metadata=flag("--lora", "a LoRA on the generator (a directory `augment adapt` made, or any diffusers "
                      f"LoRA directory holding {LORA_WEIGHTS}), fused into it before learning and generating"),
    )  # fmt: skip
    scale: float = 1.0  # the adapter's weight when fused (DataDream generates at 1.0)
    rank: int = field(default=16, metadata=flag("--rank", "LoRA rank (DataDream: 16)", int))
    alpha: float = 16.0  # LoRA alpha: the update is scaled by alpha / rank
    text_encoder: bool = True  # also adapt the text encoder's attention (DataDream: on)
    epochs: int = field(default=200, metadata=flag("--epochs", "passes over the shots (DataDream: 200)", int))
    max_steps: int | None = field(
        default=None, metadata=flag("--max-steps", "optimizer steps at most (default: epochs × batches)", int)
    )
    batch_size: int = field(default=8, metadata=flag("--batch-size", "images per step (DataDream: 8)", int))
    lr: float = field(default=1e-4, metadata=flag("--lr", "learning rate (DataDream: 0.0001)", float))
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # or "constant"
    grad_clip: float = 1.0
    caption: str = "a photo of a {name}"  # each shot's caption; DataDream: "a {domain }photo of a {name}"
    resolution: int | None = None  # None → the generator's native size; images: short side resized, random crop
    gradient_checkpointing: bool = False
    seed: int = field(default=0, metadata=flag("--seed", "seed (the same seed gives the same adapter)", int))
    checkpoint_every: int = 100  # save the trainer's state every N steps (resume after a kill); 0: never

    def validate(self) -> None:
        check_types(self, "lora")
        for key in ("rank", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"lora.{key} must be ≥ 1, got {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"lora.max_steps must be ≥ 1 (or null), got {self.max_steps}")
        for key in ("lr", "alpha", "grad_clip"):
            if not getattr(self, key) > 0:
                raise UserError(f"lora.{key} must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "warmup_steps", "seed", "checkpoint_every", "scale"):
            if getattr(self, key) < 0:
                raise UserError(f"lora.{key} must be ≥ 0, got {getattr(self, key)}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise UserError(f"lora.lr_schedule must be cosine or constant, got {self.lr_schedule!r}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise UserError(f"lora.resolution must be a positive multiple of 8 (or null), got {self.resolution}")
        if "{name}" not in self.caption:
            raise UserError(f"lora.caption must contain {{name}}, got {self.caption!r}")
        try:
            self.caption.format(name="x")
        except (KeyError, IndexError, ValueError):
            raise UserError(f"lora.caption: only {{name}} may be a field, got {self.caption!r}") from None
        if self.weights is not None:
            check_lora_weights(self.weights)


def check_lora_weights(spec: str) -> None:
    """A LoRA directory: local, holding diffusers' weights file; peft installed to load it (UserError else)."""
    from pathlib import Path

    path = Path(spec).expanduser()
    if not spec.strip() or "://" in spec:
        raise UserError(f"lora.weights must be a local directory, got {spec!r}", "lora.weights")
    if not path.is_dir():
        raise UserError(f"{spec}: no such LoRA directory", "lora.weights")
    if not (path / LORA_WEIGHTS).is_file():
        raise UserError(f"{spec}: not a LoRA directory (no {LORA_WEIGHTS})", "lora.weights")
    require_peft()


def require_peft() -> None:
    """diffusers loads and trains LoRA through peft: an optional extra."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise UserError("a LoRA needs peft: pip install 'augment[lora]'", "lora")
