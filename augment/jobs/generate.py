"""`generate_set`: a synthetic training set in webdataset shards, with learned tokens or plain prompts.

Writes OUT/shards/<set>-{number:06d}.{tar,json} (mixed shards: augment.data.shards), OUT/manifest.json and, once every unit exists,
OUT/_info.json and the dataset card. Finished units are skipped, so an interrupted run continues where it
stopped; workers take every N-th unit, or a pool of Ray actors takes them all (augment.run.engine).
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from augment.config import RunConfig, hashed_settings
from augment.data import shards
from augment.data.card import write_card
from augment.data.tokens_io import WEIGHTS, find_tokens_root, load_tokens, sampling_note, token_dir
from augment.devices import bind_device, describe_device, resolve_device
from augment.generate.loop import generate_units
from augment.labels import LabelSet, as_label_set
from augment.models.fingerprint import manifest_config, source_identity
from augment.models.generator import (
    check_sdxl_options,
    generator_source,
    load_generator,
    speed_up,
    text_encoder_fingerprint,
)
from augment.models.guides import load_guide, loaded_spec, match_labels
from augment.models.hub import check_hub, job_models
from augment.models.lora import describe_lora, lora_identity
from augment.models.prompting import cuts_note, prompt_cuts
from augment.models.sampling import UNetRows, image_calls, make_scheduler
from augment.run.manifest import update_manifest
from augment.run.storage import check_out, converts_storage_errors, out_path, storage_errors
from augment.run.workers import Workers, lock_worker_slot

NOT_HASHED = ("batch_size", "channels_last", "compile")  # settings that do not change what a unit holds
MANIFEST_EVERY = 10.0  # seconds between manifest refreshes while generating (it lists every finished shard)


@dataclass
class GenerateResult:
    """What one `generate_set` call did (this worker's share), or with `dry_run` what it would do."""

    units: int = 0  # shards written by this call
    images: int = 0
    seconds: float = 0.0
    complete: bool = False  # every unit of the set exists (_info.json and the card are written)
    total_units: int = 0
    done_units: int = 0  # units finished before this call (all workers)
    mine_units: int = 0  # units this worker takes (static split; every unit under Ray)
    pending: list[Any] | None = None  # this worker's pending units
    dry_run: bool = False
    worker: tuple[int, int] = (0, 1)
    note: str | None = None  # e.g. sampling otherwise than the tokens were learned

    def summary(self, out: str | Path = "OUT") -> str:
        if self.dry_run:
            index, count = self.worker
            pending = self.pending or []
            mine = (
                f"this worker ({index}/{count}): {self.mine_units} units, "
                f"{len(pending)} pending, {sum(u.count for u in pending)} images"
            )
            return (
                f"units: total {self.total_units}, done {self.done_units}, "
                f"pending {self.total_units - self.done_units}; {mine}"
            )
        if not self.units and not self.seconds:
            return f"all {self.mine_units} units of this worker already done in {out}"
        return (
            f"generated {self.images} images in {self.units} shard(s) in {self.seconds:.1f} s "
            f"({self.images / max(self.seconds, 1e-9):.2f} img/s)"
            + ("" if self.complete else "; other units still pending")
        )


def tokens_digest(root: Path, labels: LabelSet) -> str:
    """sha256 over every class's learned embedding file: a changed token changes the config hash."""

    h = hashlib.sha256()
    for c in labels.classes:
        h.update((token_dir(root, c) / WEIGHTS).read_bytes())
    return h.hexdigest()[:16]


@converts_storage_errors()
def generate_set(
    labels: str | Path | LabelSet,
    out: str | Path,
    config: RunConfig,
    *,
    tokens: str | Path | None = None,
    workers: Workers | None = None,
    overwrite: bool = False,
    score: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    made_by: str = "augment generate",
) -> GenerateResult:
    """Generate this worker's pending units of the set into OUT. `tokens`: a learn/build output directory
    (None: plain prompts, the baseline, same seeds). `score` records the guide's probability of each image
    (DATE refinement, `config.generate.refine`, loads the guide anyway). `overwrite` redoes units made with
    another config instead of refusing. Everything cheap is checked before any model is loaded (UserError)."""

    labels, out, workers, g = as_label_set(labels), out_path(out, "out"), workers or Workers(), config.generate
    config.validate()
    check_sdxl_options(config, ("generate",))  # before any model loads
    workers.check()
    units = shards.plan_units(range(len(labels)), g.images_per_class, g.shard_size, g.seed)
    root = None if tokens is None else find_tokens_root(tokens, labels)
    index, count = workers.slot()
    check_out(out)
    shards.check_layout(out)
    content = {
        "layout": shards.LAYOUT,
        "generate": {k: v for k, v in hashed_settings(config.to_dict()["generate"]).items() if k not in NOT_HASHED},
        "generator": source_identity(config.generator),
        "labels": labels.names(),
        "tokens": None if root is None else tokens_digest(root, labels),
    }
    adapter = lora_identity(config.lora.weights)  # (read once: it hashes the adapter's tensors)
    if adapter is not None:  # (left out without one: the hashes of runs made before adapters stay)
        content["lora"] = {"identity": adapter, "scale": config.lora.scale}
    if g.refine is not None:  # DATE's images depend on its reward: the guide and how classes map to it
        content["guide"] = {"spec": source_identity(loaded_spec(config)), "label_match": config.label_match}
    chash = shards.config_hash(content)
    mine = units[index::count]
    pending = shards.pending_units(out, labels.name, mine, chash, overwrite)
    base = {"total_units": len(units), "mine_units": len(mine), "worker": (index, count), "pending": pending,
            "note": None if root is None else sampling_note(root, labels, g, adapter)}  # fmt: skip
    if dry_run:
        done = len(units) - len(shards.pending_units(out, labels.name, units, chash, True))
        return GenerateResult(done_units=done, dry_run=True, **base)
    if overwrite:  # another config may have planned more shards: none of its leftovers may stay beside ours
        shards.remove_unplanned(out, labels.name, units)
    if not pending:
        complete = shards.write_info(out, labels.name, units) is not None
        return GenerateResult(complete=complete, **base)

    manifest = {"labels": labels.names(), "label_file": labels.path, "set": labels.name, "config": manifest_config(config),
                "config_hash": chash, "seeds": shards.SEEDS_RULE, "made_by": made_by,
                "tokens": None if root is None else _relative(root, out), "worker": [index, count],
                "engine": workers.engine}  # fmt: skip
    if workers.engine == "ray":
        result = _run_on_ray(out, labels, config, units, pending, chash, root, score, manifest, workers, progress)
        return GenerateResult(**result, **base)
    models = GenerationModels.load(labels, config, root, score)  # a token of another generator: refused here
    manifest.update(models.info)
    out.mkdir(parents=True, exist_ok=True)
    lock_worker_slot(out, index, count)
    worker = {"index": index, "count": count, **describe_device(models.device)}
    result = _run_units(out, labels, config, units, pending, chash, models, manifest, progress, worker)
    return GenerateResult(**result, **base)


@dataclass
class GenerationModels:
    """What generating a unit needs, loaded once per process (or per Ray actor)."""

    device: Any
    pipe: Any
    token_map: dict[int, str] | None
    guide: Any
    guide_indices: list[int] | None
    info: dict[str, Any]  # for the manifest: the generator's identity, the speed-ups applied

    @classmethod
    def load(cls, labels: LabelSet, config: RunConfig, root: Path | None, score: bool) -> GenerationModels:
        g = config.generate
        device = resolve_device(config.device)
        bind_device(device)
        wants_guide = score or g.refine is not None  # DATE's reward is the guide's
        hub_note = check_hub(job_models(config.generator, loaded_spec(config) if wants_guide else None))
        if hub_note:
            print(f"augment: note: {hub_note}", file=sys.stderr)
        guide = guide_indices = None
        if wants_guide:
            guide = load_guide(loaded_spec(config), device, labels.names())
            guide_indices = match_labels(labels, guide, config.label_match).indices
        pipe = load_generator(config.generator, device, config.dtype, config.lora)
        check_sdxl_options(config, ("generate",), pipe)  # a hub generator not cached before: known now
        pipe.scheduler = make_scheduler(pipe.scheduler, g.scheduler)
        speed = speed_up(pipe, g.channels_last, g.compile)
        token_map = None if root is None else load_tokens(pipe, root, labels, text_encoder_fingerprint(pipe))
        info = {"generator": generator_source(pipe), "speed": speed}
        if config.lora.weights is not None:
            info["lora"] = describe_lora(config.lora.weights, config.lora.scale)
        pairs = [((token_map or {}).get(c.position, ""), c.name) for c in labels.classes]
        cut = prompt_cuts(pipe.tokenizer, g.prompts, pairs)
        if cut:
            print(f"augment: note: {cuts_note(cut, pipe.tokenizer.model_max_length)}", file=sys.stderr)
            info["prompts_cut"] = cut
        return cls(device, pipe, token_map, guide, guide_indices, info)

    def generate(self, out, labels: LabelSet, config: RunConfig, units: list, chash: str, **kw) -> list[dict]:
        return generate_units(self.pipe, labels, self.token_map, config.generate, units, out, chash, self.guide,
                              self.guide_indices, **kw)  # fmt: skip


def _run_units(out, labels, config, units, pending, chash, models: GenerationModels, manifest: dict[str, Any],
               progress: bool, worker: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip

    shards.remove_stale_tmp(out, labels.name, pending)
    done: dict[str, dict] = {}
    last = [0.0]

    def record(final: bool = False) -> None:
        if not final and time.time() - last[0] < MANIFEST_EVERY:
            return  # the markers are the record; the manifest's copy is refreshed at most every few seconds
        last[0] = time.time()
        if final:  # rescan: other workers' units too
            _rescan(out, labels, units, chash, done)
        listed = {k: {"sha256": m["sha256"], "count": m["count"]} for k, m in sorted(done.items())}
        update_manifest(out, "generate", {**manifest, "shards": listed}, worker)

    record(final=True)
    t0 = time.time()
    n_units = 0
    with _bar(pending, progress) as bar:

        def on_unit(unit, marker) -> None:
            nonlocal n_units
            n_units += 1
            done[marker["unit"]] = marker
            record()

        with UNetRows(models.pipe.unet) as counted:
            markers = models.generate(out, labels, config, pending, chash, on_images=bar.update, on_unit=on_unit)
    g = config.generate
    per_image = sum(image_calls(models.pipe.scheduler, g))
    images = sum(u.count for u in pending)
    if worker is not None:  # per worker (workers.generate.<i>of<n>): each process counts its own
        worker = {
            **worker,
            "unet_evaluations": {
                "per_image": per_image,
                "images": images,
                "planned": images * per_image,
                "done": counted.rows,  # DATE's calls included
                "shallow_done": counted.shallow,
            },
        }  # fmt: skip  (rows on the shallow branch: cache_interval > 1)
    record(final=True)
    complete = _finish(out, labels, units, manifest)
    return {"units": n_units, "images": sum(m["count"] for m in markers), "seconds": time.time() - t0,
            "complete": complete}  # fmt: skip


def _bar(pending: list, progress: bool) -> tqdm:
    return tqdm(total=sum(u.count for u in pending), unit="img", desc="generating", disable=not progress,
                dynamic_ncols=True)  # fmt: skip


def _rescan(out, labels: LabelSet, units: list, chash: str, done: dict[str, dict]) -> None:
    """Every unit's marker of this config (other workers' units too) into `done`."""
    for m in shards.read_markers(out, labels.name, units).values():
        if m.get("config_hash") == chash:
            done[m["unit"]] = m


def _finish(out, labels: LabelSet, units: list, manifest: dict[str, Any]) -> bool:
    """_info.json and the dataset card once every unit of the set exists; True then."""
    info_path = shards.write_info(out, labels.name, units)
    if info_path is not None:
        write_card(out, labels, manifest, command=manifest.get("made_by", "augment generate"))
    return info_path is not None


class UnitActor:
    """A Ray actor (augment.run.engine.run_actor_pool): loads the models once, then generates the units it is
    handed, each exactly as one process would. A unit whose marker exists already (its actor died after
    finishing it) is not written again; a dead actor's temporary files are removed first."""

    def __init__(self, labels: LabelSet, out: str, config: RunConfig, tokens: str | None, score: bool):
        self.labels, self.out, self.config = labels, out_path(out, "out"), config
        self.models, self.error = None, None
        try:  # an error here (a token of another generator, a bad device) is raised by run(), where Ray keeps it
            with storage_errors(out):
                root = None if tokens is None else out_path(tokens, "tokens")
                self.models = GenerationModels.load(labels, config, root, score)
        except Exception as e:  # noqa: BLE001
            self.error = e

    def run(self, job: tuple[Any, str]) -> tuple[dict, dict]:
        """job = (unit, config hash) → (its marker, the models' info for the manifest)."""
        if self.error is not None:
            raise self.error
        unit, chash = job
        counts = {"per_image": sum(image_calls(self.models.pipe.scheduler, self.config.generate)), "images": 0,
                  "done": 0, "shallow_done": 0}  # fmt: skip
        with storage_errors(self.out):
            if not shards.unit_done(self.out, self.labels.name, unit, chash, overwrite=True):
                shards.remove_stale_tmp(self.out, self.labels.name, [unit])
                with UNetRows(self.models.pipe.unet) as counted:
                    self.models.generate(self.out, self.labels, self.config, [unit], chash)
                counts.update(images=unit.count, done=counted.rows, shallow_done=counted.shallow)
            marker = shards.read_marker(self.out, self.labels.name, unit)
        return marker, {**self.models.info, "_unet": counts}


def _run_on_ray(out, labels, config, units, pending, chash, root, score, manifest, workers, progress) -> dict:
    """Every pending unit on a pool of Ray actors; the driver keeps the manifest, _info.json and the card."""
    from augment.run.engine import ray_session, run_actor_pool

    done: dict[str, dict] = {}
    slot = {"index": 0, "count": 1, "engine": "ray"}
    t0 = time.time()  # the actors load the models (a bad token is refused there) and write the shards
    if isinstance(out, Path):  # one driver per local OUT (a second Ray driver, or a local run, is refused)
        out.mkdir(parents=True, exist_ok=True)
        lock_worker_slot(out, 0, 1)
    init = {"labels": labels, "out": str(out), "config": config, "tokens": None if root is None else str(root),
            "score": score}  # fmt: skip
    markers: list[dict] = []
    counts = {"per_image": 0, "images": 0, "planned": 0, "done": 0, "shallow_done": 0}  # summed over the actors
    with _bar(pending, progress) as bar, ray_session(workers):

        def on_done(result: tuple[dict, dict]) -> None:
            marker, info = result
            unet = info.pop("_unet")
            for key in ("images", "done", "shallow_done"):
                counts[key] += unet[key]
            counts["per_image"] = unet["per_image"]
            counts["planned"] = counts["images"] * unet["per_image"]
            done[marker["unit"]] = marker
            manifest.update(info)
            markers.append(marker)
            bar.update(marker["count"])

        run_actor_pool(UnitActor, init, [(u, chash) for u in pending], workers, on_done)
    _rescan(out, labels, units, chash, done)
    listed = {k: {"sha256": m["sha256"], "count": m["count"]} for k, m in sorted(done.items())}
    update_manifest(out, "generate", {**manifest, "shards": listed}, {**slot, "unet_evaluations": counts})
    complete = _finish(out, labels, units, manifest)
    return {"units": len(markers), "images": sum(m["count"] for m in markers), "seconds": time.time() - t0,
            "complete": complete}  # fmt: skip


def _relative(path: Path, out: Path) -> str:
    """A path as the manifest records it: relative to OUT when inside it ("." for OUT), else its name."""
    if isinstance(path, Path) != isinstance(out, Path):  # one local, one a URL: never under each other
        return path.name
    if not isinstance(path, Path):  # both URLs: relative when under OUT, else as given
        text, base = str(path).rstrip("/"), str(out).rstrip("/")
        return "." if text == base else text[len(base) + 1 :] if text.startswith(base + "/") else text
    try:
        return str(path.resolve().relative_to(out.resolve()))
    except ValueError:
        return path.name
