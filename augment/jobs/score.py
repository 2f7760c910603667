"""`score_set`: score a generated set by a held-out classifier (top-1/top-5 per class) and, against real
reference images, FID/KID and per-class precision/recall in one feature space.

The classifier is `classifier`, else the config's `eval_classifier`. `reference` is another shards directory
or a dataset spec (`augment.data.datasets`, e.g. `fashion-mnist`, `cub:DIR`; `:train` for the train split).
FID/KID features: `features="inception"` (needs torch-fidelity and its weights) or any classifier spec's
penultimate layer; by default inception when available, else the classifier's own; always named in the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from augment.config import RunConfig
from augment.errors import UserError


def score_set(
    shards: str | Path,
    config: RunConfig | None = None,
    *,
    classifier: str | None = None,
    reference: str | None = None,
    reference_limit: int | None = None,
    features: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The report as a dict: per class n/top1/top5 (and precision/recall with a reference), macro and micro
    means, and with a reference `fid`, `kid`, `kid_std`, the features' name and size."""
    import torch

    from augment import evaluate as ev
    from augment.data.shards import tar_files
    from augment.devices import resolve_device
    from augment.models.guide import load_guide

    shards = Path(shards)
    if not shards.is_dir():
        raise UserError(f"--shards {shards}: no such directory")
    if not tar_files(shards):
        raise UserError(f"--shards {shards}: no .tar shards in it or in its shards/ folder")
    if batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {batch_size}")
    if reference_limit is not None and reference_limit < 2:
        raise UserError(f"--reference-limit must be ≥ 2, got {reference_limit}")
    if (features or reference_limit) and not reference:
        raise UserError("--features and --reference-limit are for FID/KID and need --reference")
    labels = ev.shard_label_set(shards)
    config = config or RunConfig()
    spec = classifier or config.eval_classifier
    if not spec:
        raise UserError("no classifier: pass --classifier SPEC, or a --preset/--config with eval_classifier")
    dev = resolve_device(device or config.device)
    model = load_guide(spec, dev)
    extractor, feature_name, ref = None, None, None
    if reference:
        extractor, feature_name = _feature_extractor(features, model, spec, dev)
        ref = ev.reference_images(reference, labels, reference_limit)

    t0 = time.time()
    with _progress(ev.shard_count(shards), "scoring", not progress) as bar:
        result = ev.score_shards(shards, model, labels, features=extractor, batch_size=batch_size,
                                 label_match=config.label_match,
                                 on_images=bar.update)  # fmt: skip
    classes = [{"position": c.position, "name": c.name, "classifier_index": c.classifier_index, "n": c.n,
                "top1": c.top1 if c.n else None, "top5": c.top5 if c.n else None} for c in result.classes]  # fmt: skip
    report: dict[str, Any] = {"shards": str(shards), "classifier": spec, "images": result.images,
                              "topk": result.topk, "classes": classes, **result.means()}  # fmt: skip
    if ref is not None:
        count, images = ref
        with _progress(count, "reference", not progress) as bar:
            real, real_classes = ev.extract_features(images, extractor, dev, batch_size, on_images=bar.update)
        fake, fake_classes = torch.cat(result.features), torch.cat(result.feature_classes)
        report.update({"reference": reference, "reference_images": len(real),
                       "features": {"name": feature_name, "dim": int(fake.shape[1])}, **ev.fid_kid(fake, real)})  # fmt: skip
        pr = ev.per_class_precision_recall(fake, fake_classes, real, real_classes, len(labels))
        for row, scores in zip(report["classes"], pr):
            row.update(scores or {"precision": None, "recall": None})
        scored = [s for s in pr if s]
        means = {key: sum(s[key] for s in scored) / len(scored) for key in ("precision", "recall")} if scored else {}
        report["precision_recall"] = {"k": ev.PR_K, "classes": len(scored), **means}
    report.update({"seconds": round(time.time() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return report


def _feature_extractor(spec: str | None, classifier, classifier_spec: str, device):
    """(module or Guide, name) for FID/KID features; default: inception when it loads, else the classifier."""
    from augment.evaluate import INCEPTION, InceptionFeatures
    from augment.models.guide import load_guide

    if spec in (None, INCEPTION):
        try:
            return InceptionFeatures().to(device), "inception (torchmetrics InceptionV3, 2048-d pool features)"
        except UserError:
            if spec == INCEPTION:
                raise
    spec = spec or classifier_spec
    guide = classifier if spec == classifier_spec else load_guide(spec, device)
    return guide, f"{spec} (penultimate layer)"


def _progress(total: int, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=disable, dynamic_ncols=True)
