from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import decollate_batch
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.networks import one_hot
from monai.transforms import Compose, CropForegroundd

from eunets_monai.data.checks import DataError, error_summary
from eunets_monai.data.datalists import msd_datalist
from eunets_monai.data.presets import TASKS, get_inferer, get_postprocessing, get_task, get_transforms
from eunets_monai.networks.nets.unet import EUNet, UNet
from tests.fixtures import CT_SAMPLE, HIPPOCAMPUS, SPLEEN_LABELS

HIPPO = HIPPOCAMPUS
CT = {
    "image": str(CT_SAMPLE / "imagesTr" / "example_ct.nii.gz"),
    "label": str(CT_SAMPLE / "labelsTr" / "example_ct.nii.gz"),
}
FLOAT_LABEL_CASE = "hippocampus_243"  # the one Task04 label stored as float32


@pytest.fixture(scope="module")
def hippo():
    return msd_datalist(HIPPO)


def case(dl, name):
    return next(d for d in dl if Path(d["image"]).name.startswith(name))


def seeded(tf: Compose, seed: int = 0) -> Compose:
    return tf.set_random_state(seed=seed)


def zooms(affine) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


# --- task table -----------------------------------------------------------------------------------------------


def test_task_presets():
    assert set(TASKS) == {"spleen", "heart", "hippocampus"}
    expected = {"spleen": 2, "heart": 2, "hippocampus": 3}
    for name, p in TASKS.items():
        assert p.out_channels == expected[name] == len(p.channel_def)
        assert list(p.channel_def) == [str(i) for i in range(p.out_channels)] and p.channel_def["0"] == "background"
        assert p.spatial_dims == 3 and p.roi_size == p.patch_size and len(p.roi_size_2d) == 2
        assert get_task(name) is p
    assert TASKS["spleen"].spacing == (1.5, 1.5, 2.0) and TASKS["spleen"].hu_window == (-57.0, 164.0)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("liver")
    with pytest.raises(ValueError, match="stage"):
        get_transforms("spleen", "test")
    with pytest.raises(ValueError, match="patch_size"):
        get_transforms("hippocampus", "train", spatial_dims=2, patch_size=(8, 8, 8))


# --- hippocampus (real MSD Task04) ----------------------------------------------------------------------------


def test_hippocampus_train_3d(hippo):
    d = case(hippo, "hippocampus_004")
    patches = seeded(get_transforms("hippocampus", "train", num_samples=4))(d)
    assert len(patches) == 4
    raw = nib.load(d["label"]).get_fdata()
    for p in patches:
        assert p["image"].shape == (1, 40, 56, 40) and p["image"].dtype == torch.float32
        assert p["label"].shape == (1, 40, 56, 40) and p["label"].dtype == torch.int64
        assert set(p["label"].unique().tolist()) <= {0, 1, 2}
    # pos/neg 1:1 on a volume smaller than most of a patch: every patch holds most of the hippocampus
    assert max(int((p["label"] > 0).sum()) for p in patches) > 0.5 * (raw > 0).sum()


def test_hippocampus_train_2d(hippo):
    d = case(hippo, "hippocampus_004")
    tf = seeded(get_transforms("hippocampus", "train", spatial_dims=2, num_samples=16, augment=False))
    patches = tf(d)
    assert len(patches) == 16
    for p in patches:
        assert p["image"].shape == (1, 40, 56) and p["label"].shape == (1, 40, 56)
        assert p["label"].dtype == torch.int64 and set(p["label"].unique().tolist()) <= {0, 1, 2}
    with_fg = sum(int(p["label"].max() > 0) for p in patches)
    # half the centres are foreground voxels; background centres may also see hippocampus in their slice
    assert 8 <= with_fg <= 16
    # a sampled slice is a real axial slice of the normalised volume
    vol = get_transforms("hippocampus", "val")(d)["image"][0]
    img = patches[0]["image"][0]
    assert vol.shape[:2] == (36, 52)  # centred padding to 40x56 adds 2 voxels on each side
    assert any(torch.allclose(vol[:, :, z], img[2:38, 2:54], atol=1e-5) for z in range(vol.shape[2]))


