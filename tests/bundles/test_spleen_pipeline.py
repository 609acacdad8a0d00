"""
The spleen CT pipeline through the bundle on one real CT (the in-repo fixture tests/fixtures/ct_spleen_sample;
its mask is automatic, so no accuracy is measured): a few training iterations with HU windowing, 1.5x1.5x2 mm
resampling and patch sampling, then inference.json writing a mask on the CT's own grid.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from tests.bundles.helpers import cli, configs, overrides
from tests.fixtures import CT_SAMPLE as CT

BUNDLE = "eunet_spleen"
SMALL = {"channels": "[4, 8]", "num_workers": 0}  # the resampled CT has 8M voxels: keep the net tiny


def test_spleen_ct_train_and_infer(tmp_path):
    train_args = {
        "dataset_dir": CT,
        **SMALL,
        "patch_size": "[32, 32, 32]",
        "num_samples": 2,
        "batch_size": 1,
        "max_epochs": 1,
        "val_interval": 2,  # no validation pass: sliding windows over the whole resampled CT are slow on 2 cores
        "ckpt_dir": tmp_path / "models",
        "output_dir": tmp_path / "eval",
    }
    # One case: train and validate on it (exercises the pipeline only).
    train = cli(
        [
            "run",
            "--config_file",
            configs(BUNDLE) / "train.json",
            *overrides(**train_args),
            "--split",
            "$[@datalist, @datalist]",
        ],
        cwd=tmp_path,
    )
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-3000:]
    assert "Iter: 1/1" in log
    image_path = CT / "imagesTr" / "example_ct.nii.gz"
    infer_args = {
        "dataset_dir": CT,
        **SMALL,
        "patch_size": "[64, 64, 64]",
        "overlap": 0.0,
        "input_dir": image_path,
        "ckpt_path": tmp_path / "models" / "checkpoint_epoch=1.pt",  # the last checkpoint (model under "model")
        "output_dir": tmp_path / "pred",
        "uncertainty": "None",  # one MHEX+ head only (2 levels); CAMs still written
    }
    infer = cli(["run", "--config_file", configs(BUNDLE) / "inference.json", *overrides(**infer_args)], cwd=tmp_path)
    assert infer.returncode == 0, infer.stdout[-3000:] + infer.stderr[-3000:]
    image, seg = nib.load(image_path), nib.load(tmp_path / "pred" / "example_ct_seg.nii.gz")
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    assert nib.load(tmp_path / "pred" / "example_ct_cam.nii.gz").shape == (*image.shape, 2)
