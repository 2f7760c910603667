"""The maths of scoring a generated set: a held-out classifier's top-1/top-5 accuracy per class, and FID/KID
against a reference image set in some feature space (the job is augment.jobs.score).

Accuracy is over all of the classifier's classes (right: the class's matched classifier index is the argmax,
or among the top 5); macro = mean over classes, micro = mean over images. FID and KID are torchmetrics' own,
fed features we extract once per image: InceptionV3 pool features (torch-fidelity) or the penultimate layer of
any classifier spec. In the same features, per class: precision (fidelity: the share of generated images
inside the real images' k-NN manifold) and recall (diversity: the share of real images inside the generated
ones'), Kynkäänniemi et al. 2019, k = 5. Images come from augment.data.shards (raw bytes decoded there: nothing
is ever unpickled).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from augment.data.shards import iter_images, label_set, sample_count
from augment.errors import UserError
from augment.labels import LabelSet, normalise_name
from augment.models.guides import Guide, match_labels

TOPK = 5
PR_K = 5  # neighbours for precision/recall, as in Kynkäänniemi et al. and prdc
INCEPTION = "inception"


def _pick(total: int, limit: int | None) -> set[int] | None:
    """A seeded random subset of `limit` of `total` items (None: all)."""
    if limit is None or limit >= total:
        return None
    return set(np.random.default_rng(0).choice(total, size=limit, replace=False).tolist())


def reference_images(spec: str, labels: LabelSet, limit: int | None = None) -> tuple[int, Iterable]:
    """(count, (PIL image, position in `labels`) pairs) of a reference set: a shards directory (its classes
    matched to `labels` by name, -1 for a class `labels` lacks), or a dataset spec (`augment.data.datasets`)
    with an optional ':test' (default) or ':train' split suffix."""
    if Path(spec).is_dir():
        total = sample_count(spec)
        if total == 0:
            raise UserError(f"reference {spec}: no .tar shards with samples")
        keep = _pick(total, limit)
        own = {normalise_name(n): i for i, n in enumerate(labels.names())}
        to_labels = [own.get(normalise_name(n), -1) for n in label_set(spec).names()]
        return (len(keep) if keep else total), (
            (image, to_labels[c] if 0 <= c < len(to_labels) else -1) for image, c in iter_images(spec, keep)
        )
    from augment.data.datasets import load_dataset

    base, _, split = spec.rpartition(":")
    if split not in ("train", "test") or not base or Path(spec.partition(":")[2]).is_dir():
        base, split = spec, "test"
    data = getattr(load_dataset(base, labels), split)
    keep = _pick(len(data), limit)
    order = sorted(keep) if keep else range(len(data))
    return len(order), ((data.images(int(i)), int(data.labels[i])) for i in order)


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` items (the last may be shorter)."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def to_batch(images: list) -> torch.Tensor:
    """PIL images → NCHW float in [0, 1]; an image of another size than the first is centre-cropped and
    resized to it (the extractors do their own resizing; this only makes the batch stackable)."""
    from PIL import ImageOps

    w, h = images[0].size
    arrays = [np.asarray(im if im.size == (w, h) else ImageOps.fit(im, (w, h))) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


# ---------------------------------------------------------------- feature extractors
def penultimate_layer(model: nn.Module) -> nn.Module:
    """The classifier head whose input is the penultimate feature: timm's `get_classifier()`, else the last
    nn.Linear (torchvision's fc/heads, transformers' classifier)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if head is None:
        raise UserError(f"{type(model).__name__}: no classifier layer found to take penultimate features from")
    return head


class GuideWithFeatures(nn.Module):
    """forward(images in [0,1]) → (logits, penultimate features), in one pass (a hook on the head's input;
    for timm this is `forward_head(forward_features(x), pre_logits=True)`)."""

    def __init__(self, guide: Guide):
        super().__init__()
        self.guide, self.head = guide, penultimate_layer(guide.model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured = []
        hook = self.head.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))
        try:
            logits = self.guide(images)
        finally:
            hook.remove()
        return logits, captured[-1].flatten(1)


