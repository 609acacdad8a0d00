"""Uncertainty baselines: entropy/variance against the direct formulas, MC dropout, flip TTA, deep ensemble."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from eunets_monai.networks.nets.unet import UNet
from eunets_monai.uncertainty.baselines import (
    ProbabilityAccumulator,
    SampledPredictor,
    deep_ensemble,
    flip_tta,
    mc_dropout,
    predictive_entropy,
    probability_variance,
    softmax_entropy,
    variance_bound,
)


def direct_entropy(p):
    """H = -sum_c p_c log p_c voxel by voxel, p: (K, n)."""
    k, n = p.shape
    return [-sum(float(p[c, i]) * math.log(float(p[c, i])) for c in range(k) if p[c, i] > 0) for i in range(n)]


def direct_variance(members, c, i):
    """(1/N) sum_m (P_m(c) - mean P(c))^2 at voxel i, members: (N, K, n)."""
    vals = [float(m[c, i]) for m in members]
    mean = sum(vals) / len(vals)
    return sum((v - mean) ** 2 for v in vals) / len(vals)


def test_entropy_matches_direct_formula_and_range():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5)
    p = torch.softmax(logits, 1)
    h = softmax_entropy(logits)
    assert h.shape == (1, 1, 5)
    assert torch.allclose(h[0, 0], torch.tensor(direct_entropy(p[0])), atol=1e-6)
    assert torch.allclose(softmax_entropy(logits, normalize=True), h / math.log(3))
    uniform = predictive_entropy(torch.full((1, 4, 2, 2), 0.25), normalize=True)
    certain = predictive_entropy(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    assert torch.allclose(uniform, torch.ones_like(uniform)) and certain.item() == 0.0


def test_variance_matches_direct_formula_for_every_reduction():
    torch.manual_seed(1)
    members = torch.softmax(torch.randn(4, 1, 3, 6), dim=2)  # N=4, B=1, K=3, 6 voxels
    per_class = [[direct_variance(members[:, 0], c, i) for i in range(6)] for c in range(3)]
    expected = {
        "mean": [sum(per_class[c][i] for c in range(3)) / 3 for i in range(6)],
        "sum": [sum(per_class[c][i] for c in range(3)) for i in range(6)],
        "max": [max(per_class[c][i] for c in range(3)) for i in range(6)],
    }
    for red, exp in expected.items():
        v = probability_variance(members, red)
        assert v.shape == (1, 1, 6)
        assert torch.allclose(v[0, 0], torch.tensor(exp), atol=1e-7)
        assert torch.allclose(probability_variance(members, red, normalize=True), v / variance_bound(3, red))
    with pytest.raises(ValueError, match="reduction"):
        probability_variance(members, "median")


def test_variance_bounds_are_reached_by_evenly_spread_votes():
    votes = torch.eye(3).view(3, 1, 3, 1)  # three members, each certain of a different class
    for red in ("mean", "sum"):
        assert probability_variance(votes, red, normalize=True).item() == pytest.approx(1.0)
    two = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(2, 1, 3, 1)
    assert probability_variance(two, "max", normalize=True).item() == pytest.approx(1.0)


def test_accumulator_equals_stacked_statistics():
    torch.manual_seed(2)
    members = torch.softmax(torch.randn(5, 2, 3, 4, 4), dim=2)
    acc = ProbabilityAccumulator()
    for m in members:
        acc.add(m)
    assert torch.allclose(acc.mean, members.mean(0), atol=1e-6)
    assert torch.allclose(acc.variance(), members.var(0, unbiased=False), atol=1e-6)


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(x.shape[0], *self.logits.shape[1:])


def test_deep_ensemble_equals_direct_formulas():
    torch.manual_seed(3)
    logits = [torch.randn(1, 2, 3, 2) for _ in range(3)]
    r = deep_ensemble([FixedLogits(lg) for lg in logits], torch.zeros(1, 1, 3, 2))
    probs = torch.stack([torch.softmax(lg, 1) for lg in logits])  # (N, 1, K, 3, 2)
    mean = probs.mean(0)
    flat_members = probs[:, 0].reshape(3, 2, 6)
    assert r.num_samples == 3
    assert torch.allclose(r.probs, mean, atol=1e-6)
    assert torch.allclose(r.entropy[0, 0].flatten(), torch.tensor(direct_entropy(mean[0].reshape(2, 6))), atol=1e-6)
    var = [sum(direct_variance(flat_members, c, i) for c in range(2)) / 2 for i in range(6)]
    assert torch.allclose(r.variance[0, 0].flatten(), torch.tensor(var), atol=1e-7)
    assert r.entropy.shape == r.variance.shape == (1, 1, 3, 2)


def _net(dropout: float) -> UNet:
    return UNet(2, 1, 2, channels=(4, 8), dropout=dropout)


def test_mc_dropout_varies_only_with_dropout_and_keeps_norm_in_eval():
    torch.manual_seed(4)
    x = torch.rand(1, 1, 16, 16)
    net = _net(0.3)
    net.train()
    bn_before = [m.running_mean.clone() for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    r1 = mc_dropout(net, x, num_samples=5)
    r2 = mc_dropout(net, x, num_samples=5)
    assert r1.variance.max() > 1e-6
    assert not torch.equal(r1.probs, r2.probs)  # new masks every call
    # batch norm used its running statistics (eval) and did not update them; modes are restored afterwards
    bn_after = [m.running_mean for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn_before, bn_after))
    assert all(m.training for m in net.modules())

    no_dropout = _net(0.0).eval()
    with pytest.warns(UserWarning, match="no dropout"):
        r0 = mc_dropout(no_dropout, x, num_samples=4)
    assert torch.equal(r0.variance, torch.zeros_like(r0.variance))
    assert torch.allclose(r0.probs, torch.softmax(no_dropout(x), 1))
    assert not no_dropout.training


class PixelwiseLogits(nn.Module):
    """logits = (x, -x) at each voxel: flip-equivariant and sensitive to where each value sits."""

    def forward(self, x):
        return torch.cat([x, -x], dim=1)


class SymmetricConv(nn.Module):
    """A 3x3(x3) conv with a flip-symmetric kernel and zero padding: flip-equivariant, mixes neighbours."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = conv(1, 2, 3, padding=1)
        with torch.no_grad():
            w = torch.randn_like(self.conv.weight)
            for dims in itertools.chain.from_iterable(
                itertools.combinations(range(2, 2 + spatial_dims), r) for r in range(1, spatial_dims + 1)
            ):
                w = w + torch.flip(w, dims)
            self.conv.weight.copy_(w)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flip_tta_unflips_predictions(spatial_dims):
    torch.manual_seed(5)
    x = torch.randn(2, 1, *([5, 6, 7][:spatial_dims]))
    for model in (PixelwiseLogits(), SymmetricConv(spatial_dims)):
        r = flip_tta(model, x)
        assert r.num_samples == 2**spatial_dims
        assert torch.allclose(r.variance, torch.zeros_like(r.variance), atol=1e-7)
        # averaging correctly un-flipped predictions of an equivariant model reproduces the plain prediction
        assert torch.allclose(r.probs, torch.softmax(model(x), 1), atol=1e-6)
    # a model that is not flip-equivariant (it sees absolute position) does disagree with itself
    ramp = torch.linspace(-1, 1, x.shape[2]).view(1, 1, -1, *([1] * (spatial_dims - 1)))
    r = flip_tta(lambda t: torch.cat([t + 3 * ramp, -t], 1), x)
    assert r.variance.max() > 1e-3
    assert flip_tta(PixelwiseLogits(), x, axes=[0]).num_samples == 2


