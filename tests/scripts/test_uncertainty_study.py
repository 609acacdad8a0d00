"""The uncertainty study end to end on real hippocampus data in --quick mode, and its exact-mode helper."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from eunets_monai.networks.nets.unet import EUNet
from eunets_monai.uncertainty.collaboration import collaboration_gradient

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / ".." / "shared" / "data" / "Task04_Hippocampus"


def _load_script():
    spec = importlib.util.spec_from_file_location("uncertainty_study", REPO / "scripts" / "uncertainty_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


study = _load_script()


@pytest.mark.parametrize("shape", [(1, 1, 8, 12), (1, 1, 8, 8, 6)])
def test_exact_at_pixels_equals_exact_mode(shape):
    torch.manual_seed(0)
    net = EUNet(len(shape) - 2, 1, 3, channels=(2, 4, 8)).eval()
    x = torch.randn(shape)
    full = collaboration_gradient(net, x, mode="exact").flatten()
    pixels = torch.tensor([0, 5, 17, full.numel() - 1])
    assert torch.allclose(study.exact_collaboration_at(net, x, pixels, chunk=3), full[pixels], atol=1e-4)
    assert all(p.requires_grad for p in net.parameters())  # flags restored


def test_sample_pixels_is_stratified_and_seeded():
    import numpy as np

    pred = np.zeros((6, 6), int)
    label = np.zeros((6, 6), int)
    label[:2, :2] = 1
    a = study.sample_pixels(pred, label, 6, seed=1)
    assert len(set(a.tolist())) == 6 and sum(i in {0, 1, 6, 7} for i in a) == 3
    assert np.array_equal(a, study.sample_pixels(pred, label, 6, seed=1))


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "dataset.json").is_file(), reason="needs ../shared/data/Task04_Hippocampus")
def test_quick_run_end_to_end(tmp_path):
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    out = study.main(["--quick", "--docs-dir", str(docs), "--cache-dir", str(cache)])
    md = (docs / "uncertainty.md").read_text()
    for needle in ("| collab_fast | ens_entropy |", "AUROC", "UEO", "Spearman", "Seg-Grad-CAM", "--quick"):
        assert needle in md
    figs = sorted(p.name for p in (docs / "figures").iterdir())
    assert figs == ["uncertainty_study_explanations.png", "uncertainty_study_uncertainty.png"]
    assert not list(docs.rglob("*.tmp"))  # no half-written file left behind
    u = out["summary"]["usefulness"]
    assert set(u) == set(study.METHODS)
    for row in u.values():
        assert 0.0 <= row["auroc"][0] <= 1.0 and 0.0 <= row["ueo"][0] <= 1.0
    results_path = next(cache.rglob("results.json"))
    results = json.loads(results_path.read_text())
    assert results["exact_vs_fast"]["pixels"] == study.QUICK.exact_pixels
    # the report can be rewritten from the saved results alone
    (docs / "uncertainty.md").unlink()
    study.main(["--from-results", str(results_path), "--docs-dir", str(docs)])
    assert (docs / "uncertainty.md").read_text() == md
    # the second run loads the cached members instead of training
    again = study.main(["--quick", "--docs-dir", str(docs), "--cache-dir", str(cache)])
    assert again["info"]["train_s"] == 0.0


def test_missing_data_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        study.main(["--quick", "--data-dir", str(tmp_path / "nope"), "--docs-dir", str(tmp_path)])
