"""Batch inference: outputs on the input's grid, one-line errors per bad case, atomic writes, batch-level errors."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from eunets_monai.data.presets import get_inferer, get_transforms
from eunets_monai.inference import batch as batch_module
from eunets_monai.inference.batch import (
    BatchInference,
    BatchInferenceError,
    case_name,
    collect_images,
    load_checkpoint,
)
from eunets_monai.networks.nets.unet import UNet

SAMPLE = Path(__file__).resolve().parents[2] / "eunets_monai" / "data" / "sample" / "hippocampus"
HELD_BACK = sorted((SAMPLE / "imagesTs").glob("*.nii.gz"))


def tiny_net(mhex: bool = True) -> UNet:
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8, 16), mhex=mhex)


def runner(out: Path, net=None, **kwargs) -> BatchInference:
    return BatchInference(
        net or tiny_net(),
        get_transforms("hippocampus", "infer"),
        get_inferer("hippocampus", roi_size=(32, 32, 32)),
        out,
        device="cpu",
        **kwargs,
    )


def test_outputs_have_the_input_geometry(tmp_path):
    images = HELD_BACK[:2]
    result = runner(tmp_path / "out")([str(p) for p in images])
    assert not result.failures
    for path in images:
        image = nib.load(path)
        files = result.outputs[case_name(path)]
        assert set(files) == {"mask", "cam", "uncertainty"}
        for key, channels in (("mask", None), ("cam", 3), ("uncertainty", None)):
            out = nib.load(files[key])
            assert out.shape == (image.shape if channels is None else (*image.shape, channels))
            np.testing.assert_allclose(out.affine, image.affine, atol=1e-5)
        assert nib.load(files["mask"]).get_data_dtype() == np.uint8


def test_mask_is_the_argmax_of_the_network_on_the_input_grid(tmp_path):
    # The sample volumes are RAS at 1 mm: preprocessing keeps the grid, so the mask must equal a direct
    # whole-volume forward pass of the network on the normalised image.
    path = HELD_BACK[0]
    net = tiny_net(mhex=False)
    result = runner(tmp_path / "out", net=net, cam=False, uncertainty=None)([str(path)])
    image = get_transforms("hippocampus", "infer")({"image": str(path)})["image"]
    with torch.no_grad():
        expected = net.eval()(image[None].float()).argmax(1)[0].numpy()
    got = np.asarray(nib.load(result.outputs[case_name(path)]["mask"]).dataobj)
    assert np.array_equal(np.diag(nib.load(path).affine)[:3] > 0, [True, True, True])
    assert (got == expected).mean() > 0.999


def test_bad_cases_are_logged_in_one_line_and_the_others_finish(tmp_path, caplog):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / HELD_BACK[0].name
    shutil.copy(HELD_BACK[0], good)
    truncated = inputs / "truncated.nii.gz"
    truncated.write_bytes(HELD_BACK[1].read_bytes()[:3000])
    ref = nib.load(HELD_BACK[1])
    nib.save(nib.Nifti1Image(np.zeros((30, 40), np.float32), ref.affine), inputs / "flat2d.nii.gz")
    data = np.asarray(ref.dataobj, dtype=np.float32).copy()
    data[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(data, ref.affine), inputs / "with_nan.nii.gz")
    with caplog.at_level(logging.ERROR, logger="eunets_monai.inference.batch"):
        result = runner(tmp_path / "out", cam=False, uncertainty=None)(inputs)
    assert list(result.outputs) == [case_name(good)]
    assert set(result.failures) == {str(p) for p in (truncated, inputs / "flat2d.nii.gz", inputs / "with_nan.nii.gz")}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all("\n" not in e for e in errors)
    for name in ("truncated.nii.gz", "flat2d.nii.gz", "with_nan.nii.gz"):
        assert any(name in e for e in errors), (name, errors)
    assert any("NaN" in e for e in errors)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{case_name(good)}_seg.nii.gz"]


def test_exit_on_error_for_partial_failures(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HELD_BACK[0], inputs)
    (inputs / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(SystemExit, match="1 of 2 case"):
        runner(tmp_path / "out", cam=False, uncertainty=None, exit_on_error=True)(inputs)
    assert (tmp_path / "out" / f"{case_name(HELD_BACK[0])}_seg.nii.gz").is_file()


def test_no_half_written_file_when_writing_fails(tmp_path, monkeypatch):
    def failing_save(image, filename, **kwargs):
        Path(filename).write_bytes(b"partial")  # a crash in the middle of writing
        raise OSError("disk full")

    monkeypatch.setattr(batch_module.nib, "save", failing_save)
    result = runner(tmp_path / "out", cam=False, uncertainty=None)([str(HELD_BACK[0])])
    assert "disk full" in result.failures[str(HELD_BACK[0])]
    assert list((tmp_path / "out").iterdir()) == []


def test_empty_folder_missing_input_and_missing_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchInferenceError, match="no NIfTI images"):
        runner(tmp_path / "out")(tmp_path / "empty")
    with pytest.raises(BatchInferenceError, match="input not found"):
        collect_images(tmp_path / "nope")
    with pytest.raises(SystemExit, match=r"^error: checkpoint not found: .*missing\.pt"):
        runner(tmp_path / "out", ckpt_path=tmp_path / "missing.pt", exit_on_error=True)(str(HELD_BACK[0]))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(BatchInferenceError, match="cannot load checkpoint"):
        load_checkpoint(tiny_net(), tmp_path / "bad.pt")


def test_checkpoint_formats_and_datalists(tmp_path):
    net, other = tiny_net(), UNet(3, 1, 3, channels=(4, 8, 16), mhex=True)
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("bare.pt", "wrapped.pt"):
        load_checkpoint(other, tmp_path / name)
        for a, b in zip(net.state_dict().values(), other.state_dict().values()):
            assert torch.equal(a, b)
    images = collect_images(SAMPLE / "dataset.json")  # the MSD "test" section
    assert [Path(p).name for p in images] == [p.name for p in HELD_BACK]
    assert collect_images(SAMPLE / "imagesTs") == [str(p.resolve()) for p in HELD_BACK]
    assert case_name("/x/case_1.nii.gz") == "case_1" and case_name("case_2.nii") == "case_2"


def test_sagittal_coronal_and_single_slice_inputs_are_written_on_their_grid(tmp_path):
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    img = nib.load(HELD_BACK[0])
    inputs = []
    for codes in ("PSR", "LSA", "SAR"):  # third voxel axis not S/I: the old writer's resampler failed on these
        t = ornt_transform(axcodes2ornt(nib.aff2axcodes(img.affine)), axcodes2ornt(tuple(codes)))
        data = apply_orientation(np.asanyarray(img.dataobj), t)
        nib.save(nib.Nifti1Image(data, img.affine @ inv_ornt_aff(t, img.shape)), str(tmp_path / f"{codes}.nii.gz"))
        inputs.append(tmp_path / f"{codes}.nii.gz")
    nib.save(nib.Nifti1Image(img.get_fdata()[:, :, 17:18], img.affine), str(tmp_path / "slice.nii.gz"))
    inputs.append(tmp_path / "slice.nii.gz")
    result = runner(tmp_path / "out", cam=False, uncertainty=None)([str(p) for p in inputs])
    assert not result.failures
    for path in inputs:
        written = nib.load(result.outputs[case_name(path)]["mask"])
        assert written.shape == nib.load(path).shape
        np.testing.assert_allclose(written.affine, nib.load(path).affine, atol=1e-5)
