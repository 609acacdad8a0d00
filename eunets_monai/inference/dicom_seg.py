"""
DICOM Segmentation objects (``<case>_seg.dcm``) for DICOM series inputs, written with highdicom
(https://github.com/ImagingDataCommons/highdicom, maintained by the Imaging Data Commons; optional: ``pip install
"eunets-monai[dicom]"``). The SEG references every source image of the series, so PACS viewers, OHIF and 3D Slicer's
QuantitativeReporting place it on the scan without any geometry of ours; one segment per foreground class, labelled
with the bundle's class names, empty frames omitted.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["dicom_seg_available", "write_dicom_seg", "DICOM_SEG_SUFFIX"]

DICOM_SEG_SUFFIX = "_seg.dcm"
# Type 2 attributes (present, may be empty) that a SEG copies from its sources; anonymised series often lack them.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def dicom_seg_available() -> bool:
    """Whether highdicom can be imported."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return False
    return True


def write_dicom_seg(
    path: str | os.PathLike,
    seg: np.ndarray,
    sources: Sequence,
    class_names: Sequence[str],
    algorithm: str = "eunets-monai",
    version: str = "0",
) -> None:
    """
    Write a labelled mask of a DICOM series as one DICOM Segmentation (BINARY, one segment per foreground class).

    Args:
        path: the file to write.
        seg: integer labels (X = column, Y = row, Z = slice), as :py:func:`~eunets_monai.inference.io.read_volume`
            stacks a series: ``seg[..., k]`` belongs to ``sources[k]``.
        sources: the series' pydicom datasets (metadata is enough), in the volume's slice order.
        class_names: label names, background first; label ``i`` becomes segment ``i`` named ``class_names[i]``.
        algorithm: algorithm name stored in each segment's identification and as the model name.
        version: algorithm / software version.

    Examples::

        write_dicom_seg("out/case_seg.dcm", maps["seg"][0], volume.dicom_sources, ["background", "spleen"])
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if seg.ndim != 3 or seg.shape[2] != len(sources):
        raise ValueError(f"mask of shape {seg.shape} does not match a series of {len(sources)} slices.")
    frames = np.ascontiguousarray(np.transpose(seg, (2, 1, 0))).astype(np.uint8)  # (slices, rows, columns)
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=label,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for label, name in enumerate(class_names)
        if label > 0
    ]
    if int(frames.max(initial=0)) >= len(class_names):
        raise ValueError(f"mask has label {int(frames.max())} but only {len(class_names)} class names.")
    if any("FrameOfReferenceUID" not in ds for ds in sources):
        raise ValueError("the series has no FrameOfReferenceUID, so a DICOM SEG cannot be placed on it.")
    sources = [_with_type2(ds) for ds in sources]
    seg_dataset = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="eunets-monai",
        manufacturer_model_name=algorithm[:64],
        software_versions=version,
        device_serial_number="none",
        series_description=f"{algorithm} segmentation"[:64],
        omit_empty_frames=bool(frames.any()),  # an empty mask keeps its frames (a SEG needs at least one)
    )
    seg_dataset.save_as(os.fspath(path), enforce_file_format=True)


def _with_type2(ds):
    """``ds``, or a shallow copy with its missing Type 2 patient/study attributes added empty."""
    missing = [k for k in _TYPE2 if k not in ds]
    if not missing:
        return ds
    ds = copy.copy(ds)
    for keyword in missing:
        setattr(ds, keyword, "")
    return ds
