"""`learn_tokens`: one discriminative token per class of a label set, into OUT/tokens/.

Writes OUT/tokens/<slug>/{learned_embeds.safetensors,meta.json} and OUT/manifest.json. The unit of work is a
group of classes planned from the label set and the config alone (`plan_groups`): a worker, a launcher's rank
or a Ray task learns a group's classes together, so the tokens are the same bytes whoever learns which group.
Classes already learned in OUT are skipped and the learner checkpoints every step per group, so an
interrupted run continues where it stopped, mid-class.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from augment.config import RunConfig
from augment.data.tokens_io import is_learned
from augment.devices import bind_device, describe_device, resolve_device
from augment.labels import LabelClass, LabelSet, as_label_set
from augment.learn.learner import TokenLearner
from augment.learn.resume import LearnerCheckpoint, checkpoint_path, learn_fingerprint
from augment.models.fingerprint import manifest_config, source_identity
from augment.models.generator import check_sdxl_options, generator_source, load_generator, text_encoder_fingerprint
from augment.models.guides import check_spec, load_guide, loaded_spec, match_labels
from augment.models.hub import check_hub, job_models
from augment.models.lora import describe_lora
from augment.models.prompting import cuts_note, prompt_cuts
from augment.models.sampling import UNetRows, learner_calls
from augment.run.manifest import update_manifest
from augment.run.storage import check_out, converts_storage_errors, out_path, storage_errors
from augment.run.workers import Workers, lock_worker_slot


@dataclass
class LearnResult:
    """What one `learn_tokens` call did (this worker's share, or every group under Ray)."""

    learned: dict[int, dict] = field(default_factory=dict)  # position → the token's meta.json
    pending: int = 0  # this worker's classes without a token when the call began
    seconds: float = 0.0
    note: str | None = None  # why a learner checkpoint was not used, if one was not

    def summary(self) -> str:
        n = len(self.learned)
        if not n and not self.pending:
            return "all classes of this worker already learned"
        accs = [m["final_accuracy"] for m in self.learned.values()]
        return (
            f"learned {n} token(s) in {self.seconds:.1f} s ({self.seconds / max(n, 1):.1f} s/class); "
            f"mean steps {sum(m['steps'] for m in self.learned.values()) / max(n, 1):.1f}, "
            f"final batch accuracy {100 * sum(accs) / max(len(accs), 1):.1f}%"
        )


def plan_groups(labels: LabelSet, group_size: int) -> list[list[LabelClass]]:
    """The label set's classes cut into groups of `group_size`, in order: the units of learning work. They depend
    on the label set and the config only, never on how many workers there are."""
    classes = list(labels.classes)
    return [classes[i : i + group_size] for i in range(0, len(classes), group_size)]


@converts_storage_errors()
def learn_tokens(
    labels: str | Path | LabelSet,
    out: str | Path,
    config: RunConfig,
    *,
    workers: Workers | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> LearnResult:
    """Learn the tokens of this worker's pending groups (every group with `Workers(engine="ray")`) into OUT.
    Everything cheap is checked first (label set, config, output directory, workers: UserError), then the
    guide and the generator are loaded. `overwrite` discards a learner checkpoint made with another config
    instead of refusing it."""

    labels, out, workers = as_label_set(labels), out_path(out, "out"), workers or Workers()
    config.validate()
    check_sdxl_options(config, ("learn",))  # before any model loads
    workers.check()
    index, count = workers.slot()
    check_out(out)
    check_spec(loaded_spec(config))
    groups = plan_groups(labels, config.learn.group_size)
    mine = list(range(len(groups)))[index::count]
    if count > len(groups) and index == len(groups):  # said once, by the first worker without a group
        print(f"augment: note: {count} workers but {len(groups)} learning group(s) of up to "
              f"{config.learn.group_size} classes: workers {len(groups)}..{count - 1} have none to learn "
              "(a smaller --group-size gives more)", file=sys.stderr)  # fmt: skip
    todo = [g for g in mine if checkpoint_path(out, g).is_file() or any(not is_learned(out, c) for c in groups[g])]
    pending = sum(not is_learned(out, c) for g in todo for c in groups[g])
    if not todo:
        return LearnResult()
    if workers.engine == "ray":
        return _learn_on_ray(labels, out, config, workers, todo, pending, overwrite, progress)
    t0 = time.time()
    with progress_bar(pending, not progress) as bar:
        learned, notes, _ = learn_groups(labels, out, config, todo, overwrite, bar, (index, count))
    return LearnResult(learned, pending, time.time() - t0, "; ".join(notes) or None)


def learn_groups(
    labels: LabelSet,
    out: Path,
    config: RunConfig,
    groups: list[int],
    overwrite: bool = False,
    bar: tqdm | None = None,
    worker: tuple[int, int] | None = (0, 1),
) -> tuple[dict[int, dict], list[str], dict]:
    """Load the guide and the generator once, then learn each planned group in `groups` (indices into
    `plan_groups`) from its checkpoint, if any. Returns (position → meta of the tokens learned, notes, the
    manifest's learn entry). `worker`: this process's slot (its lock and manifest line); None under Ray,
    where the driver keeps the manifest."""
    out = out_path(out, "out")
    planned = plan_groups(labels, config.learn.group_size)
    device = resolve_device(config.device)
    bind_device(device)
    guide_spec = loaded_spec(config)
    hub_note = check_hub(job_models(config.generator, guide_spec))  # one line now, not retries later
    if hub_note:
        print(f"augment: note: {hub_note}", file=sys.stderr)
    guide = load_guide(guide_spec, device, labels.names())  # names and index range before the generator
    matched = match_labels(labels, guide, config.label_match)
    if matched.note:
        print(f"augment: note: {matched.note}", file=sys.stderr)
    pipe = load_generator(config.generator, device, config.dtype, config.lora)
    check_sdxl_options(config, ("learn",), pipe)  # a hub generator not cached before: known now
    info = {"generator": generator_source(pipe), "text_encoder": text_encoder_fingerprint(pipe)}
    if config.lora.weights is not None:  # in every token's meta.json: generation compares it with its own
        info["lora"] = describe_lora(config.lora.weights, config.lora.scale)
    mine = [c for g in groups for c in planned[g] if not is_learned(out, c)]  # what this process learns
    cut = prompt_cuts(pipe.tokenizer, config.learn.prompts, [(labels.token(c), c.name) for c in mine])
    if cut:
        print(f"augment: note: {cuts_note(cut, pipe.tokenizer.model_max_length)}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"labels": labels.names(), "label_file": labels.path, "config": manifest_config(config), **info,
                **({"prompts_cut": cut} if cut else {}),
                "worker": list(worker or (0, 1)), "engine": "local" if worker else "ray"}  # fmt: skip
    if worker is not None:
        lock_worker_slot(out, *worker)
        update_manifest(out, "learn", manifest, {"index": worker[0], "count": worker[1], **describe_device(device)})
    learner = TokenLearner(pipe, guide, labels, matched.indices, config.learn, out, info)
    adapted = info["text_encoder"] + (f"+{info['lora']['identity']}@{config.lora.scale}" if "lora" in info else "")
    fingerprint = learn_fingerprint(config.learn, labels, source_identity(guide_spec), adapted)
    learned: dict[int, dict] = {}
    notes: list[str] = []
    counted = UNetRows(pipe.unet)
    todo_classes = [c for g in groups for c in planned[g] if not is_learned(out, c)]
    for g in groups:
        checkpoint = LearnerCheckpoint(out, g, fingerprint, device, pipe.unet.dtype)
        before = len(learned)

        def report(p: dict, before=before, g=g) -> None:
            if bar is not None:
                bar.n = before + p["done"]
                acc = "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.0f}%"
                bar.set_postfix_str(f"group {g} active {p['active']} step {p['step']} batch acc {acc}")

        with counted:
            learned.update(learner.run(planned[g], report, checkpoint, overwrite))
        if checkpoint.note and checkpoint.note not in notes:
            notes.append(checkpoint.note)
    c = config.learn
    calls, guided = learner_calls(learner.scheduler, c)
    counts = {  # this process's: planned (at most, for the classes it had to learn) and done (a hook on the UNet)
        "per_class_step": c.batch_size * (calls + guided),
        "classes": len(todo_classes),
        "planned_at_most": len(todo_classes) * c.max_steps * c.batch_size * (calls + guided),
        "done": counted.rows,
        "class_steps_done": learner.class_steps,
        "shallow_done": counted.shallow,  # rows on the shallow branch (learn.cache_interval > 1)
    }
    if worker is not None:  # per worker (workers.learn.<i>of<n>): each process counts its own
        update_manifest(out, "learn", {**manifest, **({"resume": "; ".join(notes)} if notes else {})},
                        {"index": worker[0], "count": worker[1], **describe_device(device), "unet_evaluations": counts})  # fmt: skip
    return learned, notes, {**manifest, "_unet": counts}


def _learn_group_task(labels: LabelSet, out: str, config: RunConfig, group: int, overwrite: bool):
    """One Ray task: one planned group, in a worker process of the cluster (augment.run.engine)."""
    with storage_errors(out):
        return learn_groups(labels, out_path(out, "out"), config, [group], overwrite, None, None)


def _learn_on_ray(labels, out, config, workers, todo, pending, overwrite, progress) -> LearnResult:
    from augment.run.engine import ray_session, run_tasks

    t0 = time.time()
    learned: dict[int, dict] = {}
    notes: list[str] = []
    manifest: dict = {}
    if isinstance(out, Path):  # one driver per local OUT (a second Ray driver, or a local run, is refused)
        out.mkdir(parents=True, exist_ok=True)
        lock_worker_slot(out, 0, 1)
    with progress_bar(pending, not progress) as bar, ray_session(workers):
        counts: dict[str, int] = {}

        def done(result) -> None:
            got, got_notes, entry = result
            learned.update(got)
            notes.extend(n for n in got_notes if n not in notes)
            for key, value in entry.pop("_unet", {}).items():  # summed over the groups' tasks
                counts[key] = value if key == "per_class_step" else counts.get(key, 0) + value
            cut = {**manifest.get("prompts_cut", {}), **entry.pop("prompts_cut", {})}
            manifest.update(entry, **({"prompts_cut": cut} if cut else {}))
            bar.update(len(got))

        run_tasks(_learn_group_task, [(labels, str(out), config, g, overwrite) for g in todo], workers, done)
    if manifest:
        resume = {"resume": "; ".join(notes)} if notes else {}
        driver = {"index": 0, "count": 1, "engine": "ray", "groups": len(todo), "unet_evaluations": counts}
        update_manifest(out, "learn", {**manifest, **resume}, driver)
    return LearnResult(learned, pending, time.time() - t0, "; ".join(notes) or None)


def progress_bar(total: int, disable: bool):

    return tqdm(total=total, unit="class", desc="learning tokens", disable=disable, dynamic_ncols=True)