def test_hippocampus_val_geometry_and_normalisation(hippo):
    d = case(hippo, "hippocampus_004")
    out = get_transforms("hippocampus", "val")(d)
    ref = nib.load(d["image"])
    assert out["image"].shape == (1, *ref.shape) and out["label"].shape == (1, *ref.shape)
    np.testing.assert_allclose(np.asarray(out["image"].affine), ref.affine, atol=1e-4)
    img, raw = out["image"][0], torch.as_tensor(ref.get_fdata(), dtype=torch.float32)
    nz = raw != 0
    assert abs(float(img[nz].mean())) < 1e-3 and abs(float(img[nz].std()) - 1) < 1e-2
    assert torch.all(img[~nz] == 0)
    expected = (raw[nz] - raw[nz].mean()) / raw[nz].std(unbiased=False)
    torch.testing.assert_close(img[nz], expected, atol=1e-3, rtol=1e-3)


def test_float_label_file_is_cast(hippo):
    d = case(hippo, FLOAT_LABEL_CASE)
    lbl = nib.load(d["label"])
    assert lbl.get_data_dtype() == np.float32
    out = get_transforms("hippocampus", "val")(d)
    assert out["label"].dtype == torch.int64
    raw = lbl.get_fdata()
    np.testing.assert_array_equal(out["label"][0].numpy(), np.rint(raw).astype(np.int64))
    assert set(np.unique(out["label"].numpy())) == {0, 1, 2}


def test_infer_stage_and_postprocessing_hippocampus(hippo):
    d = case(hippo, "hippocampus_004")
    pre = get_transforms("hippocampus", "infer")
    out = pre({"image": d["image"]})
    assert set(out) == {"image"} and out["image"].meta["filename_or_obj"] == d["image"]
    lab = get_transforms("hippocampus", "val")(d)["label"]
    out["pred"] = one_hot(lab[None], 3)[0] * 5.0
    res = get_postprocessing("hippocampus", "infer", preprocessing=pre)(out)
    assert res["pred"].dtype == torch.uint8
    np.testing.assert_array_equal(res["pred"][0].numpy(), nib.load(d["label"]).get_fdata().astype(np.uint8))
    with pytest.raises(ValueError, match="preprocessing"):
        get_postprocessing("hippocampus", "infer")


def test_train_and_val_postprocessing():
    # A batch as SupervisedTrainer sees it (EU-Net training list), decollated as MONAI engines do.
    label = torch.randint(0, 3, (2, 1, 6, 5, 4))
    logits = one_hot(label, 3) * 4.0
    batch = {"pred": [logits, torch.randn(2, 3, 6, 5, 4)], "label": label}
    for stage in ("train", "val"):
        post = get_postprocessing("hippocampus", stage)
        for item in decollate_batch(batch if stage == "train" else {"pred": logits, "label": label}):
            out = post(item)
            assert out["pred"].shape == out["label"].shape == (3, 6, 5, 4)
            torch.testing.assert_close(out["pred"], out["label"].float())


# --- spleen CT (one real CT, automatic mask: geometry and intensities only) -----------------------------------


@pytest.fixture(scope="module")
def spleen_val():
    return get_transforms("spleen", "val")(CT)


def test_spleen_train_patches():
    patches = seeded(get_transforms("spleen", "train", num_samples=4))(CT)
    assert len(patches) == 4
    for p in patches:
        assert p["image"].shape == (1, 96, 96, 96) and p["label"].shape == (1, 96, 96, 96)
        assert float(p["image"].min()) >= -0.15 and float(p["image"].max()) <= 1.15  # [0, 1] +- intensity jitter
        # 1.5 x 1.5 x 2 mm (quarter turns of the augmentation may swap the two in-plane axes)
        np.testing.assert_allclose(zooms(p["image"].affine), (1.5, 1.5, 2.0), atol=1e-5)
        assert set(p["label"].unique().tolist()) <= {0, 1}
    assert any(int(p["label"].sum()) > 0 for p in patches)


