"""Uncertainty: the collaboration gradient of adjacent MHEX+ heads, and the baselines it is compared with."""

from __future__ import annotations

from eunets_monai.uncertainty.baselines import (
    ProbabilityAccumulator,
    SampledPredictor,
    SampledUncertainty,
    deep_ensemble,
    flip_tta,
    mc_dropout,
    mc_dropout_enabled,
    predictive_entropy,
    probability_variance,
    softmax_entropy,
    variance_bound,
)
from eunets_monai.uncertainty.collaboration import (
    EXACT_METHODS,
    MODES,
    collaboration_cosines,
    collaboration_cosines_reference,
    collaboration_gradient,
    collaboration_gradient_reference,
    collaboration_outputs,
    cosines_to_uncertainty,
)

__all__ = [
    "MODES",
    "EXACT_METHODS",
    "collaboration_gradient",
    "collaboration_cosines",
    "collaboration_outputs",
    "collaboration_gradient_reference",
    "collaboration_cosines_reference",
    "cosines_to_uncertainty",
    "SampledUncertainty",
    "predictive_entropy",
    "softmax_entropy",
    "probability_variance",
    "variance_bound",
    "ProbabilityAccumulator",
    "mc_dropout_enabled",
    "mc_dropout",
    "flip_tta",
    "deep_ensemble",
    "SampledPredictor",
]
