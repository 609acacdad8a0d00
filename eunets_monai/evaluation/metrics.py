"""
Metrics for uncertainty maps.

(a) Agreement between two maps, as paper 000 Table 2: IoU and Dice of the thresholded maps and Pearson's r with its
p-value. (b) Usefulness, which the paper does not measure: how well a map finds the model's own mistakes, as the
AUROC and AUPRC of the uncertainty as a score for "this voxel is misclassified", the uncertainty-error overlap (UEO,
Jungo & Reyes 2019) and the image-level Spearman correlation between mean uncertainty and 1 - Dice.

Inputs are torch tensors or numpy arrays of any shape (a map and a mask of the same shape); everything is computed
in float64 numpy. Dice/IoU reuse MONAI's ``compute_dice``/``compute_iou``; the correlations and their p-values
come from scipy; AUROC/AUPRC/UEO are exact sort-based numpy (MONAI's ``compute_roc_auc`` loops in Python per voxel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from scipy import stats

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

THRESHOLDS = ("top_q", "otsu", "mean")


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values (shape {arr.shape}).")
    return arr


def _pair(a, b, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _to_numpy(a, names[0]), _to_numpy(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} shape {a.shape} differs from {names[1]} shape {b.shape}.")
    return a.ravel(), b.ravel()


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    if not np.isin(mask, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be a binary 0/1 mask, got values {np.unique(mask)[:5]}...")
    return mask.astype(bool)


def otsu_threshold(values, bins: int = 256) -> float:
    """
    Otsu's threshold of a map: the histogram split (``bins`` bins) that maximises the between-class variance.

    Args:
        values: any-shaped map.
        bins: histogram bins.

    Returns:
        the threshold t; ``values > t`` is the upper class. A constant map returns its value.

    Examples::

        >>> otsu_threshold(np.array([0.0, 0.1, 0.9, 1.0])) > 0.1
        True
    """
    v = _to_numpy(values, "values").ravel()
    lo, hi = v.min(), v.max()
    if lo == hi:
        return float(lo)
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1]  # weight of the lower class when splitting after bin i
    w1 = v.size - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(counts * centres) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:-1][np.argmax(between)])


def binarize(values, threshold: str | float = "top_q", q: float = 0.1) -> np.ndarray:
    """
    Binarise an uncertainty map to its "uncertain" region.

    Args:
        values: any-shaped map.
        threshold: ``"top_q"``: the ``q`` fraction of voxels with the highest values (ties at the cut go in, so
            the region can be slightly larger); ``"otsu"``: above Otsu's threshold; ``"mean"``: above the map's mean;
            a float: above that value.
        q: the fraction for ``"top_q"``, in (0, 1].

    Returns:
        bool array of the input's shape.

    Examples::

        >>> binarize(np.array([0.1, 0.4, 0.2, 0.9]), "top_q", q=0.5).tolist()
        [False, True, False, True]
    """
    v = _to_numpy(values, "values")
    if isinstance(threshold, (int, float)):
        return v > threshold
    if threshold == "top_q":
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q}.")
        k = max(1, int(round(q * v.size)))
        cut = np.partition(v.ravel(), v.size - k)[v.size - k]
        return v >= cut
    if threshold == "otsu":
        return v > otsu_threshold(v)
    if threshold == "mean":
        return v > v.mean()
    raise ValueError(f"threshold must be one of {THRESHOLDS} or a number, got {threshold!r}.")


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks through MONAI (both empty -> 1, MONAI's ``ignore_empty=False`` convention)."""
    ta = torch.as_tensor(a.reshape(1, 1, -1), dtype=torch.float32)
    tb = torch.as_tensor(b.reshape(1, 1, -1), dtype=torch.float32)
    dice = compute_dice(ta, tb, include_background=True, ignore_empty=False)
    iou = compute_iou(ta, tb, include_background=True, ignore_empty=False)
    return float(dice), float(iou)


