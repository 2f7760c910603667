"""The LoRA route: adapting the toy generator to a few shots (augment adapt), diffusers loading the file, the
adapter fused in before learning and generating, and what a token learned on one adapter says elsewhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.config import load_config
from augment.data.images import GreyImages, Split
from augment.errors import UserError
from augment.settings import LORA_WEIGHTS
from tests.helpers import CLI, ENV

pytest.importorskip("peft")

TOY = load_config("toy").generator


def _labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("0\tt-shirt\n1\ttrouser\n")
    return path


def _shots(n_per_class: int = 3, seed: int = 0) -> Split:
    """Two classes of grey 28×28 images: a bright block top-left (class 0) or bottom-right (class 1)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in (0, 1):
        for _ in range(n_per_class):
            x = rng.integers(0, 40, (28, 28), dtype=np.uint8)
            x[(slice(2, 14) if c == 0 else slice(14, 26)), :] += 180
            images.append(x)
            labels.append(c)
    return Split(GreyImages(np.stack(images)), np.array(labels))


def _config(steps: int = 6, **lora):
    cfg = load_config("toy", overrides={"device": "cpu"})
    cfg.lora.max_steps, cfg.lora.batch_size, cfg.lora.checkpoint_every = steps, 4, 0
    for k, v in lora.items():
        setattr(cfg.lora, k, v)
    return cfg