def test_spleen_pos_neg_sampling():
    # At the sample's native 3 mm (no resampling, fast); patch centres are moved inwards near the border.
    native = dataclasses.replace(TASKS["spleen"], spacing=(3.0, 3.0, 3.0), patch_size=(48, 48, 32))
    centre = (0, 24, 24, 16)
    pos = seeded(get_transforms(dataclasses.replace(native, neg=0.0), "train", num_samples=8, augment=False))(CT)
    assert all(int(p["label"].sum()) > 0 for p in pos)
    assert all(p["image"].shape == (1, 48, 48, 32) for p in pos)
    assert sum(int(p["label"][centre]) for p in pos) >= 6
    neg = seeded(get_transforms(dataclasses.replace(native, pos=0.0), "train", num_samples=8, augment=False))(CT)
    assert sum(int(p["label"][centre]) for p in neg) <= 2
    assert all(float(p["image"][centre]) > 0 for p in neg)  # negatives are drawn inside the body
    slices = seeded(get_transforms(native, "train", spatial_dims=2, num_samples=3))(CT)
    assert [tuple(p["image"].shape) for p in slices] == [(1, 256, 256)] * 3
    assert [tuple(p["label"].shape) for p in slices] == [(1, 256, 256)] * 3


def test_spleen_hu_window_and_foreground_crop():
    native = dataclasses.replace(TASKS["spleen"], spacing=(3.0, 3.0, 3.0))  # the sample's own spacing: no resampling
    out = get_transforms(native, "val")(CT)
    hu = nib.load(CT["image"]).get_fdata()
    expected = np.clip((hu + 57.0) / (164.0 + 57.0), 0.0, 1.0)
    np.testing.assert_allclose(out["image"][0].numpy(), expected, atol=1e-5)
    # Foreground crop of the training pipeline: the box is the body (window > 0), much smaller than the scan.
    train = get_transforms(native, "train", augment=False)
    k = next(i for i, t in enumerate(train.transforms) if isinstance(t, CropForegroundd))
    cropped = Compose(train.transforms[: k + 1])(CT)["image"][0].numpy()
    fg = np.argwhere(expected > 0)
    assert cropped.shape == tuple(fg.max(0) - fg.min(0) + 1) != hu.shape