def pearson(a, b) -> tuple[float, float]:
    """
    Pearson's r between two maps (over all voxels) and its two-sided p-value (scipy).

    Returns:
        (r, p); (nan, nan) when either map is constant, where r is undefined.
    """
    x, y = _pair(a, b, ("a", "b"))
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    res = stats.pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


def map_agreement(a, b, threshold: str | float = "top_q", q: float = 0.1) -> dict[str, float]:
    """
    Agreement of two uncertainty maps, as paper 000 Table 2. Each map is binarised at its own threshold
    (:py:func:`binarize`): the maps live on different scales (e.g. a cosine-based score vs an entropy in nats), so a
    common absolute threshold would compare scales, not where the maps put their doubt.

    Args:
        a: a map, any shape.
        b: a map of the same shape.
        threshold: see :py:func:`binarize`; the default marks each map's top 10% voxels.
        q: the fraction for ``"top_q"``.

    Returns:
        ``{"iou", "dice", "pearson_r", "pearson_p"}``.

    Examples::

        >>> map_agreement(np.arange(10.0), np.arange(10.0) ** 2)["dice"]
        1.0
    """
    x, y = _pair(a, b, ("a", "b"))
    dice, iou = _overlap(binarize(x, threshold, q), binarize(y, threshold, q))
    r, p = pearson(x, y)
    return {"iou": iou, "dice": dice, "pearson_r": r, "pearson_p": p}


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = _pair(scores, labels, ("scores", "labels"))
    return s, _binary(y, "labels")


