from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eunets_monai.networks.nets.ahf_unet import AHFUNet
from eunets_monai.networks.nets.efen import EFEN
from eunets_monai.networks.nets.unet import EUNet, UNet
from eunets_monai.networks.nets.unet_transformer import UNetTransformer
from eunets_monai.networks.nets.unetplusplus import UNetPlusPlus
from eunets_monai.uncertainty.collaboration import (
    collaboration_gradient,
    collaboration_gradient_reference,
    collaboration_outputs,
    collaboration_to_unit,
    gradient_projections,
    sketch_probes,
)

collaboration_cosines = collaboration_gradient  # U itself, in the paper's orientation
collaboration_cosines_reference = collaboration_gradient_reference

# Odd sizes: internal padding is part of what must match; in 3D the bottleneck keeps 2 voxels for instance norm.
SHAPES = {2: (5, 6), 3: (5, 4, 3)}


def tiny_eunet(spatial_dims: int, seed: int, channels=(3, 4, 5), dtype=torch.float64) -> EUNet:
    torch.manual_seed(seed)
    net = EUNet(spatial_dims, 1, 3, channels=channels, norm="instance").to(dtype).eval()
    return net


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_mode_equals_brute_force_reference(spatial_dims, seed):
    net = tiny_eunet(spatial_dims, seed)
    x = torch.randn(1, 1, *SHAPES[spatial_dims], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ref = collaboration_cosines_reference(net, x)
    assert (ref != 0).float().mean() > 0.1 and ref.std() > 0.05  # a non-degenerate map
    for method in ("forward", "reverse"):  # JVPs over the weight entries / VJPs over the pixels
        chunk = 256 if method == "forward" else 16  # reverse: several pixel chunks
        exact = collaboration_cosines(net, x, mode="exact", chunk_size=chunk, exact_method=method)
        assert exact.shape == (1, 1, *SHAPES[spatial_dims])
        torch.testing.assert_close(exact, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("cls", [UNetPlusPlus, AHFUNet, UNetTransformer, EFEN])
def test_exact_mode_on_every_architecture(cls):
    """Architecture-agnostic: only the EUNetBase API is used; attention (no forward-mode AD) falls back to reverse."""
    torch.manual_seed(0)
    kwargs = {"num_heads": 1} if cls is UNetTransformer else {}
    net = cls(2, 1, 3, channels=(4, 4, 8), mhex=True, norm="instance", **kwargs).double().eval()
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    ref = collaboration_cosines_reference(net, x)
    assert (ref != 0).float().mean() > 0.5
    torch.testing.assert_close(collaboration_cosines(net, x, mode="exact"), ref, rtol=0, atol=1e-4)
    summed = collaboration_gradient(net, x, mode="summed")
    assert summed.shape == (1, 1, 4, 5) and summed.abs().max() <= len(net.heads) - 1 + 1e-9


def test_exact_mode_float32_batch_and_ground_truth_label():
    net = tiny_eunet(2, seed=3, channels=(4, 5, 6), dtype=torch.float32)
    x = torch.randn(2, 1, 4, 5, generator=torch.Generator().manual_seed(3))
    label = torch.randint(0, 3, (2, 1, 4, 5), generator=torch.Generator().manual_seed(4))
    ref = collaboration_gradient_reference(net, x, label)
    exact = collaboration_cosines(net, x, label, mode="exact", chunk_size=12)  # auto: forward (16 <= 2 * 20)
    torch.testing.assert_close(exact, ref, rtol=0, atol=1e-4)
    reverse = collaboration_cosines(net, x, label, mode="exact", chunk_size=8, exact_method="reverse")
    torch.testing.assert_close(reverse, ref, rtol=0, atol=1e-4)
    pixels = torch.tensor([0, 3, 7, 19])
    at = collaboration_gradient(net, x, label, mode="exact", pixels=pixels, chunk_size=3)  # reverse on 4 pixels
    torch.testing.assert_close(at, ref.flatten(1)[:, pixels], rtol=0, atol=1e-4)
    own = collaboration_cosines(net, x, mode="exact")
    assert not torch.allclose(own, exact)  # the label matters


def rank_one_summed_reference(net, x):
    """
    The summed mode written out: per pair, the summed losses' gradients w.r.t. Conv1_l as rank-one terms
    g_k(q) a(q)^T, their cosine position by position, resized to the output grid and summed.
    """
    with torch.enable_grad():
        out = net.forward_explained(x)
        y = out.logits.argmax(1)
        totals = [F.cross_entropy(out.to_output_grid(h.prediction), y, reduction="sum") for h in out.heads]
        u = 0
        for l in range(len(out.heads) - 1):
            h = out.heads[l]
            weight = h.head.conv1.weight
            maps = []
            for k in (l, l + 1):
                (g,) = torch.autograd.grad(totals[k], h.hidden, retain_graph=True)
                g = g * (h.hidden > 0)
                terms = torch.einsum("bcs,bjs->bscj", g.flatten(2), h.features.flatten(2))  # per-position terms
                (full,) = torch.autograd.grad(totals[k], weight, retain_graph=True)
                torch.testing.assert_close(terms.sum((0, 1)), full.flatten(1))  # the decomposition is exact
                maps.append(terms.flatten(2))
            a, b = maps
            cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-20)
            u = u + out.to_output_grid(cos.view(x.shape[0], 1, *h.hidden.shape[2:]))
    return u.detach()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_summed_mode_is_the_rank_one_cosine(spatial_dims):
    net = tiny_eunet(spatial_dims, seed=5)
    x = torch.randn(2, 1, *SHAPES[spatial_dims], dtype=torch.float64)
    summed = collaboration_cosines(net, x, mode="summed")
    torch.testing.assert_close(summed, rank_one_summed_reference(net, x), rtol=0, atol=1e-8)
    assert summed.abs().max() <= len(net.heads) - 1 + 1e-9


@pytest.mark.parametrize("mode", ["summed", "sketch", "exact"])
def test_uncertainty_range_no_grad_and_network_untouched(mode):
    net = EUNet(3, 1, 2, channels=(3, 4, 5, 6)).eval()  # 3 heads: 2 pairs
    net.encoder.requires_grad_(False)  # a partly frozen network keeps its flags
    flags = [p.requires_grad for p in net.parameters()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 1, 8, 6, 5) if mode != "exact" else torch.rand(1, 1, 4, 3, 2)  # exact: tiny
    with torch.no_grad():
        u = collaboration_gradient(net, x, mode=mode, num_probes=8)
    assert u.shape == (x.shape[0], 1, *x.shape[2:]) and not u.requires_grad
    assert u.min() >= -2 - 1e-6 and u.max() <= 2 + 1e-6 and u.std() > 0
    unit = collaboration_to_unit(u, 2)
    torch.testing.assert_close(unit, (u + 2) / 4)  # the paper's orientation kept: order unchanged
    assert unit.min() >= 0 and unit.max() <= 1
    assert not net.training
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_outputs_come_from_the_same_forward_pass():
    net = tiny_eunet(2, seed=0, dtype=torch.float32)
    x = torch.rand(1, 1, 9, 6)
    outputs, cos = collaboration_outputs(net, x, mode="summed")
    with torch.no_grad():
        torch.testing.assert_close(outputs.logits, net(x))
    assert not outputs.logits.requires_grad and not outputs.heads[0].features.requires_grad
    torch.testing.assert_close(cos, collaboration_cosines(net, x, mode="summed"))


def test_errors():
    plain = UNet(2, 1, 2, channels=(3, 4, 5)).eval()
    with pytest.raises(ValueError, match="at least 2 MHEX"):
        collaboration_gradient(plain, torch.rand(1, 1, 8, 8))
    net = tiny_eunet(2, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="mode"):
        collaboration_gradient(net, torch.rand(1, 1, 8, 8), mode="slow")
    with pytest.raises(ValueError, match="exact_method"):
        collaboration_gradient(net, torch.rand(1, 1, 8, 8), mode="exact", exact_method="finite-differences")
    with pytest.raises(ValueError, match="label shape"):
        collaboration_gradient(net, torch.rand(1, 1, 8, 8), label=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="label values"):
        collaboration_gradient(net, torch.rand(1, 1, 8, 8), label=torch.full((1, 1, 8, 8), 5))
    with pytest.raises(ValueError, match="pixels"):
        collaboration_gradient(net, torch.rand(1, 1, 8, 8), mode="sketch", pixels=torch.tensor([0]))
    with pytest.raises(ValueError, match="pixels must be flat indices"):
        collaboration_gradient(net, torch.rand(1, 1, 8, 8), mode="exact", pixels=torch.tensor([64]))
    with pytest.raises(ValueError, match="num_probes .* exceeds"):
        collaboration_gradient(net, torch.rand(1, 1, 8, 8), probes="orthogonal", num_probes=1000)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_orthogonal_sketch_with_every_direction_equals_exact(spatial_dims):
    net = tiny_eunet(spatial_dims, seed=6)
    x = torch.randn(2, 1, *SHAPES[spatial_dims], dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    exact = collaboration_gradient(net, x, mode="exact")
    n = max(h.conv1.weight.numel() for h in net.heads[:-1])
    for h in net.heads[:-1]:
        assert h.conv1.weight.numel() == n  # the test's premise: one probe count spans every pair's weight space
    sketch = collaboration_gradient(net, x, mode="sketch", probes="orthogonal", num_probes=n, seed=3)
    torch.testing.assert_close(sketch, exact, rtol=0, atol=1e-10)
    fewer = collaboration_gradient(net, x, mode="sketch", probes="orthogonal", num_probes=n // 2, seed=3)
    assert (fewer - exact).abs().max() > 1e-3  # a subspace is not the whole space


def _inner_products(net, x, probes, pair=0):
    own, nxt = gradient_projections(net, x, pair, probes)
    return (own * nxt).mean(0)  # (1/k) sum_j <a, v_j> <b, v_j>


def test_gaussian_sketch_inner_product_is_unbiased_and_error_halves_when_k_quadruples():
    net = tiny_eunet(2, seed=7, channels=(4, 4, 5))  # Conv1 of the deepest head: 4 x 4 = 16 weights
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    n = net.heads[0].conv1.weight.numel()
    exact = _inner_products(net, x, torch.eye(n, dtype=torch.float64)) * n  # identity probes: the true <a, b>
    seeds = 200
    est = torch.stack([_inner_products(net, x, sketch_probes(n, 4, seed=s, dtype=torch.float64)) for s in range(seeds)])
    se = est.std(0) / seeds**0.5
    z = (est.mean(0) - exact).abs() / se.clamp_min(1e-30)
    assert (z < 3).float().mean() >= 0.9  # unbiased: the mean over seeds within 3 standard errors (heavy tails: 0.9)
    rms = {}
    for k in (4, 16, 64):
        err = torch.stack(
            [_inner_products(net, x, sketch_probes(n, k, seed=s, dtype=torch.float64)) - exact for s in range(40)]
        )
        rms[k] = err.pow(2).mean().sqrt()
    for k in (4, 16):
        assert 0.35 < rms[4 * k] / rms[k] < 0.65, rms  # 1 / sqrt(k): a quarter of the variance, half the error


@pytest.mark.parametrize("out_channels", [1, 2])
def test_binary_outputs_make_u_label_invariant(out_channels):
    torch.manual_seed(8)
    net = EUNet(2, 1, out_channels, channels=(3, 4, 5), norm="instance").double().eval()
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    zeros = torch.zeros(1, 1, 5, 6, dtype=torch.long)
    ones = torch.ones(1, 1, 5, 6, dtype=torch.long)
    mixed = torch.randint(0, 2, (1, 1, 5, 6), generator=torch.Generator().manual_seed(8))
    u = [collaboration_gradient(net, x, y, mode="exact") for y in (zeros, ones, mixed, None)]
    for other in u[1:]:
        torch.testing.assert_close(other, u[0], rtol=0, atol=1e-9)


def test_three_classes_make_u_depend_on_the_label():
    net = tiny_eunet(2, seed=9)
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    u = [collaboration_gradient(net, x, torch.full((1, 1, 5, 6), c), mode="exact") for c in range(3)]
    assert (u[0] - u[1]).abs().max() > 1e-2 and (u[1] - u[2]).abs().max() > 1e-2
