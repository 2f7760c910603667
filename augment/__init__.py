"""augment: turn a label set into a synthetic training set with discriminative class tokens.

    import augment

    cfg = augment.load_config("toy")              # a preset as a RunConfig; change any field
    cfg.learn.max_steps = 20
    augment.learn_tokens("manifests/fashion-mnist.txt", "runs/toy", cfg)
    augment.generate_set("manifests/fashion-mnist.txt", "runs/toy", cfg, tokens="runs/toy")
    report = augment.score_set("runs/toy", cfg, reference="fashion-mnist")

`augment.adapt_generator(labels, images, out, cfg)` trains a LoRA on the generator from real images (a
`augment.data.images.Split`; `cfg.lora`), and `cfg.lora.weights = out` fuses it in before learning and
generating. `augment.build` does learn + generate; `augment.Workers` says how the units reach workers (this process's
share under torchrun/Slurm, or every unit on a Ray cluster: `Workers(engine="ray")`). Mistakes in the input raise `augment.UserError` (one line) before any model is loaded.
"""

from augment.version import __version__  # noqa: F401

_EXPORTS = {
    "learn_tokens": "augment.jobs.learn",
    "LearnResult": "augment.jobs.learn",
    "generate_set": "augment.jobs.generate",
    "GenerateResult": "augment.jobs.generate",
    "build": "augment.jobs.build",
    "BuildResult": "augment.jobs.build",
    "score_set": "augment.jobs.score",
    "adapt_generator": "augment.jobs.adapt",
    "AdaptResult": "augment.jobs.adapt",
    "LoraConfig": "augment.config",
    "Workers": "augment.run.workers",
    "load_config": "augment.config",
    "RunConfig": "augment.config",
    "LearnConfig": "augment.config",
    "GenerateConfig": "augment.config",
    "read_label_set": "augment.labels",
    "UserError": "augment.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The API is imported on first use, so `import augment` stays cheap (no torch until a job runs)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'augment' has no attribute {name!r}")