def test_spleen_resampling_keeps_labels_and_world_geometry(spleen_val):
    img, lab = spleen_val["image"], spleen_val["label"]
    assert nib.aff2axcodes(np.asarray(img.affine)) == ("R", "A", "S")
    np.testing.assert_allclose(zooms(img.affine), (1.5, 1.5, 2.0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(lab.affine), np.asarray(img.affine))
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    ref = nib.load(CT["label"])
    _check_world_mask(ref, lab[0].numpy(), np.asarray(lab.affine))


def _check_world_mask(ref: nib.Nifti1Image, resampled: np.ndarray, affine: np.ndarray, tol: float = 0.03) -> None:
    # Same object in world space: volume within tol, centroid within 2 mm.
    raw = np.rint(ref.get_fdata())
    assert set(np.unique(resampled)) == {0, 1}
    vol_ref = raw.sum() * np.prod(ref.header.get_zooms()[:3])
    vol_new = resampled.sum() * np.prod(zooms(affine))
    assert abs(vol_new / vol_ref - 1) < tol
    c_ref = ref.affine @ np.r_[np.argwhere(raw > 0).mean(0), 1]
    c_new = affine @ np.r_[np.argwhere(resampled > 0).mean(0), 1]
    assert np.linalg.norm(c_ref - c_new) < 2.0


def test_task09_real_label_geometry():
    # Real MSD Task09 label (512x512x31, ~0.8x0.8x5 mm); the images are not available, so the label file
    # stands in for the image too (same geometry).
    path = str(SPLEEN_LABELS / "spleen_8.nii.gz")
    ref = nib.load(path)
    out = get_transforms("spleen", "val")({"image": path, "label": path})
    lab = out["label"]
    assert lab.dtype == torch.int64
    np.testing.assert_allclose(zooms(lab.affine), (1.5, 1.5, 2.0), atol=1e-5)
    assert nib.aff2axcodes(np.asarray(lab.affine)) == ("R", "A", "S")
    # MONAI keeps the extent between the first and last voxel centres
    expected = np.round((np.array(ref.shape) - 1) * np.array(ref.header.get_zooms()[:3]) / (1.5, 1.5, 2.0)) + 1
    assert np.all(np.abs(np.array(lab.shape[1:]) - expected) <= 1)
    _check_world_mask(ref, lab[0].numpy(), np.asarray(lab.affine))


def test_spleen_infer_inverts_to_input_geometry(spleen_val):
    pre = get_transforms("spleen", "infer")
    data = pre({"image": CT["image"]})
    torch.testing.assert_close(data["image"], spleen_val["image"])
    lab = spleen_val["label"]
    data["pred"] = one_hot(lab[None], 2)[0] * 10.0  # a perfect "prediction" on the 1.5x1.5x2 grid
    out = get_postprocessing("spleen", "infer", preprocessing=pre)(data)
    ref = nib.load(CT["label"])
    assert out["pred"].shape == (1, *ref.shape)
    np.testing.assert_allclose(np.asarray(out["pred"].affine), ref.affine, atol=1e-4)
    g, p = ref.get_fdata() > 0.5, out["pred"][0].numpy() > 0
    assert 2 * (g & p).sum() / (g.sum() + p.sum()) > 0.97


# --- heart MRI: no MSD heart data here, so a synthetic NIfTI in tmp -------------------------------------------


def test_heart_preset_synthetic(tmp_path):
    rng = np.random.default_rng(0)
    shape = (48, 40, 12)
    img = np.zeros(shape, np.float32)
    img[4:44, 4:36, :] = rng.normal(300.0, 40.0, size=(40, 32, 12))  # MR intensities with a zero border
    lab = np.zeros(shape, np.uint8)
    lab[20:30, 15:25, 2:10] = 1
    # LPS-like axes (x flipped, y flipped) at 1.25 x 1.25 x 2.5 mm: Orientationd must bring it to RAS
    affine = np.diag([-1.25, -1.25, 2.5, 1.0])
    affine[:3, 3] = (30.0, 25.0, -10.0)
    paths = {k: str(tmp_path / f"{k}.nii.gz") for k in ("image", "label")}
    nib.save(nib.Nifti1Image(img, affine), paths["image"])
    nib.save(nib.Nifti1Image(lab, affine), paths["label"])
    out = get_transforms("heart", "val")(paths)
    im, lb = out["image"], out["label"]
    np.testing.assert_allclose(zooms(im.affine), (1.25, 1.25, 1.37), atol=1e-5)
    assert nib.aff2axcodes(np.asarray(im.affine)) == ("R", "A", "S")
    nz = im[0] != 0
    assert abs(float(im[0][nz].mean())) < 0.05 and abs(float(im[0][nz].std()) - 1) < 0.05
    _check_world_mask(nib.load(paths["label"]), lb[0].numpy(), np.asarray(lb.affine), tol=0.05)
    patches = seeded(get_transforms("heart", "train", patch_size=(32, 32, 16), num_samples=2))(paths)
    assert [tuple(p["image"].shape) for p in patches] == [(1, 32, 32, 16)] * 2
    assert all(p["label"].dtype == torch.int64 for p in patches)
    slices = seeded(get_transforms("heart", "train", spatial_dims=2, num_samples=2))(paths)
    assert [tuple(p["image"].shape) for p in slices] == [(1, 320, 320)] * 2


# --- bad inputs -----------------------------------------------------------------------------------------------


def _raises_data_error(tf, data) -> str:
    with pytest.raises(Exception) as e:
        tf(data)
    msg = error_summary(e.value)
    assert "\n" not in msg
    chain, cur = [], e.value
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__
    assert any(isinstance(c, DataError) for c in chain), chain
    return msg


def test_truncated_file_names_the_file(hippo, tmp_path):
    d = case(hippo, "hippocampus_004")
    bad = tmp_path / "truncated.nii.gz"
    data = Path(d["image"]).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    msg = _raises_data_error(get_transforms("hippocampus", "val"), {"image": str(bad), "label": d["label"]})
    assert str(bad) in msg and "cannot read" in msg and d["label"] not in msg  # names the bad file only
    garbage = tmp_path / "garbage.nii.gz"
    with gzip.open(garbage, "wb") as f:
        f.write(b"not a nifti header" * 10)
    msg = _raises_data_error(get_transforms("hippocampus", "infer"), {"image": str(garbage)})
    assert str(garbage) in msg


def test_shape_mismatch_names_both_files(hippo):
    a, b = case(hippo, "hippocampus_004"), case(hippo, "hippocampus_006")
    assert nib.load(a["image"]).shape != nib.load(b["label"]).shape
    msg = _raises_data_error(get_transforms("hippocampus", "val"), {"image": a["image"], "label": b["label"]})
    assert a["image"] in msg and b["label"] in msg and "shapes differ" in msg


def test_nan_image(hippo, tmp_path):
    d = case(hippo, "hippocampus_004")
    ref = nib.load(d["image"])
    arr = ref.get_fdata().astype(np.float32)
    arr[3, 4, 5] = np.nan
    bad = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, ref.affine), bad)
    msg = _raises_data_error(get_transforms("hippocampus", "train"), {"image": str(bad), "label": d["label"]})
    assert str(bad) in msg and "1 NaN" in msg


