"""Full-size models with random weights, built offline (augment.testing.sd): Stable Diffusion architectures from
committed configs and a guide with the layout of the paper's CUB classifier."""

from augment.testing.sd import (  # noqa: F401
    ARCHITECTURES,
    architecture_config,
    random_pipeline,
    save_random_pipeline,
    save_vit_mae_cub,
)
