"""The cost of a run before any work: UNet evaluations of learning and of generation, per class, in total and per
worker, from the label set, the config and the generator's scheduler config alone (no model loads, nothing written).

One UNet evaluation is one image row through one UNet call (a call with classifier-free guidance evaluates two
rows per image: the unconditional and the conditional prompt). The UNet is the whole cost of a run on every
device, so these counts are what a run costs; `augment build|learn|generate --plan` prints them, and the
manifest records the counts a run did beside the planned ones (`unet_evaluations`).

- A sampler makes `len(scheduler.timesteps)` UNet calls for `num_inference_steps` steps (PNDM, SD's own: one
  more than the steps, its warm-up call); the first `guided_calls(calls, guidance_cutoff)` of them use CFG.
- Generation: per image, calls + the guided ones when guidance_scale > 1 (diffusers' pipelines skip CFG at ≤ 1).
  DATE's refinement adds gradient calls that are not counted here (`refine` is named in the plan).
- Learning: per class and learner step, batch_size × (calls + guided calls) (the learner always evaluates both
  halves where guided), at most `max_steps` steps per class (a class stops earlier when its stop rule says so:
  the learning figures are maxima). fp16 steps redone after a loss-scale overflow are not planned either.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from augment.config import RunConfig
from augment.data.shards import plan_units
from augment.errors import UserError
from augment.jobs.learn import plan_groups
from augment.labels import LabelSet, as_label_set
from augment.models.feature_cache import shallow_rows
from augment.models.generator import check_sdxl_options
from augment.models.sampling import image_calls, learner_calls
from augment.run.workers import Workers

# The scheduler configs of the presets' hub generators, as their repos hold them (augment/testing/sd_configs,
# read from the hub files): a plan for them needs neither the network nor the cache.
KNOWN_SCHEDULERS = {"CompVis/stable-diffusion-v1-4": "sd14", "stabilityai/stable-diffusion-2-1-base": "sd21-base",
                    "stabilityai/stable-diffusion-2-1": "sd21",
                    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl-base"}  # fmt: skip


@dataclass
class StagePlan:
    calls_per_image: int  # UNet calls of the sampler for one image
    guided_calls: int  # of which with classifier-free guidance (two rows each)
    evaluations_per_unit: int  # per image (generation) or per class-step (learning)
    shallow_per_unit: int  # of which on the shallow branch only (cache_interval > 1: cached deep features)
    units: int  # images (generation) or class-steps at most (learning)
    evaluations: int  # in total (learning: at most)
    per_worker: list[int] = field(default_factory=list)  # evaluations of each worker's share


RATE_KEYS = ("learn_rows_per_s", "generate_rows_per_s")  # UNet rows per second, measured (gpu_check's "rates")


def read_rates(path: str | Path) -> dict[str, float]:
    """Measured rates from a JSON file: {"rates": {...}} as benchmarks/gpu_check.py writes it, or the mapping
    itself; each of RATE_KEYS present a positive number (UserError otherwise, one line)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"--rates {path}: cannot read a JSON file ({type(e).__name__})", "rates") from None
    rates = data.get("rates", data) if isinstance(data, dict) else None
    if not isinstance(rates, dict) or not any(k in rates for k in RATE_KEYS):
        raise UserError(f"--rates {path}: no {' or '.join(RATE_KEYS)} in it", "rates")
    out = {}
    for key in RATE_KEYS:
        if key in rates:
            v = rates[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
                raise UserError(f"--rates {path}: {key} must be a positive number, got {v!r}", "rates")
            out[key] = float(v)
    if isinstance(rates.get("device"), str):
        out["device"] = rates["device"]  # type: ignore[assignment]
    return out


@dataclass
class RunPlan:
    classes: int
    workers: int
    learn: StagePlan | None
    generate: StagePlan | None
    notes: list[str] = field(default_factory=list)
    rates: dict | None = None  # measured UNet rows per second (read_rates): the plan's time estimate

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"plan: {self.classes} classes, {self.workers} worker(s); UNet evaluations (one image row through "
                 "one UNet call)"]  # fmt: skip
        if self.learn is not None:
            p = self.learn
            lines.append(f"  learn     at most {p.evaluations:,}: {p.evaluations_per_unit:,} per class-step "
                         f"({p.calls_per_image} calls, {p.guided_calls} guided, per image) × at most "
                         f"{p.units:,} class-steps{_shallow(p)}")  # fmt: skip
        if self.generate is not None:
            p = self.generate
            lines.append(f"  generate  {p.evaluations:,}: {p.evaluations_per_unit} per image ({p.calls_per_image} "
                         f"calls, {p.guided_calls} guided) × {p.units:,} images{_shallow(p)}")  # fmt: skip
        if self.workers > 1:
            for i in range(self.workers):
                parts = [f"{name} {getattr(self, name).per_worker[i]:,}" for name in ("learn", "generate")
                         if getattr(self, name) is not None]  # fmt: skip
                lines.append(f"  worker {i}: " + ", ".join(parts))
        lines += self._times()
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def seconds(self) -> dict[str, float]:
        """Each stage's time at the measured rates, for its busiest worker (learning: at most)."""
        out = {}
        for name in ("learn", "generate"):
            stage, rate = getattr(self, name), (self.rates or {}).get(f"{name}_rows_per_s")
            if stage is not None and rate:
                out[name] = max(stage.per_worker or [stage.evaluations]) / rate
        return out

    def _times(self) -> list[str]:
        times = self.seconds()
        if not times:
            return []
        where = f" measured on {self.rates['device']}" if self.rates.get("device") else ""
        parts = [f"{name} {'at most ' if name == 'learn' else ''}{_duration(s)}" for name, s in times.items()]
        per = ", the busiest worker" if self.workers > 1 else ""
        return [f"  time at the rates{where}{per}: " + ", ".join(parts)]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _shallow(p: StagePlan) -> str:
    if not p.shallow_per_unit:
        return ""
    full = p.evaluations_per_unit - p.shallow_per_unit
    return (
        f"; cached: {full} of the {p.evaluations_per_unit} run the whole UNet, {p.shallow_per_unit} its shallow branch"
    )