def test_bad_labels(hippo, tmp_path):
    d = case(hippo, "hippocampus_004")
    # a 3-class label under the 2-class spleen preset
    msg = _raises_data_error(get_transforms("spleen", "val"), d)
    assert d["label"] in msg and "0..2" in msg
    ref = nib.load(d["label"])
    half = ref.get_fdata().astype(np.float32) * 0.5
    bad = tmp_path / "half.nii.gz"
    nib.save(nib.Nifti1Image(half, ref.affine), bad)
    msg = _raises_data_error(get_transforms("hippocampus", "val"), {"image": d["image"], "label": str(bad)})
    assert str(bad) in msg and "not class indices" in msg


def test_wrong_dimensions(tmp_path):
    bad = tmp_path / "slice2d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 9), np.float32), np.eye(4)), bad)
    msg = _raises_data_error(get_transforms("hippocampus", "infer"), {"image": str(bad)})
    assert str(bad) in msg and "3D" in msg


def test_one_bad_case_does_not_stop_others(hippo, tmp_path):
    good = case(hippo, "hippocampus_004")
    bad = tmp_path / "empty.nii.gz"
    bad.write_bytes(b"")
    tf = get_transforms("hippocampus", "infer")
    results, errors = [], []
    for item in ({"image": str(bad)}, {"image": good["image"]}):
        try:
            results.append(tf(item))
        except Exception as e:
            errors.append(error_summary(e))
    assert len(results) == 1 and len(errors) == 1 and str(bad) in errors[0]
    shutil.rmtree(tmp_path)


# --- inferers -------------------------------------------------------------------------------------------------


def test_inferers_run_2d_and_3d_networks(hippo):
    vol = get_transforms("hippocampus", "val")(case(hippo, "hippocampus_004"))["image"][None]
    assert isinstance(get_inferer("spleen"), SlidingWindowInferer)
    inf2 = get_inferer("hippocampus", spatial_dims=2, sw_batch_size=64)
    assert isinstance(inf2, SliceInferer) and inf2.spatial_dim == 2 and tuple(inf2.roi_size) == (40, 56)
    torch.manual_seed(0)
    net2 = UNet(2, 1, 3, channels=(4, 8)).eval()
    net3 = EUNet(3, 1, 3, channels=(4, 8)).eval()
    with torch.no_grad():
        out2 = inf2(vol.as_tensor(), net2)
        out3 = get_inferer("hippocampus", sw_batch_size=1)(vol.as_tensor(), net3)
        # with a whole-slice window: exactly the 2D net run on each axial slice
        whole_slice = get_inferer("hippocampus", spatial_dims=2, roi_size=vol.shape[2:4], sw_batch_size=64)
        whole = whole_slice(vol.as_tensor(), net2)
        zs = (0, 11, vol.shape[4] - 1)
        ref = torch.stack([net2(vol.as_tensor()[..., z]) for z in zs], dim=-1)
    assert out2.shape == out3.shape == whole.shape == (1, 3, *vol.shape[2:])
    torch.testing.assert_close(whole[..., zs], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="2 values"):
        get_inferer("spleen", spatial_dims=2, roi_size=(8, 8, 8))
