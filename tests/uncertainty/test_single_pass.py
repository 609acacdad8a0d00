from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eunets_monai.networks.nets.base import EUNetOutputs
from eunets_monai.networks.nets.unet import EUNet
from eunets_monai.uncertainty.baselines import predictive_entropy, softmax_entropy
from eunets_monai.uncertainty.single_pass import (
    QUALITY_SCORE,
    case_quality,
    fit_temperature,
    heads_mutual_information,
    heads_probabilities,
)


def test_entropy_in_range_and_maximal_at_uniform_logits():
    logits = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(0)) * 3
    h = softmax_entropy(logits)
    assert h.min() >= 0 and h.max() <= math.log(4)
    uniform = softmax_entropy(torch.full((1, 4, 3, 3), 0.7))
    torch.testing.assert_close(uniform, torch.full((1, 1, 3, 3), math.log(4)))
    assert h.max() < math.log(4)  # random logits are never exactly uniform


def _outputs_with(predictions: list[torch.Tensor]) -> EUNetOutputs:
    """An EUNetOutputs whose heads' deep predictions are given logits on the output grid."""

    class _Head:
        def __init__(self, p):
            self.prediction = p

    return EUNetOutputs(
        predictions[0], [_Head(p) for p in predictions], tuple(predictions[0].shape[2:]), (slice(None), slice(None))
    )


def test_heads_mutual_information_against_a_direct_computation():
    gen = torch.Generator().manual_seed(1)
    preds = [torch.randn(1, 3, 4, 5, generator=gen) * 2 for _ in range(3)]
    out = _outputs_with(preds)
    probs = [torch.softmax(p, 1) for p in preds]
    mean = sum(probs) / 3
    direct = -(mean * mean.log()).sum(1, keepdim=True) + sum((p * p.log()).sum(1, keepdim=True) for p in probs) / 3
    torch.testing.assert_close(heads_mutual_information(out), direct)
    mi = heads_mutual_information(out, normalize=True)
    assert mi.min() >= 0 and mi.max() <= 1
    same = _outputs_with([preds[0]] * 3)
    assert heads_mutual_information(same).abs().max() < 1e-6  # agreeing heads: no disagreement
    # two heads certain of different classes: MI = log 2 of log 3
    a, b = torch.tensor([20.0, -20, -20]), torch.tensor([-20.0, 20, -20])
    opposed = _outputs_with([a.view(1, 3, 1, 1), b.view(1, 3, 1, 1)])
    assert abs(heads_mutual_information(opposed).item() - math.log(2)) < 1e-4


def test_heads_probabilities_of_a_sigmoid_network_and_errors():
    net = EUNet(2, 1, 1, channels=(3, 4, 5)).eval()
    with torch.no_grad():
        out = net.forward_explained(torch.rand(1, 1, 8, 8))
    probs = heads_probabilities(out)
    assert probs.shape == (2, 1, 2, 8, 8)
    torch.testing.assert_close(probs.sum(2), torch.ones(2, 1, 8, 8))
    torch.testing.assert_close(predictive_entropy(probs[0]).shape, torch.Size([1, 1, 8, 8]))
    with pytest.raises(ValueError, match=">= 2 MHEX"):
        heads_mutual_information(_outputs_with([torch.zeros(1, 2, 2, 2)]))


def test_fit_temperature_recovers_a_known_temperature():
    gen = torch.Generator().manual_seed(2)
    true = torch.randn(1, 3, 40, 40, generator=gen) * 2
    labels = torch.distributions.Categorical(logits=true.movedim(1, -1)).sample()  # calibrated at T = 1
    t = fit_temperature([true * 3], [labels[:, None]])  # over-confident by 3
    assert abs(t - 3) < 0.3
    with pytest.raises(ValueError, match="label shape"):
        fit_temperature(true, torch.zeros(1, 1, 4, 4))


def test_case_quality():
    seg = np.zeros((6, 6), int)
    seg[1:4, 1:4] = 2
    unc = np.zeros((6, 6))
    unc[1:4, 1:4] = 0.5
    unc[0, 0] = 0.9
    q = case_quality(torch.as_tensor(seg)[None, None], unc)
    assert q["mean_in_structure"] == 0.5 and q["foreground_voxels"] == 9
    assert q["expected_error_ratio"] == pytest.approx((4.5 + 0.9) / 18)
    assert q["mean"] == pytest.approx(5.4 / 36) and q["score"] == q[QUALITY_SCORE]
    empty = case_quality(np.zeros((3, 3)), np.full((3, 3), 0.2))
    assert math.isnan(empty["mean_in_structure"]) and empty["expected_error_ratio"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="same spatial shape"):
        case_quality(seg, unc[:5])
    with pytest.raises(ValueError, match="NaN"):
        case_quality(seg, np.full((6, 6), np.nan))