def auroc(scores, labels) -> float:
    """
    Area under the ROC curve of ``scores`` for the binary ``labels``: the probability that a random positive
    scores higher than a random negative, ties counting 1/2 (the Mann-Whitney U statistic, from average ranks).

    Returns:
        AUROC in [0, 1]; nan when ``labels`` has a single class.

    Examples::

        >>> auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
        1.0
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _descending_steps(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True positives and predicted positives when thresholding at each distinct score, highest first."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of tied scores
    return np.cumsum(y)[last].astype(np.float64), (last + 1).astype(np.float64)


def auprc(scores, labels) -> float:
    """
    Area under the precision-recall curve as the average precision AP = sum_n (R_n - R_{n-1}) P_n over the
    distinct score thresholds, highest first (the step-wise sum, no interpolation; tied scores form one step).
    A random score has AP about the positive rate, the baseline to compare with.

    Returns:
        AP in [0, 1]; nan when there is no positive.

    Examples::

        >>> auprc([0.9, 0.8, 0.7], [1, 0, 1])  # P@1 = 1, P@3 = 2/3; each at recall step 1/2
        0.8333333333333333
    """
    s, y = _scores_labels(scores, labels)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    tp, pp = _descending_steps(s, y)
    recall_steps = np.diff(np.r_[0.0, tp]) / n_pos
    return float(np.sum(recall_steps * tp / pp))


def ueo(uncertainty, error, thresholds: Sequence[float] | None = None) -> float:
    """
    Uncertainty-error overlap (Jungo & Reyes 2019): max over thresholds t of Dice(uncertainty >= t, error).

    Args:
        uncertainty: any-shaped map.
        error: binary mask of the misclassified voxels, same shape.
        thresholds: the t to try; by default every distinct value of the map (the exact maximum; Jungo & Reyes
            sweep a grid on maps scaled to [0, 1], which can only give less or equal).

    Returns:
        UEO in [0, 1]; nan when there is no error (there is nothing to overlap with).

    Examples::

        >>> ueo([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])
        1.0
    """
    u, e = _scores_labels(uncertainty, error)
    n_err = float(e.sum())
    if n_err == 0:
        return float("nan")
    if thresholds is None:
        tp, pp = _descending_steps(u, e)
    else:
        t = np.asarray(thresholds, dtype=np.float64)
        above = u[None, :] >= t[:, None]
        tp, pp = (above & e[None, :]).sum(1).astype(np.float64), above.sum(1).astype(np.float64)
    dice = 2 * tp / (pp + n_err)
    return float(dice.max())


def error_mask(prediction, label) -> np.ndarray:
    """Misclassified voxels: ``prediction != label`` for integer class maps of the same shape (bool array)."""
    p = _to_numpy(prediction, "prediction")
    y = _to_numpy(label, "label")
    if p.shape != y.shape:
        raise ValueError(f"prediction shape {p.shape} differs from label shape {y.shape}.")
    return p != y


def uncertainty_usefulness(uncertainty, prediction, label) -> dict[str, float]:
    """
    How well one image's uncertainty map finds the model's mistakes.

    Args:
        uncertainty: (*S) map (higher = more doubt).
        prediction: (*S) predicted classes.
        label: (*S) true classes.

    Returns:
        ``{"auroc", "auprc", "ueo", "error_rate"}`` with ``error_rate`` the AUPRC of a random score; AUROC and AUPRC
        are nan when the image has no error (or only errors).
    """
    u = _to_numpy(uncertainty, "uncertainty")
    err = error_mask(prediction, label)
    if u.shape != err.shape:
        raise ValueError(f"uncertainty shape {u.shape} differs from prediction/label shape {err.shape}.")
    e = err.astype(np.float64)
    return {"auroc": auroc(u, e), "auprc": auprc(u, e), "ueo": ueo(u, e), "error_rate": float(e.mean())}


def image_level_spearman(mean_uncertainty: Sequence[float], dice: Sequence[float]) -> tuple[float, float]:
    """
    Spearman's rho between each image's mean uncertainty and its segmentation error 1 - Dice, with the two-sided
    p-value (scipy): does a more uncertain image tend to be a worse-segmented one?

    Args:
        mean_uncertainty: one value per image.
        dice: the images' Dice scores in [0, 1], same length.

    Returns:
        (rho, p); (nan, nan) with fewer than 3 images or a constant input.

    Examples::

        >>> image_level_spearman([0.1, 0.2, 0.3], [0.9, 0.8, 0.5])[0]
        1.0
    """
    u, d = _pair(mean_uncertainty, dice, ("mean_uncertainty", "dice"))
    if u.size < 3 or np.ptp(u) == 0 or np.ptp(d) == 0:
        return float("nan"), float("nan")
    res = stats.spearmanr(u, 1.0 - d)
    return float(res.statistic), float(res.pvalue)


def stratified_auroc(scores, labels, strata, bins: int = 20) -> float:
    """
    AUROC of ``scores`` for ``labels`` within narrow bins of another score ``strata`` (e.g. the softmax entropy),
    averaged with weights = positives per bin: how much ``scores`` ranks errors *beyond* what ``strata`` already
    says. The bin edges are quantiles of ``strata`` over the *positives* (each bin holds about the same number of
    errors, so the bins are narrow where the errors are); 0.5 = no information beyond ``strata`` (``strata`` itself
    scores a little above 0.5, from its spread within each bin); bins without both classes are skipped.

    Args:
        scores: (*S) the map under test.
        labels: (*S) binary targets (e.g. errors).
        strata: (*S) the reference score whose quantiles define the bins.
        bins: number of bins.

    Returns:
        weighted mean AUROC, nan if no bin has both classes.

    Examples::

        >>> s = np.arange(8.0); y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
        >>> stratified_auroc(s, y, strata=np.repeat([0.0, 1.0], 4), bins=2)
        0.75
    """
    s, y = _scores_labels(scores, labels)
    r = _to_numpy(strata, "strata").ravel().astype(np.float64)
    if r.shape != s.shape:
        raise ValueError(f"strata size {r.size} differs from scores size {s.size}.")
    if not y.any():
        return float("nan")
    edges = np.unique(np.quantile(r[y], np.linspace(0, 1, bins + 1)[1:-1]))
    which = np.searchsorted(edges, r, side="right")
    total, weight = 0.0, 0.0
    for b in np.unique(which):
        chunk = which == b
        pos = y[chunk].sum()
        if 0 < pos < chunk.sum():
            total += pos * auroc(s[chunk], y[chunk])
            weight += pos
    return total / weight if weight else float("nan")
