"""Hub files augment carries: the config and tokenizer files of hub generators, committed byte for byte with
their source (augment/testing/hub/NAME/SOURCES.md). They build the full-size random architectures offline
(augment.testing.sd) and answer what a hub generator is (its model_index.json, its scheduler) without the
network."""

from __future__ import annotations

import json
from importlib import resources

HUB_CONFIGS = {"sdxl-base": "sdxl-base-1.0"}  # name → directory under augment/testing/hub
HUB_IDS = {"stabilityai/stable-diffusion-xl-base-1.0": "sdxl-base"}  # the hub repos those files are from


def hub_file(name: str, path: str) -> dict:
    """A committed hub file of `name` (HUB_CONFIGS), as JSON."""
    return json.loads(resources.files("augment.testing").joinpath("hub", HUB_CONFIGS[name], path).read_text())
