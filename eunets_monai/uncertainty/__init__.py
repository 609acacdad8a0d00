"""Uncertainty: the collaboration gradient, the MHEX+ heads' disagreement, a per-case quality score, baselines."""

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
    PROBES,
    collaboration_gradient,
    collaboration_gradient_reference,
    collaboration_outputs,
    collaboration_to_unit,
    gradient_projections,
    sketch_probes,
)
from eunets_monai.uncertainty.single_pass import (
    QUALITY_SCORE,
    case_quality,
    fit_temperature,
    heads_mutual_information,
    heads_probabilities,
)

__all__ = [
    "MODES",
    "EXACT_METHODS",
    "PROBES",
    "collaboration_gradient",
    "collaboration_outputs",
    "collaboration_gradient_reference",
    "collaboration_to_unit",
    "sketch_probes",
    "gradient_projections",
    "heads_probabilities",
    "heads_mutual_information",
    "fit_temperature",
    "case_quality",
    "QUALITY_SCORE",
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