def test_sampled_predictor_in_sliding_window():
    torch.manual_seed(6)
    nets = [UNet(3, 1, 2, channels=(4, 8)).eval() for _ in range(2)]
    x = torch.rand(1, 1, 10, 12, 9)
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2)
    with torch.no_grad():
        out = inferer(x, SampledPredictor("ensemble", nets))
        direct = deep_ensemble(nets, x)
    assert out.shape == (1, 4, 10, 12, 9)
    assert torch.allclose(out[:, :2].sum(1), torch.ones(1, 10, 12, 9), atol=1e-5)
    assert (out[:, 2:] >= 0).all()
    with torch.no_grad():
        tta = inferer(x, SampledPredictor("tta", nets[0], normalize=True))
        mc = inferer(x, SampledPredictor("mc_dropout", UNet(3, 1, 2, channels=(4, 8), dropout=0.2), num_samples=3))
    assert tta.shape == mc.shape == (1, 4, 10, 12, 9)
    assert tta[:, 2:].max() <= 1.0
    # windows overlap, so sliding-window output is a blend; check one full-window crop against the direct call
    with torch.no_grad():
        crop = SampledPredictor("ensemble", nets)(x[..., :8, :8, :8])
        direct_crop = deep_ensemble(nets, x[..., :8, :8, :8])
    assert torch.allclose(crop[:, :2], direct_crop.probs) and direct.probs.shape == (1, 2, 10, 12, 9)
    with pytest.raises(ValueError, match="method"):
        SampledPredictor("bayes", nets[0])
    with pytest.raises(ValueError, match="one network"):
        SampledPredictor("tta", nets)
