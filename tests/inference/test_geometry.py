"""Outputs lie on the input's voxel grid for any axis order, flip or oblique affine (real hippocampus and CT)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from eunets_monai.inference.io import CaseInput, ImageVolume, read_volume, write_case
from eunets_monai.inference.runner import normalize_volume_cam
from tests.fixtures import CT_SAMPLE, HIPPOCAMPUS
from tests.inference.conftest import tiny_predictor

HIPPO = sorted((HIPPOCAMPUS / "imagesTs").glob("*.nii.gz"))[0]
CT = CT_SAMPLE / "imagesTr" / "example_ct.nii.gz"


def reoriented(img: nib.Nifti1Image, axcodes: str) -> nib.Nifti1Image:
    """The same scan stored in another axis order (same world position of every voxel)."""
    transform = ornt_transform(axcodes2ornt(nib.aff2axcodes(img.affine)), axcodes2ornt(tuple(axcodes)))
    data = apply_orientation(np.asanyarray(img.dataobj), transform)
    affine = img.affine @ inv_ornt_aff(transform, img.shape)
    out = nib.Nifti1Image(data, affine, img.header)
    return out


def back(array: np.ndarray, img: nib.Nifti1Image, axcodes: str) -> np.ndarray:
    """An output on the re-oriented grid, mapped back to the original grid."""
    transform = ornt_transform(axcodes2ornt(tuple(axcodes)), axcodes2ornt(nib.aff2axcodes(img.affine)))
    return apply_orientation(array, transform)


def volume_of(img: nib.Nifti1Image, name: str) -> ImageVolume:
    data = np.asarray(img.get_fdata(dtype=np.float32))[None]
    return ImageVolume(data, np.asarray(img.affine, dtype=np.float64), name, img.header.copy())


def test_reoriented_copies_give_the_same_mask_on_their_own_grid(tmp_path):
    predictor = tiny_predictor(outputs=("seg", "cam"))
    img = nib.load(HIPPO)
    reference = predictor(volume_of(img, "ref"))
    assert reference["seg"].shape == (1, *img.shape) and reference["cam"].shape == (2, *img.shape)
    # Sagittal/coronal stacks (third axis not S/I) used to fail in the writer: PSR, LSA, SAR, ASL; LPS is DICOM's.
    for codes in ("LPS", "PSR", "LSA", "SAR", "ASL", "RIP"):
        moved = reoriented(img, codes)
        out = predictor(volume_of(moved, codes))
        assert out["seg"].shape == (1, *moved.shape)
        np.testing.assert_array_equal(back(out["seg"][0], img, codes), reference["seg"][0], err_msg=codes)
        np.testing.assert_allclose(back(out["cam"][1], img, codes), reference["cam"][1], atol=1e-5, err_msg=codes)
        files = write_case(tmp_path, codes, {"seg": (out["seg"], np.uint8)}, volume_of(moved, codes))
        written = nib.load(files["seg"])
        np.testing.assert_allclose(written.affine, moved.affine, atol=1e-6)
        assert written.shape == moved.shape and written.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(written.dataobj), out["seg"][0])


def test_oblique_affine_keeps_the_grid():
    predictor = tiny_predictor()
    img = nib.load(HIPPO)
    reference = predictor(volume_of(img, "ref"))["seg"]
    angle = np.deg2rad(20.0)
    rotation = np.eye(4)
    rotation[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    tilted = nib.Nifti1Image(np.asanyarray(img.dataobj), rotation @ img.affine, img.header)
    out = predictor(volume_of(tilted, "oblique"))["seg"]
    # At the network's own spacing the resampling is the identity, so the same voxels get the same labels.
    assert out.shape == reference.shape
    assert (out == reference).mean() > 0.999


def test_ct_sample_lps_copy_matches_on_the_input_grid():
    predictor = tiny_predictor("spleen", roi=(48, 48, 48))
    full = nib.load(CT)
    # A 36x30x24-voxel block of the real CT (1.5x1.5x2 mm resampling makes the whole scan too slow for a unit test).
    img = full.slicer[40:76, 30:60, 40:64]
    reference = predictor(volume_of(img, "ct"))["seg"]
    assert reference.shape == (1, *img.shape)
    moved = reoriented(img, "LPS")
    out = predictor(volume_of(moved, "ct-lps"))["seg"]
    assert out.shape == (1, *moved.shape)
    assert (back(out[0], img, "LPS") == reference[0]).mean() > 0.999


def test_written_files_keep_header_codes_units_and_dtypes(tmp_path):
    img = nib.load(HIPPO)
    volume = read_volume(CaseInput("h", str(HIPPO)))
    seg = np.zeros((1, *img.shape), np.uint8)
    seg[0, 3:9, 4:7, 5] = 2
    cam = np.random.default_rng(0).random((2, *img.shape)).astype(np.float32)
    files = write_case(tmp_path, "h", {"seg": (seg, np.uint8), "cam": (cam, np.float32)}, volume)
    for key, expected in (("seg", seg[0]), ("cam", np.moveaxis(cam, 0, -1))):
        out = nib.load(files[key])
        assert out.header["qform_code"] == img.header["qform_code"]
        assert out.header["sform_code"] == img.header["sform_code"]
        assert out.header.get_xyzt_units() == img.header.get_xyzt_units()
        np.testing.assert_array_equal(out.get_fdata(dtype=np.float32), expected)
        np.testing.assert_allclose(out.affine, img.affine)
    assert nib.load(files["cam"]).get_data_dtype() == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h_cam.nii.gz", "h_seg.nii.gz"]  # no temporaries left


def test_single_slice_and_2d_inputs_keep_their_shape():
    predictor = tiny_predictor(outputs=("seg", "cam", "uncertainty"))
    img = nib.load(HIPPO)
    data = img.get_fdata(dtype=np.float32)
    one_slice = ImageVolume(data[None, :, :, 17:18], img.affine.copy(), "slice")
    out = predictor(one_slice)
    assert out["seg"].shape == (1, *img.shape[:2], 1) and out["cam"].shape == (2, *img.shape[:2], 1)
    assert out["uncertainty"].shape == (1, *img.shape[:2], 1)
    flat = ImageVolume(data[None, :, :, 17], img.affine.copy(), "flat")
    out = predictor(flat)
    assert out["seg"].shape == (1, *img.shape[:2]) and "single slice" in flat.warnings


def test_cam_is_scaled_once_per_volume():
    predictor = tiny_predictor(outputs=("seg", "cam"), roi=(24, 24, 24))
    img = nib.load(HIPPO)
    out = predictor.predict_network_grid(torch.from_numpy(img.get_fdata(dtype=np.float32))[None])
    cam = out["cam"]
    # The raw stitched maps, through the same inferer, then one scaling for the whole volume.
    raw = predictor.inferer(torch.from_numpy(img.get_fdata(dtype=np.float32))[None, None], predictor.model)["cam"]
    np.testing.assert_allclose(cam, normalize_volume_cam(raw[0]), atol=1e-6)
    for c in range(cam.shape[0]):
        assert float(cam[c].max()) == pytest.approx(1.0)
        # Per-window scaling gave every window its own maximum of 1; per volume, most windows stay below 1.
        corners = [cam[c, :24, :24, :24].max(), cam[c, -24:, :24, :24].max(), cam[c, :24, -24:, -24:].max()]
        assert min(float(v) for v in corners) < 0.999


def test_normalize_volume_cam_against_direct_formula():
    raw = torch.tensor([[[-1.0, 0.5], [2.0, 1.0]], [[-3.0, -1.0], [-2.0, -0.5]]])
    out = normalize_volume_cam(raw)
    relu = raw.clamp_min(0)
    expected0 = (relu[0] - relu[0].min()) / (relu[0].max() - relu[0].min())
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], torch.zeros_like(out[1]))  # no positive evidence: all zeros
