"""
Every shipped checkpoint (``bundles/*_hippocampus/models/model.pt``) loads into its bundle's network with
``weights_only=True`` and, through the bundle's MONAI Label pipeline (``contract.py``), segments the embedded
held-back hippocampus cases (``imagesTs``/``labelsTs``) with a sane Dice: a loose floor well below the measured
value, to catch a broken checkpoint or pipeline, not noise. The study must keep these 4 cases out of training.
Bundles without shipped weights are not parametrized (nothing to check until the study ships them).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundles.contract import infer_like_monailabel, parse_like_monailabel
from tests.bundles.helpers import BUNDLES
from tests.fixtures import HIPPOCAMPUS

SHIPPED = sorted(p.parents[1].name for p in BUNDLES.glob("*_hippocampus/models/model.pt"))
DICE_FLOOR = 0.5


def dice(pred: np.ndarray, label: np.ndarray, k: int) -> float:
    denom = (pred == k).sum() + (label == k).sum()
    return float(2.0 * ((pred == k) & (label == k)).sum() / denom) if denom else 1.0


@pytest.mark.parametrize("bundle", SHIPPED)
def test_shipped_checkpoint_loads_and_segments_held_back_cases(bundle):
    state = torch.load(BUNDLES / bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    parse_like_monailabel(BUNDLES / bundle).get_parsed_content("network_def").load_state_dict(state, strict=True)
    scores = []
    for label_path in sorted((HIPPOCAMPUS / "labelsTs").glob("*.nii.gz")):
        seg, _ = infer_like_monailabel(BUNDLES / bundle, HIPPOCAMPUS / "imagesTs" / label_path.name)
        label = np.rint(np.asarray(nib.load(label_path).dataobj)).astype(int)
        scores.append(np.mean([dice(seg, label, k) for k in (1, 2)]))
    assert np.mean(scores) >= DICE_FLOOR, (bundle, scores)
