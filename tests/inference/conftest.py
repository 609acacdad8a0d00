"""Shared pieces of the inference tests: a tiny bundle (random, seeded weights) and tiny predictors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from eunets_monai.data.presets import get_inferer, get_transforms
from eunets_monai.inference.runner import VolumePredictor
from eunets_monai.networks.nets.unet import UNet

REPO = Path(__file__).resolve().parents[2]


def tiny_unet(out_channels: int = 3, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(3, 1, out_channels, channels=(8, 16, 32), mhex=True)


def tiny_predictor(task: str = "hippocampus", outputs=("seg",), roi=(32, 32, 32), **kwargs) -> VolumePredictor:
    k = 2 if task == "spleen" else 3
    inferer = get_inferer(task, roi_size=roi, sw_batch_size=4, overlap=0.25, mode="gaussian")
    return VolumePredictor(tiny_unet(k), get_transforms(task, "infer"), inferer, outputs, "cpu", **kwargs)


def make_bundle(root: Path, task: str = "hippocampus") -> Path:
    """A copy of bundles/eunet_spleen with tiny widths, the given task and a saved random model.pt."""
    bundle = root / "tiny_bundle"
    shutil.copytree(REPO / "bundles" / "eunet_spleen", bundle)
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    k = 2 if task == "spleen" else 3
    config.update({"task": task, "out_channels": k, "channels": [8, 16, 32], "patch_size": [32, 32, 32]})
    config_path.write_text(json.dumps(config, indent=1))
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(tiny_unet(k).state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))
