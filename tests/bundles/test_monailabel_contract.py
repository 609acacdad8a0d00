"""
Every bundle as MONAI Label serves it (see ``contract.py``): preprocessing -> inferer -> postprocessing on an
in-repo image gives a label map on the input's grid with the metadata's labels; the transforms spelled out in the
configs give the same data as the task presets; train.json lets MONAI Label supply the data (no data check until a
datalist is built from ``dataset_dir``) and starts afresh unless told to resume.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from eunets_monai.data import presets
from tests.bundles.contract import (
    SMALL_3D,
    check_contract,
    contract_cases,
    ct_crop,
    labels_of,
    parse_like_monailabel,
)
from tests.bundles.helpers import ALL_VARIANTS, BUNDLES, configs
from tests.fixtures import CT_SAMPLE, HIPPOCAMPUS

VARIANTS = {v.name: v for v in ALL_VARIANTS}
HIPPO_IMAGE = HIPPOCAMPUS / "imagesTs" / "hippocampus_025.nii.gz"
HIPPO_LABEL = HIPPOCAMPUS / "labelsTs" / "hippocampus_025.nii.gz"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return contract_cases(tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("bundle", sorted(VARIANTS))
def test_inference_json_serves_a_label_map_on_the_input_grid(bundle, images):
    v = VARIANTS[bundle]
    small = SMALL_3D if v.task == "spleen" else None
    for image in images[v.task]:
        check_contract(BUNDLES / bundle, image, overrides=small)


@pytest.mark.parametrize("bundle", sorted(VARIANTS))
def test_metadata_describes_the_bundle_itself(bundle):
    v = VARIANTS[bundle]
    meta = json.loads((configs(bundle) / "metadata.json").read_text())
    preset = presets.get_task(v.task)
    assert labels_of(BUNDLES / bundle) == {name: int(k) for k, name in preset.channel_def.items()}
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == preset.out_channels == len(pred["channel_def"])
    # MONAI Label shows len(spatial_shape) as the model's dimension: volumes, also for a 2D network.
    assert len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 3
    net = parse_like_monailabel(BUNDLES / bundle).get_parsed_content("network_def")
    assert net.spatial_dims == v.spatial_dims and net.out_channels == preset.out_channels


def test_a_label_map_that_breaks_the_contract_is_reported(tmp_path, images):
    # The contract check itself can fail: a bundle whose postprocessing keeps the probabilities.
    bundle = tmp_path / "eunet_hippocampus"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text((configs("eunet_hippocampus") / "metadata.json").read_text())
    cfg = json.loads((configs("eunet_hippocampus") / "inference.json").read_text())
    cfg["postprocessing"]["transforms"] = cfg["postprocessing"]["transforms"][:1]  # softmax only, no inversion
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(AssertionError, match="eunet_hippocampus"):
        check_contract(bundle, images["hippocampus"][1])


def _compare(a, b):
    assert type(a) is type(b)
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _compare(x, y)
        return
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
        if hasattr(a[key], "affine"):
            np.testing.assert_allclose(a[key].affine, b[key].affine)


@pytest.mark.parametrize("bundle", ["eunet_hippocampus", "eunet_spleen"])
def test_config_transforms_equal_the_task_presets(bundle, tmp_path):
    v = VARIANTS[bundle]
    parser = ConfigParser()
    parser.read_config(str(configs(bundle) / "train.json"))
    case = {"image": str(HIPPO_IMAGE), "label": str(HIPPO_LABEL)}
    if v.task == "spleen":
        ct = CT_SAMPLE / "imagesTr" / "example_ct.nii.gz"
        case = {
            "image": str(ct_crop(ct, tmp_path / "image.nii.gz")),
            "label": str(ct_crop(CT_SAMPLE / "labelsTr" / ct.name, tmp_path / "label.nii.gz")),
        }
    stages = {"train": "train#preprocessing", "val": "validate#preprocessing"}
    for stage, key in stages.items():
        from_config = parser.get_parsed_content(key)
        from_preset = presets.get_transforms(v.task, stage, spatial_dims=v.spatial_dims, patch_size=v.patch_size)
        assert [type(t) for t in from_config.transforms] == [type(t) for t in from_preset.transforms], stage
        set_determinism(seed=0)
        from_config.set_random_state(seed=3)
        from_preset.set_random_state(seed=3)
        _compare(from_config(dict(case)), from_preset(dict(case)))
    infer = parse_like_monailabel(BUNDLES / bundle).get_parsed_content("preprocessing")
    _compare(infer({"image": case["image"]}), presets.get_transforms(v.task, "infer")({"image": case["image"]}))
    set_determinism(seed=None)


def test_train_json_takes_the_data_monai_label_gives_and_does_not_resume(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(configs("eunet_hippocampus") / "train.json"))
    cases = [
        {"image": str(p), "label": str(HIPPOCAMPUS / "labelsTr" / p.name)}
        for p in sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:2]
    ]
    # What BundleTrainTask overrides; dataset_dir stays the (missing) default and is never read.
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "train#dataset#data": cases[:1],
            "validate#dataset#data": cases[1:],
            "cache_rate": 0.0,
            "num_workers": 0,
        }
    )
    assert not (tmp_path / "models").exists()
    trainer = parser.get_parsed_content("train#trainer")
    assert len(trainer.data_loader.dataset) == 1
    assert parser.get_parsed_content("resume") is False
    assert parser.get_parsed_content("train#checkpoint_loader") is None
