"""Agreement and usefulness metrics for uncertainty maps."""

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
]
