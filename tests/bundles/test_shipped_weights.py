"""
Every shipped hippocampus checkpoint (``bundles/<name>/models/model.pt``, listed in
``bundles/_shared/hippocampus_models.json``) loads into its network with ``weights_only=True`` and segments real
embedded cases it was never trained on (the shipped models exclude the whole embedded sample from training).

The Dice floor is loose (the measured validation mean minus 0.2): it catches a broken checkpoint, a network or
preprocessing mismatch, not noise. The same weights also go through the bundle exactly as MONAI Label serves it
(``contract.py``: the bundle's own inference.json, no overrides) on all four held-back embedded cases.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from eunets_monai.data import get_inferer, get_transforms, msd_datalist
from eunets_monai.evaluation.compare import case_dice
from eunets_monai.evaluation.shipping import BUNDLE_NETWORKS, embedded_case_ids
from eunets_monai.networks import get_network
from tests.bundles.contract import infer_like_monailabel, parse_like_monailabel
from tests.bundles.helpers import BUNDLES
from tests.fixtures import HIPPOCAMPUS

MODELS_JSON = BUNDLES / "_shared" / "hippocampus_models.json"
ENTRIES = json.loads(MODELS_JSON.read_text()) if MODELS_JSON.is_file() else {}
MODELS = {name: e for name, e in ENTRIES.items() if e.get("shipped", True)}  # withdrawn: measured, not shipped
HELD_OUT = ("hippocampus_025", "hippocampus_033")  # embedded held-back cases


def _network(entry: dict) -> torch.nn.Module:
    return get_network(
        entry["network"],
        spatial_dims=entry["spatial_dims"],
        in_channels=entry["in_channels"],
        out_channels=entry["out_channels"],
        channels=entry["channels"],
        mhex=True,
    )


def test_every_shipped_model_is_listed_and_every_listed_model_is_shipped():
    assert MODELS, f"{MODELS_JSON} lists no shipped model"
    shipped = {p.parent.parent.name for p in BUNDLES.glob("*_hippocampus/models/model.pt")}
    assert shipped == set(MODELS)
    assert set(ENTRIES) <= set(BUNDLE_NETWORKS)
    for name, entry in ENTRIES.items():
        assert entry["network"] == BUNDLE_NETWORKS[name]
        assert "CC-BY-SA 4.0" in entry["data_licence"]
        assert entry["validation"]["n_cases"] == entry["n_val"] > 0
        # the embedded sample was never trained on, so the held-out cases below are fair
        assert "embedded sample" in entry["split"]
        assert set(HELD_OUT) <= set(embedded_case_ids())
        if name in MODELS:
            assert (BUNDLES / name / "models" / "model.pt").stat().st_size < 20e6  # small enough for the repository
        else:
            assert entry["withdrawn_because"]


@pytest.mark.parametrize("bundle", sorted(MODELS))
def test_shipped_checkpoint_segments_held_out_cases(bundle):
    entry = MODELS[bundle]
    net = _network(entry)
    state = torch.load(BUNDLES / bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)  # strict: every key and shape must match
    inference = BUNDLES / bundle / "configs" / "inference.json"
    if inference.is_file():  # the bundle's own network definition must take the same weights
        parser = ConfigParser()
        parser.read_config(inference)
        parser["spatial_dims"], parser["channels"] = entry["spatial_dims"], entry["channels"]
        parser.get_parsed_content("network_def").load_state_dict(state)

    cases = [d for d in msd_datalist(HIPPOCAMPUS, "test") if any(c in d["image"] for c in HELD_OUT)]
    assert len(cases) == len(HELD_OUT)
    transform = get_transforms("hippocampus", "val")
    inferer = get_inferer("hippocampus", spatial_dims=entry["spatial_dims"], roi_size=entry["roi_size"])
    net.eval()
    dice = []
    with torch.no_grad():
        for case in cases:
            item = transform(case)
            logits = inferer(item["image"].unsqueeze(0), net)
            dice.append(case_dice(logits, item["label"].unsqueeze(0)))
    mean = float(np.mean(dice))
    floor = max(0.25, entry["validation"]["mean"] - 0.2)
    assert mean >= floor, f"{bundle}: held-out mean Dice {mean:.3f} < floor {floor:.3f} (per case {dice})"


def label_dice(pred: np.ndarray, label: np.ndarray, k: int) -> float:
    denom = (pred == k).sum() + (label == k).sum()
    return float(2.0 * ((pred == k) & (label == k)).sum() / denom) if denom else 1.0


@pytest.mark.parametrize("bundle", sorted(MODELS))
def test_shipped_bundle_serves_held_back_cases_unchanged(bundle):
    state = torch.load(BUNDLES / bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    parse_like_monailabel(BUNDLES / bundle).get_parsed_content("network_def").load_state_dict(state, strict=True)
    scores = []
    for label_path in sorted((HIPPOCAMPUS / "labelsTs").glob("*.nii.gz")):
        seg, _ = infer_like_monailabel(BUNDLES / bundle, HIPPOCAMPUS / "imagesTs" / label_path.name)
        label = np.rint(np.asarray(nib.load(label_path).dataobj)).astype(int)
        scores.append(np.mean([label_dice(seg, label, k) for k in (1, 2)]))
    floor = MODELS[bundle]["validation"]["mean"] - 0.2
    assert np.mean(scores) >= floor, (bundle, scores)
