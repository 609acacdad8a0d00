"""scripts/to_slicer.py: batch-inference NIfTIs -> .seg.nrrd + scalar .nrrd volumes; a bad case is one line."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np

from eunets_monai.inference.slicer import read_segments
from tests.fixtures import HIPPOCAMPUS

sys.path.insert(0, str(HIPPOCAMPUS.parents[3] / "scripts"))
import to_slicer  # noqa: E402

BUNDLE = HIPPOCAMPUS.parents[3] / "bundles" / "eunet_hippocampus"


def test_converts_every_case_and_reports_a_bad_one(tmp_path, capsys):
    label = nib.load(HIPPOCAMPUS / "labelsTs" / "hippocampus_025.nii.gz")
    seg = np.rint(np.asarray(label.dataobj)).astype(np.uint8)
    nib.save(nib.Nifti1Image(seg, label.affine), tmp_path / "good_seg.nii.gz")
    cam = np.random.default_rng(0).random((*seg.shape, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(cam, label.affine), tmp_path / "good_cam.nii.gz")
    nib.save(nib.Nifti1Image(cam[..., 0], label.affine), tmp_path / "good_uncertainty.nii.gz")
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 7, np.uint8), np.eye(4)), tmp_path / "bad_seg.nii.gz")

    assert to_slicer.main([str(tmp_path), "--bundle", str(BUNDLE)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bad:") and "[7]" in err[0]
    names = {p.name for p in tmp_path.glob("*.nrrd")}
    assert names == {
        "good.seg.nrrd",
        "good_cam_background.nrrd",
        "good_cam_anterior.nrrd",
        "good_cam_posterior.nrrd",
        "good_uncertainty.nrrd",
    }
    assert [s["Name"] for s in read_segments(tmp_path / "good.seg.nrrd")] == ["anterior", "posterior"]
