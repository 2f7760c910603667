"""Run configuration: dataclasses, presets (augment/presets/*.yaml, shipped in the wheel), YAML files and CLI overrides.

A preset or config file is YAML with top-level keys `generator`, `guide`, `eval_classifier`, `clip_templates`,
`device`, `dtype`, `label_match`, and sections `learn:`, `generate:` and `lora:` whose keys are the fields of LearnConfig /
GenerateConfig / LoraConfig.
The string `{toy}` in any value expands to the directory of the toy world's committed weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from augment.errors import UserError
from augment.settings import (  # noqa: F401  (re-exported: augment.config is where users look)
    CLAMPS,
    CUTOFF_HELP,
    DTYPE_NAMES,
    KEEP,
    LABEL_MATCH,
    REFINE_METHODS,
    SAMPLERS,
    DateOptions,
    LoraConfig,
    check_cache,
    check_device,
    check_scheduler,
    check_size,
    check_templates,
    check_types,
    classes_per_step,
    flag,
)

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
TOY_WEIGHTS = Path(__file__).resolve().parent / "toy" / "weights"  # what `{toy}` in a value expands to
CACHE_HELP = (
    "feature reuse between denoising steps (DeepCache): the full UNet every N-th call, only its shallow branch in "
    "between (default: preset, else 1 = off; augment.models.feature_cache)"
)
PAPER_PROMPTS = ["A high-resolution realistic image of {token} {name}", "A photo of {token} {name}"]
# Settings added after runs were already being made, with the default that means "as before": left out of the
# config hashes (generation units, learner checkpoints) while at it, so a run begun by an earlier version continues.
ADDED_LATER = {
    "guidance_cutoff": 1.0,
    "keep": "last",  # (runs begun before it kept the last vector: their checkpoints now count as another config)
    "clamp": "straight-through",
    "reseed_on_collapse": False,
    "grad_clip_mode": "step",
    "shuffle_prompts": False,
    "cache_interval": 1,
    "cache_branch": 0,
}


def hashed_settings(section: dict[str, Any]) -> dict[str, Any]:
    """A config section as the hashes see it: without the ADDED_LATER settings left at their default, and DATE's
    options as the keys set away from their defaults (what a config file held before they were typed)."""
    out = {k: v for k, v in section.items() if k not in ADDED_LATER or v != ADDED_LATER[k]}
    if out.get("cache_interval", 1) == 1:  # the branch means nothing without caching
        out.pop("cache_branch", None)
    if isinstance(out.get("refine_options"), dict):
        defaults = asdict(DateOptions())
        out["refine_options"] = {k: v for k, v in out["refine_options"].items() if v != defaults.get(k)}
    return out


@dataclass
class LearnConfig:
    """Token learning. Defaults are the paper's settings (Schwartz et al. 2023, §4); docs/full-scale.md "Presets" says
    where the code behind the paper (idansc/discriminative_class_tokens) differs and which preset has it."""

    init_word: str = field(
        default="a", metadata=flag("--init-word", "word that initialises every token (default: preset, else 'a')")
    )  # word whose embedding initialises every S_c ...
    init_words: dict[str, str] = field(default_factory=dict)  # ... unless the class name is listed here
    batch_size: int = field(
        default=5,
        metadata=flag(
            "--batch-size", "images per class per learning step (paper: 5)", int, build_flag="--learn-batch-size"
        ),
    )  # images per class per step
    max_classes_per_step: int | str = field(
        default="auto",
        metadata=flag(
            "--classes-per-step",
            "classes learned together in one UNet batch, or auto (as many as fit in memory)",
            classes_per_step,
        ),
    )  # classes learned together in one UNet batch; "auto": as many as
    # fit the device's free memory (augment.learn.memory)
    lr: float | None = field(
        default=None, metadata=flag("--lr", "learning rate (default 0.00025 × learning batch size)", float)
    )  # None → 0.00025 · batch_size (paper)
    weight_decay: float = 0.0  # AdamW's, on the token only (original code: 0.01)
    max_steps: int = field(
        default=200, metadata=flag("--max-steps", "learning steps per class at most (paper: 200)", int)
    )
    patience: int = 20  # stop after this many steps without loss improvement ...
    patience_min_accuracy: float = 0.5  # ... if at least this share of the batch is right
    stop_window: int = 1  # "right" is judged over the last N steps' samples ...
    stop_accuracy: float = 1.0  # ... and stops the class when at least this share is right
    # (paper: all; original code: more than 0.7 of 5, i.e. 0.8)
    noise: str = "fresh"  # "fresh": new noise every step; "fixed": the same batch_size
    # noises at every step (original code: its generator is reseeded
    # every epoch)
    grad_clip: float = 1.0
    grad_clip_mode: str = "step"  # "step": the step's gradient clipped at grad_clip; "original": as the code
    # behind the paper, each image's gradient added to a running sum clipped before it (augment.learn.original)
    keep: str = "best"  # the token saved: "best" (lowest loss), "after-best" (its update applied, as the
    # original code saves it) or "last" (augment.learn.state)
    clamp: str = "straight-through"  # decoded pixels clamped to [0, 1]: "straight-through" or "hard" (the
    # original code's; zero gradient where clamped: augment.models.decode)
    reseed_on_collapse: bool = False  # the original code's "training collapse": a step whose loss exceeds
    # twice the best moves the noise seed on by one
    shuffle_prompts: bool = False  # each step pairs the images with the prompts in a new random order (the
    # original's shuffled prompt DataLoader); else image j always takes prompt j
    guidance_scale: float = field(
        default=7.0, metadata=flag("--guidance-scale", "classifier-free guidance (paper: 7)", float, shared=True)
    )
    guidance_cutoff: float = field(
        default=1.0, metadata=flag("--guidance-cutoff", CUTOFF_HELP, float, shared=True)
    )  # as generate.guidance_cutoff
    num_inference_steps: int = field(
        default=50, metadata=flag("--steps", "denoising steps (paper: 50)", int, shared=True)
    )
    height: int | None = None  # None → the generator's native size
    width: int | None = None
    prompts: list[str] = field(default_factory=lambda: list(PAPER_PROMPTS))
    seed: int = field(default=0, metadata=flag("--seed", "seed", int, shared=True))
    scheduler: str = "pipeline"  # sampler while learning (augment.models.sampling): "pipeline" = the
    # generator's own, which generation uses too (SD 1.x: PNDM)
    grad_steps: int = 1  # UNet calls with gradient, counted from the last (paper: 1; the
    # original code's PNDM loop: 2, its last two calls)
    timestep_spacing: str | None = None  # override the sampler's spacing; None → the generator's own
    steps_offset: int | None = None  # override the sampler's offset; None → the generator's own. With
    # "leading" spacing the last step is at t = steps_offset
    objective: str = "final"  # "final": cross-entropy on the final image (paper); "x0": mean
    # cross-entropy on each of the last grad_steps steps' predicted
    # clean image x̂0, each through that step's UNet call only
    gradient_checkpointing: bool = False  # UNet and VAE recompute activations in backward (less memory)
    decode_batch: int = 4  # images per VAE decode + guide + backward in the gradient path:
    # bounds that part's memory whatever the UNet batch
    checkpoint_every: int = 1  # save the learner's state every N steps (augment.learn.resume); 0: never
    group_size: int = field(
        default=32,
        metadata=flag(
            "--group-size",
            "classes per unit of learning work (default 32): a worker or Ray task learns a group's classes "
            "together; tokens depend on it, never on how many workers run",
            int,
        ),
    )  # the label set is cut into groups of this many classes, in order (augment.jobs.learn.plan_groups)
    cache_interval: int = field(default=1, metadata=flag("--cache-interval", CACHE_HELP, int, shared=True))
    # (the learner's calls without gradient; its gradient calls always run the whole UNet)
    cache_branch: int = 0  # the shallow branch: down blocks 0..branch and their up blocks run on cached steps

    def validate(self) -> None:
        """Every value a run could trip on later, checked before any model is loaded (UserError)."""
        check_types(self, "learn")
        check_templates(self.prompts, need_token=True)
        mcs = self.max_classes_per_step
        if mcs != "auto" and (not isinstance(mcs, int) or isinstance(mcs, bool)):
            raise UserError(f"learn.max_classes_per_step must be a whole number or auto, got {mcs!r}")
        whole = ("batch_size", "max_steps", "num_inference_steps", "grad_steps", "decode_batch", "group_size")
        for key in whole + (("max_classes_per_step",) if mcs != "auto" else ()):
            if getattr(self, key) < 1:
                raise UserError(f"learn.{key} must be ≥ 1, got {getattr(self, key)}")
        choices = {
            "timestep_spacing": (None, "leading", "trailing", "linspace"),
            "objective": ("final", "x0"),
            "noise": ("fresh", "fixed"),
            "keep": KEEP,
            "clamp": CLAMPS,
            "grad_clip_mode": ("step", "original"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                names = " or ".join(str(a) for a in allowed if a is not None)
                raise UserError(f"learn.{key} must be {names}, got {getattr(self, key)!r}")
        if self.steps_offset is not None and self.steps_offset < 0:
            raise UserError(f"learn.steps_offset must be ≥ 0, got {self.steps_offset}")
        for key in ("stop_accuracy", "guidance_cutoff"):
            if not 0 < getattr(self, key) <= 1:
                raise UserError(f"learn.{key} must be in (0, 1], got {getattr(self, key)}")
        for key in ("checkpoint_every", "weight_decay", "patience", "seed"):
            if getattr(self, key) < 0:
                raise UserError(f"learn.{key} must be ≥ 0, got {getattr(self, key)}")
        for key in ("stop_window",):
            if getattr(self, key) < 1:
                raise UserError(f"learn.{key} must be ≥ 1, got {getattr(self, key)}")
        for key in ("grad_clip", "lr"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise UserError(f"learn.{key} must be > 0, got {getattr(self, key)}")
        check_scheduler(self.scheduler, "learn.scheduler")
        check_size(self, "learn")
        check_cache(self, "learn")
        if not 0 <= self.patience_min_accuracy <= 1:
            raise UserError(f"learn.patience_min_accuracy must be in [0, 1], got {self.patience_min_accuracy}")
        if not self.init_word.strip() or any(not k.strip() or not v.strip() for k, v in self.init_words.items()):
            raise UserError("learn.init_word and learn.init_words' words must be non-empty")
        if self.grad_clip_mode == "original" and self.objective != "final":
            raise UserError("learn.grad_clip_mode original needs learn.objective final (the original's objective)")


@dataclass
class GenerateConfig:
    """Mass generation into shards."""

    images_per_class: int = field(
        default=100, metadata=flag("--images-per-class", "images per class (default: preset, else 100)", int)
    )
    shard_size: int = field(
        default=100, metadata=flag("--shard-size", "images per shard (one shard = one unit of work)", int)
    )
    batch_size: int = field(
        default=16,
        metadata=flag("--batch-size", "images per pipeline call (changes the images by float rounding only)", int),
    )
    guidance_scale: float = field(
        default=7.0, metadata=flag("--guidance-scale", "classifier-free guidance", float, shared=True)
    )
    guidance_cutoff: float = field(default=1.0, metadata=flag("--guidance-cutoff", CUTOFF_HELP, float, shared=True))
    # (the rest run the UNet on the conditional prompt alone: one evaluation per call instead of two)
    num_inference_steps: int = field(
        default=50, metadata=flag("--steps", "denoising steps per image", int, shared=True)
    )
    height: int | None = None
    width: int | None = None
    prompts: list[str] = field(default_factory=lambda: list(PAPER_PROMPTS))
    image_format: str = field(
        default="jpg", metadata=flag("--format", "image format in the shards", choices=("jpg", "png"))
    )
    jpeg_quality: int = 95
    seed: int = field(default=0, metadata=flag("--seed", "global seed", int, shared=True))
    scheduler: str = field(
        default="pipeline",
        metadata=flag(
            "--scheduler",
            "sampler: " + ", ".join(SAMPLERS) + " (pipeline: the generator's own; default: preset, else pipeline)",
        ),
    )  # augment.models.sampling
    channels_last: bool | None = field(
        default=None,
        metadata=flag(
            "--channels-last", "UNet and VAE in channels-last memory format (default: on CUDA only)", action="boolean"
        ),
    )
    compile: bool = field(
        default=False,
        metadata=flag(
            "--compile", "torch.compile the UNet: faster batches after a compilation warm-up", action="store_true"
        ),
    )
    refine: str | None = field(
        default=None,
        metadata=flag(
            "--refine",
            "refine the prompt embeddings while sampling: date = DATE, reward = the guide's log-probability of the class (default: preset, else none)",
            choices=("none", *REFINE_METHODS),
        ),
    )
    refine_options: DateOptions = field(default_factory=lambda: DateOptions())  # a mapping in YAML: parsed
    cache_interval: int = field(default=1, metadata=flag("--cache-interval", CACHE_HELP, int, shared=True))
    cache_branch: int = 0  # as learn.cache_branch

    def validate(self) -> None:
        """Every value generation could trip on later, checked before any model is loaded (UserError)."""
        if not isinstance(self.refine_options, DateOptions):  # a mapping assigned after the config was built
            self.refine_options = DateOptions.parse(self.refine_options)
        check_types(self, "generate")
        check_templates(self.prompts)
        for key in ("batch_size", "num_inference_steps", "images_per_class", "shard_size"):
            if getattr(self, key) < 1:
                raise UserError(f"generate.{key} must be ≥ 1, got {getattr(self, key)}")
        if self.seed < 0:
            raise UserError(f"generate.seed must be ≥ 0, got {self.seed}")
        if self.image_format not in ("jpg", "png"):
            raise UserError(f"generate.image_format must be jpg or png, got {self.image_format!r}")
        check_scheduler(self.scheduler, "generate.scheduler")
        if not 0 < self.guidance_cutoff <= 1:
            raise UserError(f"generate.guidance_cutoff must be in (0, 1], got {self.guidance_cutoff}")
        if self.refine is not None and self.refine not in REFINE_METHODS:
            raise UserError(
                f"generate.refine must be one of {', '.join(REFINE_METHODS)} (or null), got {self.refine!r}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"generate.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        check_size(self, "generate")
        check_cache(self, "generate")
        if self.refine is not None and self.cache_interval > 1:
            raise UserError("generate.cache_interval > 1 with refine: DATE's sampler is not cached; use one of them")
        if self.compile and self.cache_interval > 1:
            raise UserError("generate.cache_interval > 1 with compile: the cache replaces the UNet's forward; use one")

    def __post_init__(self) -> None:
        if self.refine == "none":  # --refine none: off, whatever the preset says
            self.refine = None
        if not isinstance(self.refine_options, DateOptions):  # YAML, overrides and callers give a mapping
            self.refine_options = DateOptions.parse(self.refine_options)

    @property
    def date(self) -> DateOptions | None:
        """DATE's options when generation refines with it, else None."""
        return self.refine_options if self.refine == "date" else None


