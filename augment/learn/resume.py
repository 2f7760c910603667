"""The token learner's checkpoint: a killed `learn` continues mid-class, exactly where it stopped.

OUT/checkpoints/learn-g{group}.json          what the learner needs besides tensors: per active class its step,
                                             best loss, patience counter, recent correctness and history; the
                                             queue order; the loss scale; the config fingerprint, device type
                                             and dtype
OUT/checkpoints/learn-g{group}-{n}.safetensors  per active class its token row and AdamW moments

One checkpoint per planned group of classes (augment.jobs.learn.plan_groups), not per worker: whichever worker,
launcher rank or Ray task takes a group up again continues it.

Written every `learn.checkpoint_every` steps: the tensors under a new name first, then the JSON (which names
them) atomically; the JSON is the commit point, so a kill at any moment leaves the previous checkpoint or the
new one, never a mix. Nothing is pickled. Restored on the same device type and dtype, the learner takes the
same batches as an uninterrupted run, so every token and image is the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from augment.config import hashed_settings
from augment.errors import UserError
from augment.run.atomic import write_bytes, write_json
from augment.run.storage import from_remote, out_path

FORMAT = "augment-learner-checkpoint/1"


def learn_fingerprint(cfg, labels, guide_spec: str, text_encoder: str) -> str:
    """What a checkpoint is only valid for: the learn config (but how often it is written), the label set,
    the guide and the text encoder."""
    learn = {k: v for k, v in hashed_settings(asdict(cfg)).items() if k != "checkpoint_every"}
    blob = json.dumps(
        {"learn": learn, "labels": labels.names(), "guide": guide_spec, "text_encoder": text_encoder},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(out_dir: str | Path, group: int) -> Path:
    """The JSON of a learning group's checkpoint (it names its tensor file)."""
    return out_path(out_dir) / "checkpoints" / f"learn-g{group}.json"


class LearnerCheckpoint:
    def __init__(self, out_dir: str | Path, group: int, fingerprint: str, device: torch.device, dtype: torch.dtype):
        self.path = checkpoint_path(out_dir, group)
        self.dir, self.stem = self.path.parent, self.path.stem
        self.group, self.fingerprint = group, fingerprint
        self.env = {"device": device.type, "dtype": str(dtype).removeprefix("torch.")}
        self.note: str | None = None  # why an existing checkpoint was not used, for the manifest
        self._serial = 0

    # ------------------------------------------------------------------ reading
    def load(self, overwrite: bool = False) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """(state, tensors) of this group's checkpoint, or None (none, or not usable: `note` says why).
        A changed learn config is a UserError unless `overwrite`; an unreadable checkpoint is a UserError."""
        if not self.path.is_file():
            older = sorted(p.name for p in self.dir.glob("learn-w*of*.json")) if self.dir.is_dir() else []
            if older:  # augment 0.2 checkpointed per worker, not per group
                self.note = (
                    f"learner checkpoints of an older augment ({', '.join(older)}: one per worker, not per group) "
                    "not used: unfinished classes start from their initial vectors"
                )
            return None
        try:
            state = json.loads(self.path.read_text())
            if state.get("format") != FORMAT:
                raise ValueError(f"format {state.get('format')!r}, expected {FORMAT!r}")
            from safetensors.torch import load

            tensors = load((self.dir / state["tensors"]).read_bytes())
            for entry in state["active"]:
                for key in ("embedding", "exp_avg", "exp_avg_sq"):
                    if f"{entry['position']}.{key}" not in tensors:
                        raise ValueError(f"no tensor {entry['position']}.{key}")
        except Exception as e:  # noqa: BLE001  (JSON, missing keys, safetensors' own SafetensorError ...)
            if from_remote(e):  # the store did not answer: the checkpoint may be fine (storage_errors says so)
                raise
            detail = str(e).splitlines()[0] if str(e) else ""
            raise UserError(
                f"{self.path}: unreadable learner checkpoint ({type(e).__name__}: {detail}); delete "
                f"{self.dir} to start the unfinished classes afresh"
            ) from None
        if state["fingerprint"] != self.fingerprint:
            if not overwrite:
                raise UserError(
                    f"{self.path}: the learner checkpoint was made with another learn config, label set, "
                    "guide or generator; rerun with --overwrite to start the unfinished classes afresh"
                )
            self.note = "learner checkpoint of another config discarded (--overwrite)"
            return None
        if state["env"] != self.env:
            self.note = (
                f"learner checkpoint from {state['env']['device']}/{state['env']['dtype']} not used on "
                f"{self.env['device']}/{self.env['dtype']}: unfinished classes start from their initial vectors"
            )
            return None
        self._serial = state["serial"]
        return state, tensors

    # ------------------------------------------------------------------ writing
    def save(self, active: list, queue: list, scaler, classes_per_step: int) -> None:
        """Write the learner's state after a step (see the module docstring for the order of writes)."""
        from safetensors.torch import save

        self.dir.mkdir(parents=True, exist_ok=True)
        self._serial += 1
        tensors, entries = {}, []
        for s in active:
            opt_state = s.optimizer.state.get(s.embedding, {})
            tensors[f"{s.cls.position}.embedding"] = s.embedding.detach().float().cpu().contiguous()
            for key in ("exp_avg", "exp_avg_sq"):
                value = opt_state.get(key, torch.zeros_like(s.embedding))
                tensors[f"{s.cls.position}.{key}"] = value.detach().float().cpu().contiguous()
            if s.best_vector is not None:
                tensors[f"{s.cls.position}.best"] = s.best_vector.detach().float().cpu().contiguous()
            opt_step = opt_state.get("step", 0)
            entries.append(
                {
                    "position": s.cls.position,
                    "step": s.step,
                    "best_loss": s.best_loss,
                    "since_best": s.since_best,
                    "recent_correct": s.recent_correct,
                    "history": s.history,
                    "stop_reason": s.stop_reason,
                    "seconds": s.seconds(),
                    "optimizer_step": float(opt_step),
                    "best_step": s.best_step,
                    "noise_offset": s.noise_offset,
                }
            )
        name = f"{self.stem}-{self._serial}.safetensors"
        write_bytes(self.dir / name, save(tensors))
        state = {
            "format": FORMAT,
            "serial": self._serial,
            "fingerprint": self.fingerprint,
            "env": self.env,
            "group": self.group,
            "tensors": name,
            "classes_per_step": classes_per_step,
            "loss_scale": scaler.scale,
            "loss_scale_good": scaler.good,
            "active": entries,
            "queue": [entry[0].position for entry in queue],
        }
        write_json(self.path, state, indent=None)
        for old in self.dir.glob(f"{self.stem}-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        """This group is done: remove its checkpoint, what a kill mid-write left of it, and the folder once empty."""
        self.path.unlink(missing_ok=True)
        for old in [*self.dir.glob(f"{self.stem}-*.safetensors"), *self.dir.glob(f"{self.stem}[.-]*tmp")]:
            old.unlink(missing_ok=True)
        _remove_empty(self.dir)


def _remove_empty(d) -> None:
    if isinstance(d, Path):  # an object store has no folders to remove
        try:
            d.rmdir()
        except OSError:
            pass
