"""Explanations: equivalent-kernel CAMs of the MHEX+ heads, and Grad-CAM for segmentation as the baseline."""

from __future__ import annotations

from eunets_monai.explain.cam import NORMALIZATIONS, head_cam, mhex_cam, minmax_normalize, stage_cams
from eunets_monai.explain.gradcam import SegGradCAM, resolve_layer, seg_grad_cam

__all__ = [
    "head_cam",
    "stage_cams",
    "mhex_cam",
    "minmax_normalize",
    "NORMALIZATIONS",
    "SegGradCAM",
    "seg_grad_cam",
    "resolve_layer",
]
