"""Agreement and usefulness metrics for uncertainty maps; the uncertainty study (``uncertainty_study``)."""

from __future__ import annotations

from eunets_monai.evaluation.metrics import (
    auprc,
    auroc,
    binarize,
    error_mask,
    image_level_spearman,
    map_agreement,
    otsu_threshold,
    pearson,
    stratified_auroc,
    ueo,
    uncertainty_usefulness,
)

__all__ = [
    "binarize",
    "otsu_threshold",
    "map_agreement",
    "pearson",
    "auroc",
    "auprc",
    "ueo",
    "error_mask",
    "uncertainty_usefulness",
    "image_level_spearman",
    "stratified_auroc",
]
