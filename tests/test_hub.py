"""Hub models are checked before any loads: one line at once when one is neither cached nor reachable, and
an offline process (all cached, hub unreachable) loads from the cache without the libraries' retries."""

from __future__ import annotations

import os

import pytest

from augment.cli import main
from augment.errors import UserError
from augment.models import hub


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty local cache and a hub that does not answer (recorded, so no test depends on the network)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(hub, "hub_error", lambda repo, timeout: asked.append(repo) or "ConnectError: no route")
    return tmp_path / "hub-cache", asked


def cache(root, repo: str, filename: str) -> None:
    """A model as huggingface_hub's cache holds it: refs/main → snapshots/<commit>/<file>."""
    d = root / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text("abc123")
    (d / "snapshots" / "abc123").mkdir(parents=True)
    (d / "snapshots" / "abc123" / filename).write_text("{}")


def test_the_papers_models_offline_are_one_line_naming_each(no_hub, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["learn", "--preset", "sd14-cub", "--labels", "manifests/cub200.txt", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hub is unreachable" in err
    assert "generator 'CompVis/stable-diffusion-v1-4'; guide 'vesteinn/vit-mae-cub'" in err and "hf download" in err
    assert not out.exists()


def test_all_cached_and_hub_unreachable_goes_offline(no_hub, monkeypatch):
    root, asked = no_hub
    cache(root, "CompVis/stable-diffusion-v1-4", "model_index.json")
    cache(root, "vesteinn/vit-mae-cub", "config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    note = hub.check_hub(hub.job_models("CompVis/stable-diffusion-v1-4", "hf:vesteinn/vit-mae-cub"))
    assert "load from the local cache" in note and os.environ["HF_HUB_OFFLINE"] == "1" and len(asked) == 1
    monkeypatch.delenv("HF_HUB_OFFLINE")


def test_only_the_missing_model_is_named(no_hub):
    root, _ = no_hub
    cache(root, "CompVis/stable-diffusion-v1-4", "model_index.json")
    with pytest.raises(UserError) as info:
        hub.check_hub(hub.job_models("CompVis/stable-diffusion-v1-4", "hf:vesteinn/vit-mae-cub"))
    assert "guide 'vesteinn/vit-mae-cub'" in str(info.value) and "generator 'CompVis" not in str(info.value)


def test_with_hf_hub_offline_no_request_is_made(no_hub, monkeypatch):
    _, asked = no_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        hub.check_hub(hub.job_models("CompVis/stable-diffusion-v1-4"))
    assert asked == []


def test_local_directories_and_checkpoints_are_not_hub_models(tmp_path):
    (tmp_path / "gen").mkdir()
    assert hub.job_models(str(tmp_path / "gen"), f"ckpt:{tmp_path}", f"hf:{tmp_path}?pool=mean") == []
    assert hub.job_models(None, "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k") == [
        ("guide", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "config.json")
    ]
    assert hub.check_hub([]) is None
