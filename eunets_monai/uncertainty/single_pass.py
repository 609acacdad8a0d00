"""
Single-pass uncertainty from one explained forward pass, temperature scaling, and a per-case quality score.

- :py:func:`heads_mutual_information`: the disagreement of the MHEX+ heads' deep predictions, read as an ensemble of
  L predictors that share an encoder: ``MI = H(mean_l P_l) - mean_l H(P_l)`` (the BALD / mutual-information
  decomposition of the heads' predictive entropy). 0 where every head predicts the same distribution; at most
  log K. Free: the deep predictions come with the forward pass that gives the logits.
- :py:func:`fit_temperature`: one scalar T minimising the voxel-wise cross-entropy of ``logits / T`` on held-out
  labelled data (Guo et al. 2017); the entropy of ``softmax(logits / T)`` is then calibrated on average.
- :py:func:`case_quality`: per-case summaries of an uncertainty map inside the predicted structure, for triage
  (which scans need a human look).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from eunets_monai.networks.nets.base import EUNetOutputs
from eunets_monai.uncertainty.baselines import predictive_entropy

__all__ = [
    "heads_probabilities",
    "heads_mutual_information",
    "fit_temperature",
    "case_quality",
    "QUALITY_SCORE",
]

# The key of case_quality's dict that the inference summary reports as the triage score (chosen in
# docs/uncertainty.md by Spearman with 1 - Dice and failed-case AUROC).
QUALITY_SCORE = "mean"


def _to_probs(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, *S) logits to probabilities; one sigmoid channel becomes two classes (1 - p, p)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits.float())
        return torch.cat([1 - p, p], 1)
    return torch.softmax(logits.float(), 1)


def heads_probabilities(outputs: EUNetOutputs) -> torch.Tensor:
    """
    Every MHEX+ head's deep prediction on the output grid as probabilities: (L, B, K, *S) (K >= 2).

    Examples::

        >>> out = EUNet(2, 1, 3, channels=(4, 8, 16)).eval().forward_explained(torch.rand(1, 1, 16, 16))
        >>> heads_probabilities(out).shape
        torch.Size([3, 1, 3, 16, 16])
    """
    if not outputs.heads:
        raise ValueError("heads_probabilities needs a network with MHEX+ heads (mhex=True); this one has none.")
    return torch.stack([_to_probs(p) for p in outputs.deep_predictions()])


def heads_mutual_information(outputs: EUNetOutputs, normalize: bool = False) -> torch.Tensor:
    """
    Mutual information across the MHEX+ heads: ``H(mean_l P_l) - mean_l H(P_l)``, per voxel.

    Args:
        outputs: an explained forward pass (``net.forward_explained(x)``) with >= 2 heads.
        normalize: divide by log K so that the map lies in [0, 1].

    Returns:
        (B, 1, *S), in [0, log K] nats (or [0, 1]); 0 = every head predicts the same distribution.

    Examples::

        >>> net = EUNet(2, 1, 3, channels=(4, 8, 16)).eval()
        >>> mi = heads_mutual_information(net.forward_explained(torch.rand(1, 1, 16, 16)), normalize=True)
        >>> bool(mi.min() >= 0 and mi.max() <= 1)
        True
    """
    if len(outputs.heads) < 2:
        raise ValueError(f"heads_mutual_information needs >= 2 MHEX+ heads, got {len(outputs.heads)}.")
    probs = heads_probabilities(outputs)
    mean_entropy = torch.stack([predictive_entropy(p) for p in probs]).mean(0)
    mi = (predictive_entropy(probs.mean(0)) - mean_entropy).clamp_min(0.0)  # >= 0 by Jensen; rounding aside
    return mi / math.log(probs.shape[2]) if normalize else mi


def fit_temperature(
    logits: Sequence[torch.Tensor] | torch.Tensor,
    labels: Sequence[torch.Tensor] | torch.Tensor,
    max_voxels: int = 200_000,
    seed: int = 0,
) -> float:
    """
    The temperature T > 0 that minimises the mean cross-entropy of ``softmax(logits / T)`` against ``labels``.

    Args:
        logits: (B, K, *S) or a list of such (cases of different shapes), K >= 2.
        labels: matching class maps, (B, 1, *S) / (B, *S) or a list of such.
        max_voxels: a seeded uniform sample of at most this many voxels is used (the optimum barely moves).
        seed: seeds the sample.

    Returns:
        T (> 1: the model was over-confident).

    Examples::

        >>> logits = torch.randn(1, 3, 32, 32) * 5
        >>> fit_temperature(logits, torch.randint(0, 3, (1, 1, 32, 32))) > 1
        True
    """
    logits = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    labels = [labels] if isinstance(labels, torch.Tensor) else list(labels)
    if len(logits) != len(labels) or not logits:
        raise ValueError(
            f"fit_temperature needs as many label maps as logit maps, got {len(logits)} and {len(labels)}."
        )
    flat_z, flat_y = [], []
    for z, y in zip(logits, labels):
        if z.ndim < 3 or z.shape[1] < 2:
            raise ValueError(f"logits must be (B, K >= 2, *S), got shape {tuple(z.shape)}.")
        y = torch.as_tensor(y)
        y = y[:, 0] if y.ndim == z.ndim else y
        if tuple(y.shape) != (z.shape[0], *z.shape[2:]):
            raise ValueError(f"label shape {tuple(y.shape)} does not match the logits {tuple(z.shape)}.")
        flat_z.append(z.detach().float().movedim(1, -1).reshape(-1, z.shape[1]))
        flat_y.append(y.reshape(-1).long())
    z, y = torch.cat(flat_z), torch.cat(flat_y)
    if len(y) > max_voxels:
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:max_voxels]
        z, y = z[idx], y[idx]
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().exp())


def case_quality(segmentation, uncertainty, background: int = 0) -> dict[str, float]:
    """
    Per-case summaries of a voxel uncertainty map in [0, 1], for triage (high = look at this scan).

    - ``mean_in_structure``: mean uncertainty over the predicted foreground (NaN if nothing was predicted).
    - ``expected_error_ratio``: ``sum(uncertainty) / (2 |predicted foreground|)``: if the uncertainty were the
      probability that a voxel is wrong, its sum would be the expected number of wrong voxels, and this ratio an
      estimate of ``1 - Dice`` (Dice = 1 - (FP + FN) / (|P| + |G|), with |G| ~ |P|). An empty prediction scores
      ``sum / 2``.
    - ``mean``: mean uncertainty over the whole volume.
    - ``foreground_voxels``: |predicted foreground|.
    - ``score``: the one :py:data:`QUALITY_SCORE` selects (``mean``: the best of the three over the single-pass
      maps in ``docs/uncertainty.md``; with ``heads_mi`` it came closest to the deep ensemble's per-case ranking).

    Args:
        segmentation: predicted class map (*S) or (1, *S) / (1, 1, *S) (numpy or torch).
        uncertainty: map of the same spatial shape, values in [0, 1].
        background: the background class.

    Returns:
        dict of floats.

    Examples::

        >>> seg = np.zeros((4, 4), int); seg[1:3, 1:3] = 1
        >>> case_quality(seg, np.full((4, 4), 0.1))["expected_error_ratio"]
        0.2
    """
    seg = np.asarray(segmentation.detach().cpu() if isinstance(segmentation, torch.Tensor) else segmentation)
    unc = np.asarray(uncertainty.detach().cpu() if isinstance(uncertainty, torch.Tensor) else uncertainty, float)
    seg, unc = np.squeeze(seg), np.squeeze(unc)
    if seg.shape != unc.shape:
        raise ValueError(f"segmentation {seg.shape} and uncertainty {unc.shape} must have the same spatial shape.")
    if not np.isfinite(unc).all():
        raise ValueError("uncertainty contains NaN or infinite values.")
    fg = seg != background
    n_fg = int(fg.sum())
    out = {
        "mean_in_structure": float(unc[fg].mean()) if n_fg else float("nan"),
        "expected_error_ratio": round(float(unc.sum() / (2 * max(n_fg, 1))), 12),
        "mean": float(unc.mean()),
        "foreground_voxels": float(n_fg),
    }
    out["score"] = out[QUALITY_SCORE]
    return out
