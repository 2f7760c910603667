"""The house's structure (docs/architecture.md), measured by research/import_metrics.py: no import cycle, no
import up a layer, no stage folder importing another, every module in a layer; and guide backends as one
registered family (a new backend is one module: registering it is all the rest of the house needs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from augment.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _metrics():
    spec = importlib.util.spec_from_file_location("import_metrics", ROOT / "research" / "import_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.analyse(ROOT)


def test_no_cycles_no_arrows_up_no_stage_imports_another():
    r = _metrics()
    assert r["import_cycles"] == []
    assert r["up_layer_edges"] == []
    assert r["cross_stage_edges"] == []
    assert r["unmapped_modules"] == []


def test_the_metrics_see_a_cycle_and_an_arrow_up(tmp_path, monkeypatch):
    """The measuring device can fail: two modules importing each other, one of them from a lower layer."""
    spec = importlib.util.spec_from_file_location("import_metrics", ROOT / "research" / "import_metrics.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    (tmp_path / "augment").mkdir()
    (tmp_path / "downstream").mkdir()
    (tmp_path / "augment" / "__init__.py").write_text("")
    (tmp_path / "downstream" / "__init__.py").write_text("")
    (tmp_path / "augment" / "errors.py").write_text("def f():\n    from augment import config\n")
    (tmp_path / "augment" / "config.py").write_text("from augment import errors\n")
    r = m.analyse(tmp_path)
    assert r["import_cycles"] == [["augment.config", "augment.errors"]]
    assert [(e["importer"], e["imported"]) for e in r["up_layer_edges"]] == [("augment.errors", "augment.config")]


def test_a_backend_registered_in_one_place_is_a_guide_everywhere(monkeypatch):
    """A backend the house has never heard of, registered by one call: its specs are checked (its own option
    check), loaded, named by hub repo, and refused with the list of forms when the prefix is unknown."""
    from augment.models import guides
    from augment.models.guides.base import REGISTRY, Backend, Guide, Preprocess, register
    from augment.models.hub import job_models

    def load(name, spec, class_names):
        return Guide(torch.nn.Flatten(), ["a", "b"], Preprocess((2, 2), (0.5,), (0.5,)), spec)

    def parse(name, spec):
        if name.startswith("bad"):
            raise UserError(f"guide {spec!r}: bad name")

    monkeypatch.setitem(REGISTRY, "const", None)
    register(Backend("const", "const:NAME", load, parse=parse, hub_repo=lambda name: (f"org/{name}", "config.json")))
    guide = guides.load_guide("const:two")
    assert guide.labels == ["a", "b"] and guide.spec == "const:two" and guide.mean.dtype == torch.float32
    assert ("guide", "org/two", "config.json") in job_models(None, "const:two")
    with pytest.raises(UserError, match="bad name"):
        guides.check_spec("const:bad")
    monkeypatch.delitem(REGISTRY, "const")
    with pytest.raises(UserError, match=r"expected one of .*hf:ID_OR_DIR") as e:
        guides.check_spec("const:two")
    assert "const:NAME" not in str(e.value)
