"""downstream: few-shot ResNet training on real + synthetic images (Schwartz et al. 2023, Table 2)."""

__version__ = "0.1.0"
