"""`build`: learn a token per class, then generate the set with them, into one OUT directory.

Equivalent to `learn_tokens` followed by `generate_set(tokens=OUT)`; both skip finished work, so rerunning
an interrupted build continues it. With several workers every worker learns its share of groups, waits
until every class's token is in OUT (polling OUT: no process group needed), then generates its share of
shards. Under Ray (`Workers(engine="ray")`) the driver runs both stages on the cluster, one after the other.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from augment.config import RunConfig
from augment.data.tokens_io import is_learned
from augment.errors import UserError
from augment.jobs.generate import GenerateResult, generate_set
from augment.jobs.learn import LearnResult, learn_tokens
from augment.labels import LabelSet, as_label_set
from augment.models.generator import check_sdxl_options
from augment.run.storage import converts_storage_errors, out_path
from augment.run.workers import WAIT_TOKENS, Workers


@dataclass
class BuildResult:
    learn: LearnResult
    generate: GenerateResult
    pending_classes: int = 0  # dry run: classes still without a token (generation is not planned then)
    total_classes: int = 0

    def summary(self, out: str | Path = "OUT") -> str:
        """What learning did, then what generation did (a dry run: what is left of each)."""
        if self.generate.dry_run:
            learn = f"learn: {self.total_classes} classes, {self.pending_classes} pending"
            if self.pending_classes:
                return f"{learn}; generation is planned once every class has its token"
            return f"{learn}\n{self.generate.summary(out)}"
        return f"{self.learn.summary()}\n{self.generate.summary(out)}"


@converts_storage_errors()
def build(
    labels: str | Path | LabelSet,
    out: str | Path,
    config: RunConfig,
    *,
    workers: Workers | None = None,
    wait_tokens: float = WAIT_TOKENS,
    overwrite: bool = False,
    score: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Learn this worker's tokens, wait (up to `wait_tokens` seconds) for the other workers' tokens, then
    generate this worker's shards. `overwrite` applies to both stages."""
    labels, out, workers = as_label_set(labels), out_path(out, "out"), workers or Workers()
    config.validate()  # a bad generate option fails before learning
    check_sdxl_options(config, ("learn", "generate"))  # so does one that SDXL does not have
    workers.check()
    if not (isinstance(wait_tokens, (int, float)) and math.isfinite(wait_tokens) and wait_tokens >= 0):
        raise UserError(f"wait_tokens must be a finite number of seconds ≥ 0, got {wait_tokens!r}", "wait_tokens")
    if dry_run:
        pending = sum(not is_learned(out, c) for c in labels.classes)
        if pending:
            return BuildResult(LearnResult(pending=pending), GenerateResult(dry_run=True), pending, len(labels))
        learned = LearnResult()
    elif workers.engine == "ray":  # one Ray session for both stages (a local cluster starts once)
        from augment.run.engine import ray_session

        with ray_session(workers):
            learned = learn_tokens(labels, out, config, workers=workers, overwrite=overwrite, progress=progress)
            made = generate_set(labels, out, config, tokens=out, workers=workers, overwrite=overwrite, score=score,
                                progress=progress, made_by="augment build")  # fmt: skip
        return BuildResult(learned, made, total_classes=len(labels))
    else:
        learned = learn_tokens(labels, out, config, workers=workers, overwrite=overwrite, progress=progress)
        wait_for_tokens(out, labels, wait_tokens)
    made = generate_set(labels, out, config, tokens=out, workers=workers, overwrite=overwrite, score=score,
                        dry_run=dry_run, progress=progress, made_by="augment build")  # fmt: skip
    return BuildResult(learned, made, total_classes=len(labels))


def wait_for_tokens(out: Path, labels: LabelSet, timeout: float, poll: float = 5.0) -> None:
    """Block until every class of the label set has its token in OUT (other workers learn theirs), or fail
    with one line after `timeout` seconds."""

    deadline = time.time() + timeout
    shown = False
    while True:
        missing = [c for c in labels.classes if not is_learned(out, c)]
        if not missing:
            return
        if time.time() >= deadline:
            raise UserError(
                f"{out}: {len(missing)} class(es) still without a token after waiting {timeout:.0f} s "
                f"(e.g. {missing[0].name!r}); are the other workers running? rerun build once they have learned"
            )
        if not shown:
            print(f"waiting for {len(missing)} token(s) from the other workers", file=sys.stderr, flush=True)
            shown = True
        time.sleep(min(poll, max(deadline - time.time(), 0.0)))
