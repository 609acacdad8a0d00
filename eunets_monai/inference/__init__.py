"""Inference: the explained predictor for sliding-window inference and batch NIfTI inference."""

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
]
