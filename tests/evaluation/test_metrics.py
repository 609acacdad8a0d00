"""Uncertainty metrics on hand-made cases with known answers and against slow direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc
from scipy import stats

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


def slow_auroc(s, y):
    """P(score_pos > score_neg) + 1/2 P(tie), over every positive-negative pair."""
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def slow_auprc(s, y):
    """sum over distinct thresholds t (descending) of (R(t) - R(prev)) * P(t) with 'score >= t' as positive."""
    n_pos = sum(y)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        tp = sum(1 for a, b in zip(s, y) if a >= t and b)
        pp = sum(1 for a in s if a >= t)
        recall = tp / n_pos
        ap += (recall - prev_recall) * tp / pp
        prev_recall = recall
    return ap


def slow_ueo(u, e):
    best = 0.0
    for t in set(u):
        m = [a >= t for a in u]
        inter = sum(1 for a, b in zip(m, e) if a and b)
        best = max(best, 2 * inter / (sum(m) + sum(e)))
    return best


def test_auroc_known_answers():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # one inverted pair of 4: 3/4
    assert auroc([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1]) == 0.75
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_auroc_matches_slow_and_monai_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = (rng.random(60) < 0.4).astype(float)
    expected = slow_auroc(s.tolist(), y.tolist())
    assert auroc(s, y) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.tensor(s), torch.tensor(y)) == pytest.approx(
        compute_roc_auc(torch.tensor(s), torch.tensor(y)), abs=1e-12
    )


def test_auprc_known_answers():
    # ranking 1, 0, 1: P@1 = 1 at recall 1/2, P@3 = 2/3 at recall 1 -> (1 + 2/3) / 2
    assert auprc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(5 / 6)
    assert auprc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    # reversed: positives found last, P = 1/3 at recall 1/2 and 2/4 at recall 1
    assert auprc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # all tied: one step at recall 1 with precision = positive rate
    assert auprc([0.3] * 5, [1, 0, 0, 1, 0]) == pytest.approx(0.4)
    assert math.isnan(auprc([0.1, 0.2], [0, 0]))


def test_auprc_matches_slow():
    rng = np.random.default_rng(1)
    s = np.round(rng.random(50), 1)
    y = (rng.random(50) < 0.3).astype(float)
    assert auprc(s, y) == pytest.approx(slow_auprc(s.tolist(), y.tolist()), abs=1e-12)


def test_ueo_known_answer_and_slow():
    # thresholds 0.9, 0.5, 0.4, 0.1 give Dice 2/3, 1/2, 4/5, 2/3 -> 0.8
    assert ueo([0.9, 0.5, 0.4, 0.1], [1, 0, 1, 0]) == pytest.approx(0.8)
    assert ueo([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert math.isnan(ueo([0.1, 0.2], [0, 0]))
    rng = np.random.default_rng(2)
    u = np.round(rng.random(40), 2)
    e = (rng.random(40) < 0.3).astype(float)
    assert ueo(u, e) == pytest.approx(slow_ueo(u.tolist(), e.tolist()), abs=1e-12)
    # a threshold grid can only reach the exact maximum or less; the grid of all values reaches it
    assert ueo(u, e, thresholds=np.linspace(0, 1, 11)) <= ueo(u, e) + 1e-12
    assert ueo(u, e, thresholds=np.unique(u)) == pytest.approx(ueo(u, e))


def test_pearson_hand_computed():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 4.0, 5.0, 4.0, 5.0])
    dx, dy = x - x.mean(), y - y.mean()
    r_direct = (dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum())  # 6 / sqrt(10 * 6)
    assert r_direct == pytest.approx(6 / math.sqrt(60))
    t = r_direct * math.sqrt(3 / (1 - r_direct**2))
    p_direct = 2 * stats.t.sf(abs(t), df=3)
    r, p = pearson(x, y)
    assert r == pytest.approx(r_direct)
    assert p == pytest.approx(p_direct)
    assert all(math.isnan(v) for v in pearson(np.ones(5), y))


def test_binarize_thresholds():
    v = np.array([0.1, 0.4, 0.2, 0.9])
    assert binarize(v, "top_q", q=0.5).tolist() == [False, True, False, True]
    assert binarize(v, "top_q", q=0.25).tolist() == [False, False, False, True]
    assert binarize(np.array([0.1, 0.5, 0.2, 0.8]), "mean").tolist() == [False, True, False, True]  # mean 0.4
    assert binarize(v, 0.15).tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="threshold"):
        binarize(v, "median")


def test_otsu_close_to_brute_force_split():
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.normal(0.2, 0.05, 40), rng.normal(0.7, 0.1, 25)])

    def between(mask):
        w0, w1 = (~mask).mean(), mask.mean()
        return w0 * w1 * (v[~mask].mean() - v[mask].mean()) ** 2

    srt = np.sort(v)
    best = max(between(v > t) for t in srt[:-1])
    assert between(v > otsu_threshold(v)) >= 0.99 * best
    assert otsu_threshold(np.full(4, 0.3)) == 0.3


def test_map_agreement_hand_cases():
    a = np.array([0.0, 1.0, 2.0, 3.0])
    same = map_agreement(a, a * 10, "top_q", q=0.5)
    assert same["dice"] == 1.0 and same["iou"] == 1.0 and same["pearson_r"] == pytest.approx(1.0)
    opposite = map_agreement(a, a[::-1].copy(), "top_q", q=0.5)
    assert opposite["dice"] == 0.0 and opposite["iou"] == 0.0 and opposite["pearson_r"] == pytest.approx(-1.0)
    # tops {2, 3} and {1, 2}: one shared voxel -> Dice 1/2, IoU 1/3
    half = map_agreement(a, np.array([0.0, 2.0, 3.0, 1.0]), "top_q", q=0.5)
    assert half["dice"] == pytest.approx(0.5) and half["iou"] == pytest.approx(1 / 3)
    assert half["pearson_r"] == pytest.approx(0.4)  # dx = (-1.5, -.5, .5, 1.5), dy = (-1.5, .5, 1.5, -.5): 2/5


def test_usefulness_and_error_mask():
    pred = np.array([[0, 1], [2, 2]])
    label = np.array([[0, 2], [2, 1]])
    assert error_mask(pred, label).tolist() == [[False, True], [False, True]]
    u = np.array([[0.0, 0.9], [0.1, 0.8]])
    out = uncertainty_usefulness(u, pred, label)
    assert out == {"auroc": 1.0, "auprc": 1.0, "ueo": 1.0, "error_rate": 0.5}


def test_image_level_spearman():
    rho, _ = image_level_spearman([0.1, 0.2, 0.3], [0.9, 0.8, 0.5])
    assert rho == pytest.approx(1.0)
    u = [0.1, 0.4, 0.2, 0.3, 0.5]
    d = [0.9, 0.7, 0.6, 0.8, 0.5]  # 1 - d ranks: 1, 3, 4, 2, 5; u ranks: 1, 4, 2, 3, 5
    d2 = sum((a - b) ** 2 for a, b in zip([1, 4, 2, 3, 5], [1, 3, 4, 2, 5]))
    assert image_level_spearman(u, d)[0] == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert all(math.isnan(v) for v in image_level_spearman([0.1, 0.2], [0.5, 0.6]))


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(ValueError, match="shape"):
        auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        pearson([0.1, float("nan"), 0.3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="binary"):
        auprc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="empty"):
        ueo([], [])


def test_stratified_auroc_measures_information_beyond_the_strata():
    rng = np.random.default_rng(0)
    strata = rng.random(4000)
    errors = rng.random(4000) < strata  # errors explained by the strata alone
    assert abs(stratified_auroc(strata, errors, strata) - 0.5) < 0.06  # the strata add nothing to themselves
    assert abs(stratified_auroc(rng.random(4000), errors, strata) - 0.5) < 0.06  # noise adds nothing
    informative = errors + 0.5 * rng.random(4000)  # sees the errors themselves
    assert stratified_auroc(informative, errors, strata) > 0.95
    assert math.isnan(stratified_auroc([1.0, 2.0], [0, 0], [0.0, 1.0]))
    with pytest.raises(ValueError, match="strata size"):
        stratified_auroc([1.0, 2.0], [0, 1], [0.0])
