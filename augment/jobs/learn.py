"""`learn_tokens`: one discriminative token per class of a label set, into OUT/tokens/.

Writes OUT/tokens/<slug>/{learned_embeds.safetensors,meta.json} and OUT/manifest.json. Classes already
learned in OUT are skipped and the learner checkpoints every step, so an interrupted run continues where it
stopped, mid-class.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from augment.config import RunConfig
from augment.data.tokens_io import is_learned
from augment.devices import bind_device, describe_device, resolve_device
from augment.fingerprint import source_identity
from augment.labels import LabelSet, read_label_set
from augment.learn.learner import TokenLearner
from augment.learn.resume import LearnerCheckpoint, checkpoint_path, clear_finished, learn_fingerprint
from augment.models.generator import generator_source, load_generator, text_encoder_fingerprint
from augment.models.guide import check_spec, load_guide, match_labels
from augment.models.hub import check_hub, job_models
from augment.run.claims import ClaimQueue
from augment.run.manifest import manifest_config, update_manifest
from augment.run.storage import check_out, converts_storage_errors, out_path
from augment.run.workers import Workers, claim_board, lock_worker_slot, waiting_note


@dataclass
class LearnResult:
    """What one `learn_tokens` call did (this worker's share)."""

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


def as_label_set(labels: str | Path | LabelSet) -> LabelSet:

    return labels if isinstance(labels, LabelSet) else read_label_set(labels)


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
    """Learn the tokens of this worker's pending classes into OUT. Everything cheap is checked first (label
    set, config, output directory, workers: UserError), then the guide and the generator are loaded.
    `overwrite` discards a learner checkpoint made with another config instead of refusing it."""

    labels, out, workers = as_label_set(labels), out_path(out, "out"), workers or Workers()
    config.learn.validate()
    index, count = workers.slot()
    check_out(out)
    board = claim_board(out, "learn", workers)  # claim mode: every class is anyone's
    mine = list(labels.classes) if board else list(labels.classes)[index::count]
    pending = [c for c in mine if not is_learned(out, c)]
    if not pending and not checkpoint_path(out, (index, count)).is_file():
        return LearnResult()

    device = resolve_device(config.device)
    bind_device(device)
    guide_spec = config.guide_spec()
    check_spec(guide_spec)
    hub_note = check_hub(job_models(config.generator, guide_spec))  # one line now, not retries later
    if hub_note:
        print(f"augment: note: {hub_note}", file=sys.stderr)
    guide = load_guide(guide_spec, device, labels.names())  # names and index range before the generator
    matched = match_labels(labels, guide, config.label_match)
    if matched.note:
        print(f"augment: note: {matched.note}", file=sys.stderr)
    guide_indices = matched.indices
    pipe = load_generator(config.generator, device, config.dtype)
    info = {"generator": generator_source(pipe), "text_encoder": text_encoder_fingerprint(pipe)}
    out.mkdir(parents=True, exist_ok=True)
    lock_worker_slot(out, index, count)
    manifest = {"labels": labels.names(), "label_file": labels.path, "config": manifest_config(config), **info,
                "worker": [index, count], "claim": board is not None}  # fmt: skip
    worker = {"index": index, "count": count, **describe_device(device)}
    update_manifest(out, "learn", manifest, worker)
    learner = TokenLearner(pipe, guide, labels, guide_indices, config.learn, out, info)
    fingerprint = learn_fingerprint(config.learn, labels, source_identity(guide_spec), info["text_encoder"])
    checkpoint = LearnerCheckpoint(out, (index, count), fingerprint, device, pipe.unet.dtype)
    t0 = time.time()
    with progress_bar(len(pending), not progress) as bar, board or contextlib.nullcontext():

        def report(p: dict) -> None:
            bar.n = p["done"]
            acc = "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.0f}%"
            bar.set_postfix_str(f"active {p['active']} step {p['step']} batch acc {acc}")

        feed = None
        if board is not None:
            feed = ClaimQueue(board, mine, key=lambda c: c.slug, done=lambda c: is_learned(out, c),
                              on_wait=waiting_note())  # fmt: skip
        learned = learner.run(mine, report, checkpoint, overwrite, feed=feed)
    if board is not None:  # a dead worker's checkpoint, its classes finished by others
        by_pos = {c.position: c for c in labels.classes}
        clear_finished(out, lambda p: p in by_pos and is_learned(out, by_pos[p]))
    if checkpoint.note:
        update_manifest(out, "learn", {**manifest, "resume": checkpoint.note})
    return LearnResult(learned, len(pending), time.time() - t0, checkpoint.note)


def progress_bar(total: int, disable: bool):

    return tqdm(total=total, unit="class", desc="learning tokens", disable=disable, dynamic_ncols=True)
