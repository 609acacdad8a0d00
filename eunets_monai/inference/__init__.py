"""Inference: the explained predictor, batch inference for the bundles, and the ``eunets-infer`` engine."""

from __future__ import annotations

from eunets_monai.inference.batch import (
    BatchInference,
    BatchInferenceError,
    BatchResult,
    atomic_write_nifti,
    case_name,
    collect_images,
    load_checkpoint,
)
from eunets_monai.inference.explained import CAM_KINDS, ExplainedPredictor
from eunets_monai.inference.io import CaseInput, ImageVolume, collect_inputs, read_volume, write_case
from eunets_monai.inference.runner import VolumePredictor, normalize_volume_cam, run_cases

__all__ = [
    "ExplainedPredictor",
    "CAM_KINDS",
    "BatchInference",
    "BatchInferenceError",
    "BatchResult",
    "collect_images",
    "load_checkpoint",
    "case_name",
    "atomic_write_nifti",
    "CaseInput",
    "ImageVolume",
    "collect_inputs",
    "read_volume",
    "write_case",
    "VolumePredictor",
    "normalize_volume_cam",
    "run_cases",
]
