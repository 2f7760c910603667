"""`score_set`: score a generated set by a held-out classifier (top-1/top-5 per class) and, against real
reference images, FID/KID and per-class precision/recall in one feature space.

The classifier is `classifier`, else the config's `eval_classifier`. `reference` is another shards directory
or a dataset spec (`augment.data.datasets`, e.g. `fashion-mnist`, `cub:DIR`; `:train` for the train split).
FID/KID features: `features="inception"` (needs torch-fidelity and its weights) or any classifier spec's
penultimate layer; by default inception when available, else the classifier's own; always named in the report.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from augment import metrics as ev
from augment.config import RunConfig
from augment.data.shards import label_set, sample_count, tar_files
from augment.devices import bind_device, resolve_device
from augment.errors import UserError
from augment.metrics import INCEPTION, InceptionFeatures
from augment.models.guides import check_spec, load_guide, loaded_spec
from augment.models.hub import check_hub, job_models
from augment.run.storage import converts_storage_errors, out_path


class ScoreReport(dict):
    """`score_set`'s report: a dict (JSON as it is) with the summary the CLI prints."""

    def summary(self) -> str:
        return format_report(self)


@converts_storage_errors("shards")
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
) -> ScoreReport:
    """The report as a dict (ScoreReport, with `.summary()`): per class n/top1/top5 (and precision/recall with a reference), macro and micro
    means, and with a reference `fid`, `kid`, `kid_std`, the features' name and size."""

    for name, value in (("classifier", classifier), ("reference", reference), ("features", features),
                        ("device", device)):  # fmt: skip
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UserError(f"{name}: {value!r} names nothing", name)
    config = config or RunConfig()
    if device is not None:
        replace(config, device=device).validate()  # the device's form, with the rest of the config
    else:
        config.validate()
    for spec in (classifier, features if features != INCEPTION else None):
        if spec is not None:
            check_spec(spec)
    if batch_size < 1:
        raise UserError(f"batch_size must be ≥ 1, got {batch_size}", "batch_size")
    if reference_limit is not None and reference_limit < 2:
        raise UserError(f"reference_limit must be ≥ 2, got {reference_limit}", "reference_limit")
    if (features or reference_limit) and not reference:
        raise UserError("reference is needed for FID/KID (features, reference_limit)", "reference")
    shards = out_path(shards, "shards")
    if not shards.is_dir():
        raise UserError(f"shards {shards}: no such directory", "shards")
    if not tar_files(shards):
        raise UserError(f"shards {shards}: no .tar shards in it or in its shards/ folder", "shards")
    labels = label_set(shards)
    spec = classifier or config.eval_classifier
    if not spec:
        raise UserError("classifier: none given, and no eval_classifier in the config", "classifier")
    spec = loaded_spec(config, spec)

    features = features if features in (None, INCEPTION) else loaded_spec(config, features)
    dev = resolve_device(device or config.device)
    bind_device(dev)
    other = features if features not in (None, INCEPTION, spec) else None
    note = check_hub(job_models(classifier=spec) + job_models(guide=other))
    if note:
        print(f"augment: note: {note}", file=sys.stderr)
    model = load_guide(spec, dev, labels.names())
    extractor, feature_name, ref = None, None, None
    if reference:
        extractor, feature_name = _feature_extractor(features, model, spec, dev, labels.names())
        ref = ev.reference_images(reference, labels, reference_limit)

    t0 = time.time()
    with _progress(sample_count(shards), "scoring", not progress) as bar:
        result = ev.score_shards(shards, model, labels, features=extractor, batch_size=batch_size,
                                 label_match=config.label_match,
                                 on_images=bar.update)  # fmt: skip
    classes = [{"position": c.position, "name": c.name, "classifier_index": c.classifier_index, "n": c.n,
                "top1": c.top1 if c.n else None, "top5": c.top5 if c.n else None} for c in result.classes]  # fmt: skip
    report = ScoreReport({"shards": str(shards), "classifier": spec, "images": result.images,
                          "topk": result.topk, "classes": classes, **result.means()})  # fmt: skip
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


def _feature_extractor(spec: str | None, classifier, classifier_spec: str, device, class_names: list[str]):
    """(module or Guide, name) for FID/KID features; default: inception when it loads, else the classifier."""

    if spec in (None, INCEPTION):
        try:
            return InceptionFeatures().to(device), "inception (torchmetrics InceptionV3, 2048-d pool features)"
        except UserError:
            if spec == INCEPTION:
                raise
    spec = spec or classifier_spec
    guide = classifier if spec == classifier_spec else load_guide(spec, device, class_names)
    return guide, f"{spec} (penultimate layer)"


def _progress(total: int, desc: str, disable: bool):

    return tqdm(total=total, unit="img", desc=desc, disable=disable, dynamic_ncols=True)


def format_report(report: dict[str, Any]) -> str:
    """The per-class table and the summary lines, as printed."""
    k = report["topk"]
    width = max([len("class")] + [len(c["name"]) for c in report["classes"]])
    pr = "precision_recall" in report
    lines = [
        f"{'#':>4}  {'class':<{width}}  {'n':>6}  {'top-1 %':>7}  {f'top-{k} %':>7}"
        + ("  precision %  recall %" if pr else "")
    ]
    cell = lambda v, w: f"{v:{w}.2f}" if v is not None else " " * (w - 1) + "-"  # noqa: E731
    for c in report["classes"]:
        t1, t5 = (cell(c["top1"], 7), cell(c["top5"], 7)) if c["n"] else ("      -", "      -")
        extra = f"  {cell(c['precision'], 11)}  {cell(c['recall'], 8)}" if pr else ""
        lines.append(f"{c['position']:>4}  {c['name']:<{width}}  {c['n']:>6}  {t1}  {t5}{extra}")
    lines.append(
        f"macro mean (over classes): top-1 {report['macro']['top1']:.2f} %, top-{k} {report['macro']['top5']:.2f} %"
    )
    lines.append(
        f"micro mean (over {report['images']} images): top-1 {report['micro']['top1']:.2f} %, "
        f"top-{k} {report['micro']['top5']:.2f} %   classifier: {report['classifier']}"
    )
    if "fid" in report:
        lines.append(
            f"FID {report['fid']:.4f}   KID {report['kid']:.6f} ± {report['kid_std']:.6f} "
            f"(subset size {report['kid_subset_size']})   vs {report['reference']} "
            f"({report['reference_images']} images)"
        )
        lines.append(f"features: {report['features']['name']}, {report['features']['dim']}-d")
        p = report["precision_recall"]
        if p["classes"]:
            lines.append(
                f"precision {p['precision']:.2f} %, recall {p['recall']:.2f} % (k = {p['k']}, mean over "
                f"{p['classes']} classes with more than {p['k']} images on both sides)"
            )
    return "\n".join(lines)