def _unet_out(pipe, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ids = pipe.tokenizer(["a photo of a t-shirt"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.unet(x, torch.tensor([500]), pipe.text_encoder(ids)[0]).sample


def test_the_adapter_is_a_diffusers_lora_that_a_plain_pipeline_loads(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from augment.jobs.adapt import adapt_generator
    from augment.models.generator import load_generator

    out = tmp_path / "lora"
    result = adapt_generator(_labels(tmp_path), _shots(), out, _config(steps=6, lr=1e-2))
    assert result.steps == 6 and (out / LORA_WEIGHTS).is_file() and not (out / "checkpoint").exists()
    with safe_open(str(out / LORA_WEIGHTS), "pt") as f:
        keys = list(f.keys())
    # diffusers' names (convert_state_dict_to_diffusers, as its dreambooth LoRA example and DataDream save them)
    assert any(k.startswith("unet.") and "attn2.to_q.lora.down" in k for k in keys)  # cross- and self-attention
    assert any(k.startswith("unet.") and "attn1.to_out.0.lora.up" in k for k in keys)
    assert any(k.startswith("text_encoder.") and "q_proj.lora_linear_layer.down" in k for k in keys)
    assert all(".down." in k or ".up." in k for k in keys)  # the adapter alone, no base weight

    plain = StableDiffusionPipeline.from_pretrained(TOY, safety_checker=None, requires_safety_checker=False)
    base = _unet_out(plain)
    plain.load_lora_weights(str(out))  # as a user of diffusers loads it
    adapted = _unet_out(plain)
    assert not torch.allclose(base, adapted, atol=1e-4)  # the adapter does something

    cfg = _config()
    cfg.lora.weights = str(out)
    fused = load_generator(TOY, "cpu", "fp32", cfg.lora)  # ours: fused, peft layers removed
    assert not any("lora" in n for n, _ in fused.unet.named_modules())
    torch.testing.assert_close(_unet_out(fused), adapted, atol=1e-5, rtol=1e-4)


def _contents(directory: Path) -> tuple[dict[str, bytes], dict]:
    """A LoRA file's tensors (as bytes) and metadata: what "the same adapter" means (safetensors writes the
    metadata mapping in no fixed order, so the file's bytes may differ)."""
    from safetensors import safe_open

    with safe_open(str(directory / LORA_WEIGHTS), "pt") as f:
        tensors = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}
        return tensors, {k: json.loads(v) if k != "format" else v for k, v in f.metadata().items()}


def test_the_same_seed_gives_the_same_adapter_and_a_killed_run_continues_to_it(tmp_path, monkeypatch, capsys):
    from augment.adapt import lora as trainer_module
    from augment.jobs.adapt import adapt_generator

    labels, shots = _labels(tmp_path), _shots()
    whole = adapt_generator(labels, shots, tmp_path / "a", _config(steps=7))
    again = adapt_generator(labels, shots, tmp_path / "b", _config(steps=7))
    assert _contents(tmp_path / "a") == _contents(tmp_path / "b")
    assert whole.identity == again.identity
    other = adapt_generator(labels, shots, tmp_path / "c", _config(steps=7, seed=1))
    assert other.identity != whole.identity

    real_step = trainer_module.LoraTrainer.step

    def dies_at_5(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(trainer_module.LoraTrainer, "step", dies_at_5)
    with pytest.raises(KeyboardInterrupt):
        adapt_generator(labels, shots, tmp_path / "d", _config(steps=7, checkpoint_every=2))
    assert json.loads((tmp_path / "d" / "checkpoint" / "state.json").read_text())["step"] == 4
    assert not (tmp_path / "d" / LORA_WEIGHTS).exists()  # nothing final half-written
    monkeypatch.setattr(trainer_module.LoraTrainer, "step", real_step)
    capsys.readouterr()
    resumed = adapt_generator(labels, shots, tmp_path / "d", _config(steps=7, checkpoint_every=2))
    assert "resumed at step 4 of 7" in capsys.readouterr().err
    assert _contents(tmp_path / "d") == _contents(tmp_path / "a")
    assert resumed.identity == whole.identity
    assert adapt_generator(labels, shots, tmp_path / "d", _config(steps=7)).done_before  # a rerun trains nothing
    with pytest.raises(UserError, match="another config"):
        adapt_generator(labels, shots, tmp_path / "d", _config(steps=8))


def test_only_the_adapter_trains(tmp_path):
    from augment.adapt.lora import LoraTrainer
    from augment.models.generator import load_generator

    pipe = load_generator(TOY, "cpu", "fp32")
    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}

    def weights():
        return {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}

    before = weights()
    cfg = _config(steps=3, lr=1e-2)
    trainer = LoraTrainer(pipe, _shots(), ["t-shirt", "trouser"], cfg.lora, 32)
    initial = weights()
    for s in range(3):
        trainer.step(s)
    after = weights()
    for name in models:
        changed = {k for k in after[name] if not torch.equal(after[name][k], initial[name][k])}
        assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed), name
        for k, v in before[name].items():  # peft wraps a target layer: its frozen weight becomes base_layer's
            moved = (
                k
                if k in after[name]
                else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            )
            assert torch.equal(after[name][moved], v), k


def test_tokens_learned_on_an_adapter_record_it_and_elsewhere_say_so(tmp_path):
    from augment.jobs.adapt import adapt_generator

    labels = _labels(tmp_path)
    adapt_generator(labels, _shots(), tmp_path / "lora", _config(steps=2))
    run = tmp_path / "run"
    small = ["--max-steps", "1", "--learn-batch-size", "2", "--images-per-class", "2", "--shard-size", "2",
             "--batch-size", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    done = subprocess.run([*CLI, "build", "--preset", "toy", "--labels", str(labels), "--out", str(run), "--lora",
                           str(tmp_path / "lora"), *small], env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = json.loads(next((run / "tokens").glob("*/meta.json")).read_text())
    from augment.models.lora import lora_identity

    assert meta["lora"]["identity"] == lora_identity(str(tmp_path / "lora"))
    manifest = json.loads((run / "manifest.json").read_text())
    for stage in ("learn", "generate"):
        assert manifest[stage]["config"]["lora"]["weights"].startswith("lora (content:")
    assert manifest["generate"]["lora"]["identity"] == manifest["learn"]["lora"]["identity"] == meta["lora"]["identity"]
    assert "tokens learned on" not in done.stderr
    gen = ["--images-per-class", "2", "--shard-size", "2", "--batch-size", "2", "--no-progress", "--device", "cpu"]
    plain = subprocess.run([*CLI, "generate", "--preset", "toy", "--labels", str(labels), "--tokens", str(run),
                            "--out", str(tmp_path / "g"), *gen], env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    notes = [line for line in plain.stderr.splitlines() if "tokens learned on LoRA" in line]
    assert len(notes) == 1 and "used without one" in notes[0]


def test_lora_inputs_are_refused_in_one_line(tmp_path, monkeypatch):
    from augment.jobs.adapt import adapt_generator
    from augment.settings import check_lora_weights, require_peft

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no pytorch_lora_weights"):
        check_lora_weights(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="local directory"):
        check_lora_weights("s3://bucket/lora")
    with pytest.raises(UserError, match="must contain"):
        _config(caption="a photo").validate()
    with pytest.raises(UserError, match="positions"):
        adapt_generator(_labels(tmp_path), Split(GreyImages(np.zeros((1, 28, 28), np.uint8)), np.array([5])),
                        tmp_path / "x", _config())  # fmt: skip
    assert not (tmp_path / "x").exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(UserError, match=r"augment\[lora\]"):
        require_peft()


def test_the_note_names_both_another_adapter_and_another_sampler(tmp_path):
    from augment.config import GenerateConfig
    from augment.data.tokens_io import sampling_note, save_token
    from augment.labels import as_label_set

    labels = as_label_set(_labels(tmp_path))
    learned = {"config": {"scheduler": "pipeline", "num_inference_steps": 10, "guidance_scale": 4.0},
               "lora": {"identity": "lora:aaaa"}}  # fmt: skip
    for c in labels.classes:
        save_token(tmp_path / "run", c, f"<c{c.position}>", torch.zeros(8), {**learned, "token": f"<c{c.position}>"})
    same = GenerateConfig(num_inference_steps=10, guidance_scale=4.0)
    assert sampling_note(tmp_path / "run", labels, same, "lora:aaaa") is None
    note = sampling_note(tmp_path / "run", labels, GenerateConfig(num_inference_steps=20, guidance_scale=4.0), None)
    assert note.startswith("tokens learned on LoRA lora:aaaa, used without one; sampling otherwise")
    assert "num_inference_steps 10 → 20" in note
    other = sampling_note(tmp_path / "run", labels, same, "lora:bbbb")
    assert other == ("tokens learned on LoRA lora:aaaa, used with LoRA lora:bbbb: tokens do best on the generator "
                     "and sampler they were learned with")  # fmt: skip
