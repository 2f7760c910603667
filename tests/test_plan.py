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
    learned = manifest["workers"]["learn"]["0of1"]["unet_evaluations"]
    assert learned["per_class_step"] == plan.learn.evaluations_per_unit
    assert learned["done"] == learned["class_steps_done"] * plan.learn.evaluations_per_unit > 0
    assert learned["done"] <= learned["planned_at_most"] == plan.learn.evaluations
    made = manifest["workers"]["generate"]["0of1"]["unet_evaluations"]
    assert made["done"] == made["planned"] == plan.generate.evaluations == 9 * plan.generate.evaluations_per_unit
    assert plan.generate.guided_calls < plan.generate.calls_per_image  # the cutoff: fewer guided calls


def test_sd14_cub_plan_from_the_real_scheduler_config():
    """SD-1.4's PNDM (skip_prk_steps, steps_offset 1: augment/testing/sd_configs/sd14.json, from the hub repo)
    makes 51 calls for 50 steps; the presets' cutoff 0.5 guides the first 26; 200 classes × 100 images."""
    plan = plan_run(ROOT / "manifests" / "cub200.txt", load_config("sd14-cub"))
    assert (plan.generate.calls_per_image, plan.generate.guided_calls) == (51, 26)
    assert plan.generate.evaluations == 200 * 100 * 77
    assert plan.learn.evaluations_per_unit == 5 * 77 and plan.learn.evaluations == 200 * 200 * 5 * 77


def test_the_sd14_cub_plan_matches_a_short_run_of_its_sampler(sd14_narrow_dir, tmp_path):
    """The sd14-cub preset's learner and generation (SD-1.4's PNDM: N + 1 calls, cutoff 0.5, grad_steps 2,
    feature reuse at interval 3) on SD-1.4's architecture at 1/16 width, random weights, 64 px, 4 steps: the
    manifest's counted UNet rows are the plan's, shallow ones included."""
    from augment.config import TOY_WEIGHTS

    labels = tmp_path / "l.txt"
    labels.write_text("0\tt-shirt\n1\ttrouser\n")
    flags = ["--preset", "sd14-cub", "--labels", str(labels), "--generator", str(sd14_narrow_dir),
             "--guide", f"ckpt:{TOY_WEIGHTS / 'guide'}", "--label-match", "by-index", "--dtype", "fp32",
             "--device", "cpu", "--steps", "4", "--max-steps", "1", "--learn-batch-size", "1",
             "--classes-per-step", "2", "--images-per-class", "2", "--shard-size", "4", "--cache-interval", "3",
             "--no-progress"]  # fmt: skip
    config_file = tmp_path / "size.yaml"
    config_file.write_text("learn: {height: 64, width: 64, gradient_checkpointing: false}\n"
                           "generate: {height: 64, width: 64}\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["build", *flags, "--config", str(config_file), "--out", str(out)]) == 0
    config = load_config("sd14-cub", str(config_file), {
        "generator": str(sd14_narrow_dir), "learn.num_inference_steps": 4, "generate.num_inference_steps": 4,
        "learn.max_steps": 1, "learn.batch_size": 1, "generate.images_per_class": 2, "generate.shard_size": 4,
        "learn.cache_interval": 3, "generate.cache_interval": 3})  # fmt: skip
    plan = plan_run(labels, config)
    assert (plan.generate.calls_per_image, plan.generate.guided_calls) == (5, 3)  # PNDM: 4 steps, 5 calls
    manifest = json.loads((out / "manifest.json").read_text())
    learned, made = (
        manifest["workers"]["learn"]["0of1"]["unet_evaluations"],
        manifest["workers"]["generate"]["0of1"]["unet_evaluations"],
    )
    assert learned["done"] == learned["class_steps_done"] * plan.learn.evaluations_per_unit == 2 * 8
    assert learned["shallow_done"] == learned["class_steps_done"] * plan.learn.shallow_per_unit
    assert made["done"] == plan.generate.evaluations == 4 * 8
    assert made["shallow_done"] == 4 * plan.generate.shallow_per_unit > 0


def test_measured_rates_turn_the_plan_into_time(tmp_path, capsys):
    """--rates FILE (benchmarks/gpu_check.py's "rates"): each stage's rows over its rate, for the busiest worker;
    a file without a positive rate, or --rates without --plan, is one line and exit 2."""
    rates = tmp_path / "gpu.json"
    rates.write_text(json.dumps({"rates": {"device": "a test GPU", "generate_rows_per_s": 77.0,
                                           "learn_rows_per_s": 385.0}}))  # fmt: skip
    base = ["build", "--preset", "sd14-cub", "--labels", str(ROOT / "manifests" / "cub200.txt"), "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main([*base, "--plan", "--rates", str(rates)]) == 0
    printed = capsys.readouterr().out
    # 200 classes × 200 steps × 385 rows / 385 rows/s = 40,000 s; 20,000 images × 77 rows / 77 rows/s = 20,000 s
    assert "time at the rates measured on a test GPU: learn at most 11.1 h, generate 5.6 h" in printed
    assert main([*base, "--plan", "--rates", str(rates), "--num-workers", "4", "--worker-index", "0"]) == 0
    # the busiest worker: 7 groups of at most 32 classes dealt to 4 workers, two get 64 classes: 4,928,000 rows
    assert "the busiest worker: learn at most 3.6 h, generate 1.4 h" in capsys.readouterr().out
    plan = plan_run(ROOT / "manifests" / "cub200.txt", load_config("sd14-cub"), rates={"generate_rows_per_s": 1.0})
    assert plan.seconds() == {"generate": 200 * 100 * 77}
    rates.write_text(json.dumps({"generate_rows_per_s": 0}))
    assert main([*base, "--plan", "--rates", str(rates)]) == 2
    assert "generate_rows_per_s must be a positive number" in capsys.readouterr().err
    assert main([*base, "--rates", str(rates)]) == 2
    assert "--rates goes with --plan" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
