"""The library API from Python, as the README shows it: load a preset, change fields, run the jobs."""

import subprocess
import sys

import pytest

import augment
from tests.helpers import ENV, REPO


def small_toy_config():
    cfg = augment.load_config("toy")
    cfg.learn.max_steps, cfg.learn.batch_size, cfg.learn.num_inference_steps = 1, 1, 2
    cfg.generate.images_per_class, cfg.generate.shard_size, cfg.generate.num_inference_steps = 2, 2, 2
    return cfg


def test_learn_generate_score_from_python(tmp_path):
    labels = tmp_path / "fm3.txt"
    labels.write_text("0\tt-shirt\n2\tpullover\n4\tcoat\n")
    out, cfg = tmp_path / "run", small_toy_config()
    learned = augment.learn_tokens(labels, out, cfg, progress=False)
    assert isinstance(learned, augment.LearnResult) and len(learned.learned) == 3 and learned.pending == 3
    assert {m["class"] for m in learned.learned.values()} == {"t-shirt", "pullover", "coat"}
    made = augment.generate_set(labels, out, cfg, tokens=out, progress=False)
    assert (made.units, made.images, made.complete) == (3, 6, True)
    again = augment.build(augment.read_label_set(labels), out, cfg, progress=False)  # nothing left to do
    assert not again.learn.learned and again.generate.units == 0 and again.generate.complete
    plan = augment.generate_set(labels, out, cfg, tokens=out, dry_run=True, workers=augment.Workers(1, 2))
    assert plan.dry_run and (plan.total_units, plan.done_units, plan.mine_units) == (3, 3, 1)
    report = augment.score_set(out, cfg, progress=False)
    assert report["images"] == 6 and [c["n"] for c in report["classes"]] == [2, 2, 2]


def test_bad_config_is_a_user_error_before_any_model_loads(tmp_path, monkeypatch):
    import augment.models.generator

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(augment.models.generator, "load_generator", no_loading)
    labels = tmp_path / "l.txt"
    labels.write_text("coat\n")
    cfg = small_toy_config()
    cfg.learn.noise = "pink"
    with pytest.raises(augment.UserError, match="learn.noise must be fresh or fixed"):
        augment.learn_tokens(labels, tmp_path / "out", cfg)
    cfg = small_toy_config()
    cfg.generate.image_format = "gif"
    with pytest.raises(augment.UserError, match="jpg or png"):
        augment.build(labels, tmp_path / "out", cfg)
    for key, value, message in [("dtype", "bf61", "dtype must be one of auto, fp32"),
                                ("label_match", "by_name", "label_match must be one of check, by-index, by-name"),
                                ("device", "gpu", "device must be auto, cpu, cuda, cuda:N, mps or xpu"),
                                ("guide", "", "guide must be a non-empty string")]:  # fmt: skip
        cfg = small_toy_config()
        setattr(cfg, key, value)  # a typo in a YAML file: refused before the guide or the generator loads
        for job in (augment.learn_tokens, augment.generate_set, augment.build):
            with pytest.raises(augment.UserError, match=message):
                job(labels, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
    with pytest.raises(augment.UserError, match="claim mode .* was retired.*--engine ray"):
        augment.generate_set(labels, tmp_path / "out", small_toy_config(), workers=augment.Workers(claim=True))
    with pytest.raises(augment.UserError, match="--ray-workers needs --engine ray"):
        augment.learn_tokens(labels, tmp_path / "out", small_toy_config(), workers=augment.Workers(ray_workers=2))
    with pytest.raises(augment.UserError, match="drop --worker-index"):
        augment.build(labels, tmp_path / "out", small_toy_config(), workers=augment.Workers(0, 2, engine="ray"))


def test_import_augment_is_cheap():
    code = "import sys, augment; assert 'torch' not in sys.modules, 'torch imported'; print(augment.__all__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "learn_tokens" in r.stdout
