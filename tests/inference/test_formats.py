"""DICOM series folders (written here with pydicom from a real hippocampus case) and NRRD/MHA (written with ITK)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from eunets_monai.inference.cli import main
from eunets_monai.inference.io import CaseInput, collect_inputs, read_volume
from tests.fixtures import HIPPOCAMPUS

HIPPO = sorted((HIPPOCAMPUS / "imagesTs").glob("*.nii.gz"))[0]
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rounded_case(flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """
    A real case with integer intensities (DICOM stores integers) and an oblique, anisotropic affine (``flip``: also
    left-handed; a DICOM reader then stacks the slices the other way round, which is the same geometry).
    """
    img = nib.load(HIPPO)
    data = np.round(img.get_fdata(dtype=np.float32))
    angle = np.deg2rad(15.0)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine = rotation @ np.diag([-0.9 if flip else 0.9, 1.1, 1.3, 1.0])
    affine[:3, 3] = [40.0, -20.0, 7.5]
    return data, affine


def write_series(folder: Path, data: np.ndarray, affine_ras: np.ndarray, prefix: str = "IM") -> list[Path]:
    """One MR DICOM file per slice of ``data`` (x, y, z) placed by ``affine_ras``."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS @ affine_ras
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = [*(lps[:3, 0] / dc), *(lps[:3, 1] / dr)]
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, series_uid, "MR"
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.PatientName, ds.PatientID = "Test^Phantom", "0"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.PixelSpacing = [f"{dr:.10g}", f"{dc:.10g}"]
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.10g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype(np.int16)).tobytes()
        path = folder / f"{prefix}{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def test_dicom_series_reads_as_the_equivalent_nifti(tmp_path):
    data, affine = rounded_case()
    write_series(tmp_path / "series", data, affine)
    cases, _ = collect_inputs(str(tmp_path / "series"))
    assert [c.name for c in cases] == ["series"]
    volume = read_volume(cases[0])
    np.testing.assert_array_equal(volume.data[0], data)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    data, affine = rounded_case(flip=True)
    write_series(tmp_path / "flipped", data, affine)
    volume = read_volume(collect_inputs(str(tmp_path / "flipped"))[0][0])
    np.testing.assert_array_equal(volume.data[0], data[:, :, ::-1])
    flip_k = np.eye(4)
    flip_k[2, 2], flip_k[2, 3] = -1, data.shape[2] - 1
    np.testing.assert_allclose(volume.affine, affine @ flip_k, atol=1e-6)