@dataclass
class RunConfig:
    generator: str = field(
        default="CompVis/stable-diffusion-v1-4",
        metadata=flag("--generator", "diffusers Stable Diffusion pipeline: hub id or local directory"),
    )
    guide: str = field(
        default="timm:vit_base_patch16_224.augreg2_in21k_ft_in1k",
        metadata=flag(
            "--guide", "guide classifier spec: timm:NAME, torchvision:NAME, hf:ID_OR_DIR, ckpt:DIR, clip:ID_OR_DIR"
        ),
    )
    eval_classifier: str | None = None
    # the prompt templates of a `clip:` guide whose spec names none (augment.models.guides.clip.TEMPLATES or a file);
    # the CUB presets: bird
    clip_templates: str = "imagenet"
    device: str = field(
        default="auto",
        metadata=flag("--device", "auto, cpu, cuda, cuda:1 ... (auto and cuda: this process's GPU by its local rank)"),
    )
    dtype: str = field(default="auto", metadata=flag("--dtype", "auto, fp32, fp16, bf16"))
    label_match: str = field(
        default="check",
        metadata=flag(
            "--label-match",
            "how classes find the guide's class index: check (default) refuses a file whose index<TAB>name lines do not match the guide's label names; by-index trusts the indices; by-name looks each name up",
            choices=LABEL_MATCH,
        ),
    )
    # (augment.labels.match_to_guide)
    learn: LearnConfig = field(default_factory=LearnConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapting the generator (augment adapt) and its adapter

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """The whole run config at once, before any model loads (UserError naming the key): the run-level keys
        here (a typo in YAML fails now, not after the guide has loaded), then each stage's own checks."""
        check_types(self, "")
        for key in ("generator", "guide", "clip_templates", "device", "dtype", "label_match"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{key} must be a non-empty string, got {value!r}", key)
        if self.eval_classifier is not None and (not isinstance(self.eval_classifier, str) or not self.eval_classifier):
            raise UserError(f"eval_classifier must be a classifier spec, got {self.eval_classifier!r}")
        if self.dtype not in DTYPE_NAMES:
            raise UserError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}", "dtype")
        if self.label_match not in LABEL_MATCH:
            raise UserError(
                f"label_match must be one of {', '.join(LABEL_MATCH)}, got {self.label_match!r}", "label_match"
            )
        check_device(self.device)
        self.learn.validate()
        self.generate.validate()
        self.lora.validate()


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("{toy}", str(TOY_WEIGHTS))
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


SECTIONS = ("learn", "generate", "lora")  # a config's mappings of their own (dataclasses of RunConfig)
MAX_CONFIG_BYTES = 1 << 20  # a config file's size at most (1 MiB; presets are under 4 KiB)
MAX_CONFIG_NODES = 100_000  # values in it, counting every alias expansion (a YAML "billion laughs" stops here)
MAX_CONFIG_DEPTH = 16  # mappings and lists inside each other


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: not a regular file (a config is a YAML file)")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"{path}: a config file is at most {MAX_CONFIG_BYTES >> 20} MiB")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise UserError(f"{path}: cannot read config ({type(e).__name__}: {first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a YAML mapping")
    _check_shape(data, path)
    return data


def _check_shape(data: Any, path: Path) -> None:
    """Refuse a config nested deeper than MAX_CONFIG_DEPTH or holding more than MAX_CONFIG_NODES values."""
    seen, todo = 0, [(data, 1)]
    while todo:
        value, depth = todo.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise UserError(f"{path}: more than {MAX_CONFIG_NODES} values (YAML aliases counted as expanded)")
        if isinstance(value, (dict, list)):
            if depth > MAX_CONFIG_DEPTH:
                raise UserError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels")
            items = value.values() if isinstance(value, dict) else value
            todo.extend((v, depth + 1) for v in items)


def _section(cls, values: dict[str, Any] | None, where: str):
    if values is None:  # `learn:` with everything under it commented out
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"{where}: must be a mapping of keys to values, got {type(values).__name__}")
    _string_keys(values, where)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**values)


def _string_keys(values: dict, where: str) -> None:
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise UserError(f"{where}: keys are names, got {bad[0]!r}")


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Resolve defaults ← preset ← config file ← overrides ("learn.lr": 1e-3 or "guide": "timm:x")."""
    merged: dict[str, Any] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if preset is not None:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise UserError(f"unknown preset {preset!r}; available: {', '.join(list_presets())}")
        sources.append((str(path), _read_yaml(path)))
    if config_file is not None:
        sources.append((str(config_file), _read_yaml(Path(config_file))))
    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():  # "generate.refine_options.step_size" → nested mappings
        if value is None:
            continue
        *path, name = key.split(".")
        target = nested
        for part in path:
            target = target.setdefault(part, {})
        target[name] = value
    sources.append(("command line", nested))
    for _, data in sources:
        for key, value in data.items():
            if key in SECTIONS and isinstance(value, dict):
                section = merged.setdefault(key, {})
                for name, v in value.items():  # DATE's options merge key by key; any other value replaces
                    both = name == "refine_options" and isinstance(v, dict) and isinstance(section.get(name), dict)
                    section[name] = {**section[name], **v} if both else v
            else:
                merged[key] = value
    merged = _expand(merged)
    _string_keys(merged, "config")
    top = {k: v for k, v in merged.items() if k not in SECTIONS}
    names = {f.name for f in dataclasses.fields(RunConfig)} - set(SECTIONS)
    unknown = sorted(set(top) - names)
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    learn = _section(LearnConfig, merged.get("learn", {}), "learn")
    generate = _section(GenerateConfig, merged.get("generate", {}), "generate")
    lora = _section(LoraConfig, merged.get("lora", {}), "lora")
    return RunConfig(**top, learn=learn, generate=generate, lora=lora)
