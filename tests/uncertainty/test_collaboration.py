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
    collaboration_cosines,
    collaboration_cosines_reference,
    collaboration_gradient,
    collaboration_gradient_reference,
    collaboration_outputs,
    cosines_to_uncertainty,
)

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
    fast = collaboration_gradient(net, x)
    assert fast.shape == (1, 1, 4, 5) and fast.min() >= 0 and fast.max() <= 1


def test_exact_mode_float32_batch_and_ground_truth_label():
    net = tiny_eunet(2, seed=3, channels=(4, 5, 6), dtype=torch.float32)
    x = torch.randn(2, 1, 4, 5, generator=torch.Generator().manual_seed(3))
    label = torch.randint(0, 3, (2, 1, 4, 5), generator=torch.Generator().manual_seed(4))
    u_ref = collaboration_gradient_reference(net, x, label)
    ref = 1 - 2 * u_ref  # one pair: uncertainty = (L - 1 - U) / (2 (L - 1)) = (1 - U) / 2
    exact = collaboration_cosines(net, x, label, mode="exact", chunk_size=12)  # auto: forward (16 <= 2 * 20)
    torch.testing.assert_close(exact, ref, rtol=0, atol=1e-4)
    reverse = collaboration_cosines(net, x, label, mode="exact", chunk_size=8, exact_method="reverse")
    torch.testing.assert_close(reverse, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(collaboration_gradient(net, x, label, mode="exact"), u_ref, rtol=0, atol=1e-4)
    own = collaboration_cosines(net, x, mode="exact")
    assert not torch.allclose(own, exact)  # the label matters


def rank_one_fast_reference(net, x):
    """
    The fast mode written out: per pair, the summed losses' gradients w.r.t. Conv1_l as rank-one terms
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
def test_fast_mode_is_the_rank_one_cosine(spatial_dims):
    net = tiny_eunet(spatial_dims, seed=5)
    x = torch.randn(2, 1, *SHAPES[spatial_dims], dtype=torch.float64)
    fast = collaboration_cosines(net, x, mode="fast")
    torch.testing.assert_close(fast, rank_one_fast_reference(net, x), rtol=0, atol=1e-8)
    assert fast.abs().max() <= len(net.heads) - 1 + 1e-9


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_uncertainty_range_no_grad_and_network_untouched(mode):
    net = EUNet(3, 1, 2, channels=(3, 4, 5, 6)).eval()  # 3 heads: 2 pairs
    net.encoder.requires_grad_(False)  # a partly frozen network keeps its flags
    flags = [p.requires_grad for p in net.parameters()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 1, 8, 6, 5) if mode == "fast" else torch.rand(1, 1, 4, 3, 2)  # exact: tiny
    with torch.no_grad():
        u = collaboration_gradient(net, x, mode=mode)
        cos = collaboration_cosines(net, x, mode=mode)
    assert u.shape == (x.shape[0], 1, *x.shape[2:]) and not u.requires_grad
    assert u.min() >= 0 and u.max() <= 1 and u.std() > 0
    torch.testing.assert_close(u, cosines_to_uncertainty(cos, 2))
    torch.testing.assert_close(u, ((2 - cos) / 4).clamp(0, 1))
    assert not net.training
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_outputs_come_from_the_same_forward_pass():
    net = tiny_eunet(2, seed=0, dtype=torch.float32)
    x = torch.rand(1, 1, 9, 6)
    outputs, cos = collaboration_outputs(net, x, mode="fast")
    with torch.no_grad():
        torch.testing.assert_close(outputs.logits, net(x))
    assert not outputs.logits.requires_grad and not outputs.heads[0].features.requires_grad
    torch.testing.assert_close(cos, collaboration_cosines(net, x))


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
