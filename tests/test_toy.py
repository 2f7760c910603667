"""The toy world: its committed pipeline and classifiers load and work; its training scripts stay alive."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

from augment.models.guides import load_guide
from augment.toy import FINE_NAMES, GENERATOR_DIR, GUIDE_DIR, HELDOUT_DIR
from augment.toy.data import load, to_rgb32


def test_committed_pipeline_loads_with_diffusers_and_generates():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(GENERATOR_DIR), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a photo of a trouser",
        num_inference_steps=4,
        guidance_scale=4.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    image = out.images[0]
    assert image.shape == (32, 32, 3)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05  # not a blank or saturated frame


@pytest.mark.parametrize("path", [GUIDE_DIR, HELDOUT_DIR])
def test_committed_classifiers_load_through_ckpt_and_classify_real_images(path):
    guide = load_guide(f"ckpt:{path}")
    assert guide.labels == FINE_NAMES
    images, labels = load("test")
    x = torch.from_numpy(to_rgb32(images[:300]))
    with torch.no_grad():
        pred = guide(x).argmax(1).numpy()
    assert (pred == labels[:300]).mean() > 0.8


def test_generator_training_script_runs_a_few_steps(tmp_path):
    from diffusers import StableDiffusionPipeline

    from augment.toy.train_generator import main

    main(
        [
            "--out",
            str(tmp_path),
            "--vae-steps",
            "2",
            "--unet-steps",
            "2",
            "--batch-size",
            "8",
            "--max-images",
            "64",
            "--threads",
            "1",
        ]
    )
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path))
    assert pipe.tokenizer("a photo of a shoe").input_ids[:3] == [49406, 320, 1125]  # the real CLIP BPE
    assert "unet step 2/2" in (tmp_path / "train_log.txt").read_text()


def test_classifier_training_script_runs(tmp_path):
    from augment.toy.train_classifiers import main

    main(["--out", str(tmp_path), "--epochs", "1", "--max-images", "256", "--only", "heldout", "--threads", "1"])
    guide = load_guide(f"ckpt:{tmp_path / 'heldout'}")
    assert guide(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert np.isfinite(guide(torch.rand(1, 3, 32, 32)).detach().numpy()).all()


def test_caption_scheme_draws_fine_name_synonym_and_coarse_word_at_the_configured_rates():
    from transformers import CLIPTokenizer

    from augment.toy import COARSE_WORD, SYNONYM
    from augment.toy.train_generator import TrainConfig, caption_table, draw_captions

    tokenizer = CLIPTokenizer.from_pretrained(str(GENERATOR_DIR / "tokenizer"))
    table = caption_table(tokenizer)
    cfg = TrainConfig(fine_caption_p=0.1, synonym_caption_p=0.45, empty_caption_p=0.1)
    labels = np.repeat(np.arange(10), 4000)
    rows = draw_captions(labels, np.random.default_rng(0), cfg).numpy()

    def norm(ids):
        return tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")  # "t - shirt"

    assert norm(table[0]) == ""
    for y, fine in enumerate(FINE_NAMES):
        words = {"fine": fine, "coarse": COARSE_WORD[fine], "synonym": SYNONYM[fine]}
        shares = {0: 0.1, 1 + 3 * y: 0.9 * 0.1, 2 + 3 * y: 0.9 * 0.45, 3 + 3 * y: 0.9 * 0.45}
        for row, (kind, word) in zip(list(shares)[1:], words.items()):
            assert norm(table[row]) == ("aphotoofa" + word).replace(" ", ""), (fine, kind)
        drawn = rows[labels == y]
        for row, share in shares.items():
            assert abs((drawn == row).mean() - share) < 0.03, (fine, row)


def test_training_defaults_are_the_committed_generators_settings():
    """`python -m augment.toy.train_generator --out DIR --seed 0` must retrain the committed weights' recipe."""
    import json

    from augment.toy.train_generator import TrainConfig

    # options added to the script after the committed generator was trained, with the value it was trained with
    added_since = {"vae_from": ""}
    committed = {**added_since, **json.loads((GENERATOR_DIR / "train_config.json").read_text())}
    defaults = asdict(TrainConfig())
    assert {k: defaults[k] for k in committed} == committed
    assert set(defaults) - set(committed) <= {"max_images"}


def test_vae_from_reuses_another_runs_autoencoder_and_rejects_a_directory_without_one(tmp_path, capsys):
    from safetensors.torch import load_file

    from augment.toy.train_generator import main

    small = ["--unet-steps", "1", "--batch-size", "8", "--max-images", "64", "--threads", "1"]
    main(["--out", str(tmp_path / "a"), "--vae-steps", "2", *small])
    main(["--out", str(tmp_path / "b"), "--seed", "1", "--vae-steps", "2", "--vae-from", str(tmp_path / "a"), *small])
    main(["--out", str(tmp_path / "c"), "--seed", "1", "--vae-steps", "2", *small])
    vae = {d: load_file(tmp_path / d / "vae" / "diffusion_pytorch_model.safetensors") for d in "abc"}
    assert all(torch.equal(vae["a"][k], vae["b"][k]) for k in vae["a"])
    assert not all(torch.equal(vae["a"][k], vae["c"][k]) for k in vae["a"])  # seed 1 alone trains another
    assert "vae loaded from" in (tmp_path / "b" / "train_log.txt").read_text()

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "d"), "--vae-from", str(tmp_path / "c" / "unet")])
    assert e.value.code == 2 and not (tmp_path / "d").exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_vae_schedule_cosine_warms_up_then_decays_to_zero_and_constant_stays():
    from augment.toy.train_generator import TrainConfig, vae_lr

    cos = TrainConfig(vae_steps=700, vae_lr=2e-3, vae_schedule="cosine")
    lrs = [vae_lr(cos, s) for s in range(1, 701)]
    assert lrs[0] < lrs[24] < lrs[49] and lrs[49] == pytest.approx(2e-3, rel=2e-2)
    assert all(a >= b for a, b in zip(lrs[49:], lrs[50:])) and lrs[-1] == pytest.approx(0, abs=1e-12)
    const = TrainConfig(vae_steps=700, vae_lr=1e-3, vae_schedule="constant")
    assert {vae_lr(const, s) for s in (1, 350, 700)} == {1e-3}


def test_v1_caption_settings_draw_exactly_as_the_first_generators_code():
    """The first generator (25% fine names, no synonyms) is still reproducible from its settings."""
    from augment.toy.train_generator import TrainConfig, draw_captions

    labels = np.random.default_rng(1).integers(0, 10, 5000)
    v1 = TrainConfig(fine_caption_p=0.25, synonym_caption_p=0.0, unet_steps=1800)
    rows = draw_captions(labels, np.random.default_rng(0), v1).numpy()
    old = np.random.default_rng(0)  # v1's scheme: rows 0 / 1 + 2y (fine) / 2 + 2y (coarse)
    empty, fine = old.random(5000) < 0.10, old.random(5000) < 0.25
    old_kind = np.where(empty, -1, np.where(fine, 0, 1))
    kind = np.where(rows == 0, -1, (rows - 1) % 3)
    assert (kind == old_kind).all() and ((rows == 0) | ((rows - 1) // 3 == labels)).all()


def test_generator_training_rejects_caption_shares_over_one(tmp_path, capsys):
    from augment.toy.train_generator import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "g"), "--fine-caption-p", "0.6", "--synonym-caption-p", "0.6"])
    assert e.value.code == 2 and not (tmp_path / "g").exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
