"""SDXL base 1.0 at full size, random weights, built offline from the hub's own config files
(augment/testing/hub/sdxl-base-1.0, with their source): `augment build --preset sdxl-base --generator DIR` learns
and generates in bf16 at a small resolution, and the tokens load into a plain StableDiffusionXLPipeline as the
README shows. bf16 at this size needs a CPU with native bf16 (elsewhere ~80x slower: skipped there; the tiny
SDXL tests in tests/test_sdxl.py run everywhere)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from augment.cli import main
from augment.models.hub_files import hub_file
from tests.full_size import native_bf16

pytestmark = [pytest.mark.slow, native_bf16]

SMALL = """
learn: {height: 128, width: 128, num_inference_steps: 3, max_steps: 1, batch_size: 2, keep: last}
generate: {height: 128, width: 128, num_inference_steps: 3, images_per_class: 1, shard_size: 1, batch_size: 1}
"""


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    """SDXL base's architecture with random weights, saved in bf16 (6.5 GB on disk; removed after the module)."""
    from augment.testing import save_random_pipeline

    root = tmp_path_factory.mktemp("sdxl")
    yield save_random_pipeline("sdxl-base", root / "stable-diffusion-xl-base-1.0", dtype=torch.bfloat16)
    shutil.rmtree(root, ignore_errors=True)


def test_the_random_sdxl_is_the_hub_architecture(sdxl_dir):
    """Every key of the hub's component configs has the hub's value in the saved pipeline (versions and the
    VAE's `_name_or_path` aside); the pipeline class, its components' classes and force_zeros_for_empty_prompt are
    the hub's model_index.json's; the second tokenizer pads with "!" as the hub's does."""
    for path in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        hub, ours = hub_file("sdxl-base", path), json.loads((sdxl_dir / path).read_text())
        differ = {k for k, v in hub.items() if not k.startswith("_") and ours.get(k) != v}
        assert not differ, (path, differ)
    for path in ("text_encoder/config.json", "text_encoder_2/config.json"):
        hub, ours = hub_file("sdxl-base", path), json.loads((sdxl_dir / path).read_text())
        keys = ("architectures", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "hidden_act", "projection_dim", "max_position_embeddings", "vocab_size", "layer_norm_eps")  # fmt: skip
        assert {k: ours[k] for k in keys} == {k: hub[k] for k in keys}, path
    hub, ours = hub_file("sdxl-base", "model_index.json"), json.loads((sdxl_dir / "model_index.json").read_text())
    assert {k: v for k, v in ours.items() if not k.startswith("_") and v != [None, None]} == {
        k: v for k, v in hub.items() if not k.startswith("_") and k != "add_watermarker"
    }
    assert ours["_class_name"] == hub["_class_name"] == "StableDiffusionXLPipeline"
    pad = json.loads((sdxl_dir / "tokenizer_2" / "tokenizer_config.json").read_text())["pad_token"]
    assert pad == hub_file("sdxl-base", "tokenizer_2/tokenizer_config.json")["pad_token"] == "!"


def test_sdxl_base_preset_builds_through_the_cli_and_tokens_load_into_a_plain_pipeline(
    sdxl_dir, cub_guide_dir, tmp_path, capsys
):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from augment.models.generator import load_generator
    from augment.models.prompting import encode_prompts

    labels = tmp_path / "cub2.txt"
    labels.write_text("0\tBlack footed Albatross\n16\tCardinal\n")
    small = tmp_path / "small.yaml"
    small.write_text(SMALL)
    out = tmp_path / "run"
    argv = ["build", "--preset", "sdxl-base", "--config", str(small), "--labels", str(labels), "--generator",
            str(sdxl_dir), "--guide", f"hf:{cub_guide_dir}", "--dtype", "bf16", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 2
    tokens = {}
    for slug in ("000-black-footed-albatross", "001-cardinal"):
        meta = json.loads((out / "tokens" / slug / "meta.json").read_text())
        assert meta["steps"] == 1 and meta["classes_per_step"] >= 1 and meta["history"][0]["grad_norm"] > 0
        rows = load_file(str(out / "tokens" / slug / "learned_embeds.safetensors"))
        assert (rows["clip_l"].shape, rows["clip_g"].shape) == ((1, 768), (1, 1280))
        tokens[meta["token"]] = rows
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()

    # the README's code: each row with its own tokenizer and text encoder
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir), dtype=torch.bfloat16, add_watermarker=False)
    for token, state_dict in tokens.items():
        pipe.load_textual_inversion(state_dict["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)  # fmt: skip
        pipe.load_textual_inversion(state_dict["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)  # fmt: skip
    prompts = [f"a photo of a {token} bird" for token in tokens]
    ours = load_generator(str(sdxl_dir), "cpu", "bf16")
    from augment.data.tokens_io import load_tokens
    from augment.labels import read_label_set

    load_tokens(ours, out, read_label_set(labels))
    with torch.no_grad():
        torch.testing.assert_close(encode_prompts(pipe, prompts), encode_prompts(ours, prompts))
        # one learner step (keep: last) moved the rows off their init word's ("a", the preset's), in both encoders
        init = encode_prompts(pipe, [p.replace(t, "a") for p, t in zip(prompts, tokens)])
        learned = encode_prompts(pipe, prompts)
        assert not torch.allclose(learned[:, :-1, :768], init[:, :-1, :768])
        assert not torch.allclose(learned[:, :-1, 768:], init[:, :-1, 768:])
        image = pipe(prompt=prompts[0], num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and bool(torch.isfinite(torch.from_numpy(image)).all())