def test_dicom_gives_the_same_mask_as_the_nifti(tmp_path, tiny_bundle):
    data, affine = rounded_case()
    write_series(tmp_path / "in" / "series_a", data, affine)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "in" / "same.nii.gz"))
    out = tmp_path / "out"
    assert main([str(tiny_bundle), str(tmp_path / "in"), "-o", str(out), "--outputs", "seg", "--quiet"]) == 0
    from_dicom, from_nifti = nib.load(out / "series_a_seg.nii.gz"), nib.load(out / "same_seg.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(from_dicom.dataobj), np.asanyarray(from_nifti.dataobj))
    np.testing.assert_allclose(from_dicom.affine, affine, atol=1e-5)
    assert from_dicom.header["sform_code"] == 1 and from_dicom.header.get_xyzt_units()[0] == "mm"
    rows = {r["case"]: r for r in json.loads((out / "summary.json").read_text())}
    assert rows["series_a"]["series_uid"] and rows["series_a"]["status"] == "ok"


def test_bad_dicom_folders_each_get_one_line(tmp_path, tiny_bundle, capsys):
    data, affine = rounded_case()
    data = data[:, :, 10:20]
    src = tmp_path / "in"
    gap = write_series(src / "gap", data, affine)
    for f in gap[5:]:  # the second half 200 mm further on
        ds = __import__("pydicom").dcmread(f)
        ds.ImagePositionPatient = [float(v) + 200.0 * n for v, n in zip(ds.ImagePositionPatient, [0, 0, 1])]
        ds.save_as(f)
    tilted = write_series(src / "tilted", data, affine)
    ds = __import__("pydicom").dcmread(tilted[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, 1]
    ds.save_as(tilted[3])
    (src / "garbage").mkdir()
    for i in range(3):
        (src / "garbage" / f"x{i}.dcm").write_bytes(b"\x00" * 200)
    write_series(src / "two", data, affine)
    write_series(src / "two", data[::-1], affine, prefix="B")
    code = main([str(tiny_bundle), str(src), "-o", str(tmp_path / "out"), "--outputs", "seg", "--quiet"])
    err = capsys.readouterr().err
    rows = {r["case"] or r["input"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())}
    assert code == 1
    assert "uneven slice gaps" in rows["gap"]["error"]
    assert "different orientations" in rows["tilted"]["error"]
    assert "no readable DICOM" in rows[str(src / "garbage")]["error"]
    assert rows["two_series1"]["status"] == rows["two_series2"]["status"] == "ok"  # one output per series
    for name in ("gap", "tilted", "garbage"):
        assert len([line for line in err.splitlines() if f"{src}/{name}" in line]) == 1


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_read_in_patient_space_and_run(tmp_path, tiny_bundle, suffix):
    itk = pytest.importorskip("itk")
    data, affine = rounded_case(flip=True)
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = itk.image_from_array(np.ascontiguousarray(data.transpose(2, 1, 0)).astype(np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    path = tmp_path / f"scan{suffix}"
    itk.imwrite(image, str(path))
    volume = read_volume(CaseInput("scan", str(path)))
    np.testing.assert_array_equal(volume.data[0], data)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    out = tmp_path / "out"
    assert main([str(tiny_bundle), str(path), "-o", str(out), "--outputs", "seg", "--quiet"]) == 0
    seg = nib.load(out / "scan_seg.nii.gz")
    assert seg.shape == data.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)


def test_dicom_seg_round_trips_labels_onto_the_source_slices(tmp_path):
    hd = pytest.importorskip("highdicom")
    from eunets_monai.inference.dicom_seg import write_dicom_seg

    data, affine = rounded_case(flip=True)  # stacked in reverse: the SEG must still follow each source slice
    write_series(tmp_path / "series", data, affine)
    volume = read_volume(collect_inputs(str(tmp_path / "series"))[0][0])
    seg = np.zeros(volume.spatial_shape, np.uint8)
    seg[10:20, 10:30, 5:15], seg[20:25, 10:30, 8:12] = 1, 2
    names = ["background", "anterior", "posterior"]
    write_dicom_seg(tmp_path / "a_seg.dcm", seg, volume.dicom_sources, names, "test-algorithm", "1.0")
    dcm = hd.seg.segread(tmp_path / "a_seg.dcm")
    assert [d.SegmentLabel for d in dcm.SegmentSequence] == names[1:]
    assert dcm.SeriesInstanceUID != volume.dicom_sources[0].SeriesInstanceUID
    assert dcm.FrameOfReferenceUID == volume.dicom_sources[0].FrameOfReferenceUID
    uids = [ds.SOPInstanceUID for ds in volume.dicom_sources]
    labels = dcm.get_pixels_by_source_instance(uids, combine_segments=True, relabel=True)  # (slice, row, column)
    np.testing.assert_array_equal(np.transpose(labels, (2, 1, 0)), seg)
    write_dicom_seg(tmp_path / "empty_seg.dcm", np.zeros_like(seg), volume.dicom_sources, names)
    assert hd.seg.segread(tmp_path / "empty_seg.dcm").NumberOfFrames == len(uids) * 2
    with pytest.raises(ValueError, match="does not match a series of"):
        write_dicom_seg(tmp_path / "bad.dcm", seg[..., :-1], volume.dicom_sources, names)
    del volume.dicom_sources[0].FrameOfReferenceUID
    with pytest.raises(ValueError, match="no FrameOfReferenceUID"):
        write_dicom_seg(tmp_path / "bad.dcm", seg, volume.dicom_sources, names)


def test_dicom_seg_option_writes_a_seg_per_series_as_part_of_the_case(tmp_path, tiny_bundle, monkeypatch, capsys):
    hd = pytest.importorskip("highdicom")
    data, affine = rounded_case()
    write_series(tmp_path / "in" / "series_a", data, affine)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "in" / "same.nii.gz"))
    out = tmp_path / "out"
    args = [str(tiny_bundle), str(tmp_path / "in"), "-o", str(out), "--outputs", "seg", "--dicom-seg", "--quiet"]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*_seg.*")) == ["same_seg.nii.gz", "series_a_seg.dcm", "series_a_seg.nii.gz"]
    dcm = hd.seg.segread(out / "series_a_seg.dcm")
    sources = [__import__("pydicom").dcmread(f) for f in sorted((tmp_path / "in" / "series_a").iterdir())]
    assert {r.SeriesInstanceUID for r in dcm.ReferencedSeriesSequence} == {sources[0].SeriesInstanceUID}
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in sources])  # the files are already in z order
    labels = dcm.get_pixels_by_source_instance([sources[i].SOPInstanceUID for i in order], combine_segments=True)
    nifti = np.asanyarray(nib.load(out / "series_a_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(np.transpose(labels, (2, 1, 0)), nifti)
    assert "tiny_bundle" in dcm.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
    # A case without its SEG is not complete: only that case is redone.
    (out / "series_a_seg.dcm").unlink()
    assert main(args) == 0
    rows = {r["case"]: r["status"] for r in json.loads((out / "summary.json").read_text())}
    assert rows == {"series_a": "ok", "same": "skipped"}
    monkeypatch.setattr("eunets_monai.inference.dicom_seg.dicom_seg_available", lambda: False)
    assert main(args + ["--overwrite"]) == 2
    assert "--dicom-seg needs highdicom" in capsys.readouterr().err.strip().splitlines()[-1]
