"""Slicer outputs: a .seg.nrrd whose header names, colours and label values match the bundle's labels, on the input
image's grid; scalar volumes for CAM / uncertainty; bad input refused with the file named."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from eunets_monai.inference.slicer import (
    DEFAULT_COLORS,
    labels_from_channel_def,
    read_segments,
    write_seg_nrrd,
    write_volume_nrrd,
)
from tests.fixtures import HIPPOCAMPUS

REPO_BUNDLE_META = HIPPOCAMPUS.parents[3] / "bundles" / "eunet_hippocampus" / "configs" / "metadata.json"
CASE = "hippocampus_025.nii.gz"


def bundle_labels() -> dict[str, int]:
    meta = json.loads(REPO_BUNDLE_META.read_text())
    return labels_from_channel_def(meta["network_data_format"]["outputs"]["pred"]["channel_def"])


def test_seg_nrrd_header_and_voxels_match_the_bundle_labels_and_the_input_grid(tmp_path):
    label_img = nib.load(HIPPOCAMPUS / "labelsTs" / CASE)
    seg = np.rint(np.asarray(label_img.dataobj)).astype(np.uint8)
    labels = bundle_labels()
    assert labels == {"background": 0, "anterior": 1, "posterior": 2}
    path = write_seg_nrrd(seg, label_img.affine, labels, tmp_path / "case.seg.nrrd")

    segments = read_segments(path)
    assert [s["Name"] for s in segments] == ["anterior", "posterior"]
    assert [int(s["LabelValue"]) for s in segments] == [1, 2]
    assert [tuple(float(c) for c in s["Color"].split()) for s in segments] == [
        pytest.approx(DEFAULT_COLORS[0], abs=1e-5),
        pytest.approx(DEFAULT_COLORS[1], abs=1e-5),
    ]
    for s in segments:
        x0, x1, y0, y1, z0, z1 = (int(e) for e in s["Extent"].split())
        where = np.nonzero(seg == int(s["LabelValue"]))
        assert (x0, x1, y0, y1, z0, z1) == tuple(int(f(w)) for w in where for f in (np.min, np.max))
    header = path.read_bytes()[:4000].split(b"\n\n", 1)[0].decode()
    assert "Segment0_Name:=anterior" in header and "Segment1_LabelValue:=2" in header

    # Read back with MONAI (ITK reader, RAS affine): same voxels on the same grid.
    back = LoadImage(reader="ITKReader", image_only=True)(str(path))
    np.testing.assert_array_equal(np.asarray(back), seg)
    np.testing.assert_allclose(np.asarray(back.affine), label_img.affine, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_scalar_volume_round_trip_on_an_oblique_grid(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.0, 0.0, -1.3, 20.0], [2.1, 0.0, 0.0, -5.0], [0, 0, 0, 1.0]])
    path = write_volume_nrrd(volume, affine, tmp_path / "case_uncertainty.nrrd")
    back = LoadImage(reader="ITKReader", image_only=True)(str(path))
    np.testing.assert_allclose(np.asarray(back), volume)
    np.testing.assert_allclose(np.asarray(back.affine), affine, atol=1e-5)


def test_bad_input_is_refused_naming_the_file(tmp_path):
    labels = {"background": 0, "spleen": 1}
    affine = np.eye(4)
    with pytest.raises(ValueError, match=r"bad\.seg\.nrrd: label values \[3\]"):
        write_seg_nrrd(np.full((2, 2, 2), 3, np.uint8), affine, labels, tmp_path / "bad.seg.nrrd")
    with pytest.raises(ValueError, match="integer labels"):
        write_seg_nrrd(np.zeros((2, 2, 2), np.float32), affine, labels, tmp_path / "bad.seg.nrrd")
    with pytest.raises(ValueError, match=r"must be 3D"):
        write_volume_nrrd(np.zeros((2, 2)), affine, tmp_path / "bad.nrrd")
    assert not list(tmp_path.iterdir())
