"""downstream: few-shot ResNet training on real + synthetic images (Schwartz et al. 2023, Table 2).

    import downstream
    downstream.fewshot("fashion-mnist", "manifests/fashion-mnist.txt", "runs/fewshot", synthetic={"tokens": "runs/toy"})
    downstream.train("imagefolder:my_photos", "my_classes.txt", save_classifier="runs/my-guide")

The library calls live in downstream.api (the CLI, downstream.cli, parses flags for them)."""

_EXPORTS = {"fewshot": "downstream.api", "train": "downstream.api", "train_config": "downstream.api",
            "FewshotResult": "downstream.api", "TrainResult": "downstream.api",
            "TrainConfig": "downstream.classifier"}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Imported on first use, so `import downstream` stays cheap."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'downstream' has no attribute {name!r}")