def scheduler_config(generator: str) -> dict:
    """The generator's scheduler/scheduler_config.json: from its directory, the Hugging Face cache, the table of
    the presets' generators, or the hub (a few hundred bytes); UserError when none has it."""
    local = Path(generator).expanduser() / "scheduler" / "scheduler_config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(generator, "scheduler/scheduler_config.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    if generator in KNOWN_SCHEDULERS:
        from augment.models.hub_files import HUB_CONFIGS, hub_file
        from augment.testing.sd import architecture_config

        name = KNOWN_SCHEDULERS[generator]
        if name in HUB_CONFIGS:  # the hub's own file, committed
            return hub_file(name, "scheduler/scheduler_config.json")
        return dict(architecture_config(name)["scheduler"])
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(generator, "scheduler/scheduler_config.json")).read_text())
    except Exception as e:  # noqa: BLE001  (offline, gated, no such repo: one line)
        raise UserError(f"generator {generator!r}: no scheduler config to plan with ({type(e).__name__})") from None


def _split(per_item: list[int], count: int) -> list[int]:
    """Each worker's share of items handed out as the jobs hand them out (item i to worker i mod count)."""
    return [sum(per_item[i::count]) for i in range(count)]


def plan_run(
    labels: str | Path | LabelSet,
    config: RunConfig,
    *,
    workers: Workers | None = None,
    stages: tuple[str, ...] = ("learn", "generate"),
    tokens: bool = True,
    rates: dict | None = None,
) -> RunPlan:
    """The UNet evaluations `stages` of a run would make (see the module docstring); nothing loads or is
    written. `tokens=False`: generation from plain prompts (the same count). `rates` (read_rates): the time
    they take at those measured rates."""
    import diffusers

    labels, workers = as_label_set(labels), workers or Workers()
    config.validate()
    check_sdxl_options(config, stages)  # what the run would refuse, the plan refuses
    workers.check()
    _, count = workers.slot()
    count = 1 if workers.engine == "ray" else count
    sched = scheduler_config(config.generator)
    try:
        base = getattr(diffusers, sched["_class_name"]).from_config(sched)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"generator {config.generator!r}: its scheduler config does not build ({e!r})") from None
    notes = []
    learn = generate = None
    if "learn" in stages:
        c = config.learn
        calls, guided = learner_calls(base, c)
        per_step = c.batch_size * (calls + guided)
        first = calls - min(max(c.grad_steps, 1), calls)  # the gradient calls run whole
        shallow = c.batch_size * (shallow_rows(calls, c.cache_interval, exact_from=first)
                                  + shallow_rows(guided, c.cache_interval, exact_from=first))  # fmt: skip
        groups = plan_groups(labels, c.group_size)
        per_group = [len(g) * c.max_steps * per_step for g in groups]
        learn = StagePlan(calls, guided, per_step, shallow, len(labels) * c.max_steps, sum(per_group),
                          _split(per_group, count))  # fmt: skip
        notes.append(f"learning: at most {c.max_steps} steps per class, a class stops earlier by its stop rule; "
                     f"each step also backpropagates through the last {c.grad_steps} call(s) of its "
                     f"{c.batch_size} conditional rows")  # fmt: skip
    if "generate" in stages:
        g = config.generate
        calls, guided = image_calls(base, g)
        units = plan_units(range(len(labels)), g.images_per_class, g.shard_size, g.seed)
        per_unit = [u.count * (calls + guided) for u in units]
        images = len(labels) * g.images_per_class
        shallow = shallow_rows(calls, g.cache_interval, lambda i: 2 if i < guided else 1)
        generate = StagePlan(calls, guided, calls + guided, shallow, images, sum(per_unit), _split(per_unit, count))
        if g.refine is not None:
            notes.append(f"generation refines with {g.refine}: its gradient calls are not in the plan")
    if workers.engine == "ray":
        notes.append("--engine ray: Ray hands the units to its workers as they free up; the totals hold")
    if rates:
        notes.append("time: the rates' device, generator size, dtype and settings are assumed to be this run's")
    return RunPlan(len(labels), count, learn, generate, notes, rates)