def feature_function(extractor: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """images in [0,1] → (N, D) features: a Guide's penultimate layer, or any other module's output."""
    if isinstance(extractor, Guide):
        with_features = GuideWithFeatures(extractor)
        return lambda x: with_features(x)[1]
    return extractor


class InceptionFeatures(nn.Module):
    """torchmetrics' FID InceptionV3 (torch-fidelity weights): images in [0,1] → 2048 pool features."""

    def __init__(self):
        super().__init__()
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise UserError(
                "features inception needs torch-fidelity, which is not installed; "
                "use a classifier spec as features (the classifier's, say)",
                "features",
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except Exception as e:  # weights download: URLError, OSError, HTTPError ... when offline
            raise UserError(
                f"features inception: InceptionV3 weights unavailable ({type(e).__name__}); "
                "use a classifier spec as features (the classifier's, say)",
                "features",
            ) from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(images, size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
        return self.net((x * 255).round().clamp(0, 255).to(torch.uint8))


# ---------------------------------------------------------------- metrics
@dataclass
class ClassScore:
    """One class's image count and hits; top1/top5 in percent (nan without images)."""

    position: int
    name: str
    classifier_index: int
    n: int = 0
    top1_hits: int = 0
    top5_hits: int = 0

    top1 = property(lambda self: 100.0 * self.top1_hits / self.n if self.n else float("nan"))  # percent
    top5 = property(lambda self: 100.0 * self.top5_hits / self.n if self.n else float("nan"))


@dataclass
class Evaluation:
    """Per-class scores of one generated set, and its images' features when asked for."""

    classes: list[ClassScore]
    topk: int  # 5, or the classifier's class count when smaller
    features: list[torch.Tensor] = field(default_factory=list, repr=False)
    feature_classes: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def images(self) -> int:
        return sum(c.n for c in self.classes)

    def means(self) -> dict[str, dict[str, float]]:
        """Macro (mean over classes with images) and micro (over images) top-1/top-5, in percent."""
        scored = [c for c in self.classes if c.n]
        n = max(self.images, 1)
        return {
            "macro": {
                "top1": float(np.mean([c.top1 for c in scored])) if scored else float("nan"),
                "top5": float(np.mean([c.top5 for c in scored])) if scored else float("nan"),
            },
            "micro": {
                "top1": 100.0 * sum(c.top1_hits for c in scored) / n,
                "top5": 100.0 * sum(c.top5_hits for c in scored) / n,
            },
        }


@torch.no_grad()
def score_shards(
    directory: str | Path,
    classifier: Guide,
    labels: LabelSet,
    *,
    features: nn.Module | None = None,
    batch_size: int = 64,
    on_images: Callable[[int], None] | None = None,
    label_match: str = "check",
) -> Evaluation:
    """Per-class top-1/top-5 of `classifier` on every image of the shards; with `features` (a Guide: its
    penultimate layer, in the same pass when it is `classifier`; else any module images → features) the
    images' features too, in `Evaluation.features`."""
    indices = match_labels(labels, classifier, label_match).indices
    device = classifier.mean.device
    k = min(TOPK, len(classifier.labels))
    result = Evaluation([ClassScore(c.position, c.name, i) for c, i in zip(labels.classes, indices)], k)
    target = torch.tensor(indices, device=device)
    both = GuideWithFeatures(classifier) if features is classifier else None
    other = feature_function(features) if features is not None and both is None else None
    done = 0
    for chunk in chunks(iter_images(directory), batch_size):
        images, positions = zip(*chunk)
        if not all(0 <= c < len(labels) for c in positions):
            raise UserError(f"{directory}: a sample's cls is outside the label set's 0..{len(labels) - 1}")
        x, cls = to_batch(list(images)).to(device), torch.tensor(positions, device=device)
        if features is not None:
            result.feature_classes.append(cls.cpu())
        if both is not None:
            logits, feats = both(x)
            result.features.append(feats.double().cpu())
        else:
            logits = classifier(x)
            if other is not None:
                result.features.append(other(x).double().cpu())
        top = logits.topk(k, dim=1).indices
        hit1 = top[:, 0] == target[cls]
        hit5 = (top == target[cls][:, None]).any(dim=1)
        for c, h1, h5 in zip(cls.tolist(), hit1.tolist(), hit5.tolist()):
            s = result.classes[c]
            s.n, s.top1_hits, s.top5_hits = s.n + 1, s.top1_hits + h1, s.top5_hits + h5
        done += len(x)
        if on_images:
            on_images(len(x))
    if done == 0:
        raise UserError(f"{directory}: the shards hold no images")
    return result


@torch.no_grad()
def extract_features(
    images: Iterable, extractor: nn.Module, device, batch_size: int = 64, on_images: Callable[[int], None] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float64 features and (N,) classes of (PIL image, class) pairs; `extractor` is a Guide
    (penultimate layer) or a module."""
    features = feature_function(extractor)
    out, classes = [], []
    for chunk in chunks(images, batch_size):
        x = to_batch([image for image, _ in chunk])
        out.append(features(x.to(device)).double().cpu())
        classes += [c for _, c in chunk]
        if on_images:
            on_images(len(x))
    if not out:
        return torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat(out), torch.tensor(classes, dtype=torch.long)


def precision_recall(generated: torch.Tensor, reference: torch.Tensor, k: int = PR_K) -> dict[str, float] | None:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of two (N, D) feature sets: each set's
    manifold is the union of balls reaching each of its points' k-th nearest neighbour in the set. Precision =
    share of generated points inside the reference manifold, recall = share of reference points inside the
    generated one. None when a set has k points or fewer."""
    if len(generated) <= k or len(reference) <= k:
        return None

    def radii(x: torch.Tensor) -> torch.Tensor:  # distance to the k-th neighbour, self excluded
        return torch.cdist(x, x).kthvalue(k + 1, dim=1).values

    d = torch.cdist(generated, reference)  # (generated, reference)
    precision = (d <= radii(reference)[None, :]).any(1).double().mean()
    recall = (d <= radii(generated)[:, None]).any(0).double().mean()
    return {"precision": 100.0 * float(precision), "recall": 100.0 * float(recall)}


def per_class_precision_recall(
    generated: torch.Tensor,
    generated_classes: torch.Tensor,
    reference: torch.Tensor,
    reference_classes: torch.Tensor,
    classes: int,
    k: int = PR_K,
) -> list[dict | None]:
    """precision_recall within each class (percent), None for a class with ≤ k images on either side."""
    return [
        precision_recall(generated[generated_classes == c], reference[reference_classes == c], k)
        for c in range(classes)
    ]


def fid_kid(generated: torch.Tensor, reference: torch.Tensor, subsets: int = 100, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two (N, D) feature sets, via torchmetrics; KID's subset
    size is min(1000, smaller set) and its subsets are drawn with a fixed seed."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(generated), len(reference))
    if n < 2:
        raise UserError(
            f"FID/KID need at least 2 images in each set; got {len(generated)} generated, {len(reference)} reference"
        )
    identity = nn.Identity()  # the "extractor" torchmetrics runs: we hand it features already extracted
    identity.num_features = generated.shape[1]
    fid = FrechetInceptionDistance(feature=identity)
    with warnings.catch_warnings():  # "KID keeps all features in memory": we hold them already
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=identity, subsets=subsets, subset_size=min(1000, n))
    for metric in (fid, kid):
        metric.update(reference, real=True)
        metric.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": min(1000, n),
    }
