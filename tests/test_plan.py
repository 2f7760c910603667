"""The cost plan (`--plan`: UNet evaluations from the label set and config, no model loads) against what a real
run counts (a hook on the UNet): per learner class-step and per generated image, exactly; and for the
sd14-cub preset on the real CUB label set, the figures the SD-1.4 scheduler config implies."""

from __future__ import annotations

import json
from pathlib import Path

from augment.cli import main
from augment.config import load_config
from augment.jobs.plan import plan_run

ROOT = Path(__file__).resolve().parents[1]


def test_the_plan_is_what_a_short_toy_build_counts(tmp_path, capsys):
    labels = tmp_path / "l.txt"
    labels.write_text("t-shirt\ntrouser\nsandal\n")
    out = tmp_path / "out"
    flags = ["--preset", "toy", "--labels", str(labels), "--out", str(out), "--max-steps", "2",
             "--learn-batch-size", "2", "--steps", "4", "--images-per-class", "3", "--shard-size", "4",
             "--guidance-cutoff", "0.5", "--no-progress"]  # fmt: skip
    assert main(["build", *flags, "--plan"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    config = load_config("toy", overrides={"learn.max_steps": 2, "learn.batch_size": 2, "learn.num_inference_steps": 4,
                                           "generate.num_inference_steps": 4, "generate.images_per_class": 3,
                                           "generate.shard_size": 4, "learn.guidance_cutoff": 0.5,
                                           "generate.guidance_cutoff": 0.5})  # fmt: skip
    plan = plan_run(labels, config)
    assert f"at most {plan.learn.evaluations:,}" in printed and f"generate  {plan.generate.evaluations:,}" in printed
    assert main(["build", *flags]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    learned = manifest["learn"]["unet_evaluations"]
    assert learned["per_class_step"] == plan.learn.evaluations_per_unit
    assert learned["done"] == learned["class_steps_done"] * plan.learn.evaluations_per_unit > 0
    assert learned["done"] <= learned["planned_at_most"] == plan.learn.evaluations
    made = manifest["generate"]["unet_evaluations"]
    assert made["done"] == made["planned"] == plan.generate.evaluations == 9 * plan.generate.evaluations_per_unit
    assert plan.generate.guided_calls < plan.generate.calls_per_image  # the cutoff: fewer guided calls


def test_sd14_cub_plan_from_the_real_scheduler_config():
    """SD-1.4's PNDM (skip_prk_steps, steps_offset 1: augment/testing/sd_configs/sd14.json, from the hub repo)
    makes 51 calls for 50 steps; the presets' cutoff 0.5 guides the first 26; 200 classes × 100 images."""
    plan = plan_run(ROOT / "manifests" / "cub200.txt", load_config("sd14-cub"))
    assert (plan.generate.calls_per_image, plan.generate.guided_calls) == (51, 26)
    assert plan.generate.evaluations == 200 * 100 * 77
    assert plan.learn.evaluations_per_unit == 5 * 77 and plan.learn.evaluations == 200 * 200 * 5 * 77
