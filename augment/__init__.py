"""augment: turn a label set into a synthetic training set with discriminative class tokens."""

__version__ = "0.1.0"
