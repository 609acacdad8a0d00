"""
The contract every network of the family must keep, as reusable checks: each architecture's test module
calls these with its own small configuration, so all ten networks are held to the same rules.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import nn

from eunets_monai.networks.nets.base import EUNetBase

NetFactory = Callable[..., EUNetBase]  # (spatial_dims, mhex) -> network


def odd_shape(spatial_dims: int) -> tuple[int, ...]:
    """Sizes no power of two divides, like the hippocampus volumes (35x50x36)."""
    return (35, 50) if spatial_dims == 2 else (19, 26, 17)


def check_output_forms(net: EUNetBase, shape: tuple[int, ...], batch: int = 2) -> None:
    """Eval: one logits tensor at the input size. Train: a list [logits, *deep predictions] if EU, else a tensor."""
    x = torch.rand(batch, net.in_channels, *shape)
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (batch, net.out_channels, *shape)
    net.train()
    y = net(x)
    if net.mhex:
        assert isinstance(y, list) and len(y) == len(net.heads) + 1
        for t in y:
            assert t.shape == (batch, net.out_channels, *shape)
    else:
        assert isinstance(y, torch.Tensor) and y.shape == (batch, net.out_channels, *shape)


def check_gradients(net: EUNetBase, shape: tuple[int, ...]) -> None:
    """A training step's loss reaches every parameter with a finite, non-zero gradient."""
    torch.manual_seed(0)
    net.train()
    y = net(torch.rand(2, net.in_channels, *shape))
    outputs = y if isinstance(y, list) else [y]
    loss = sum((o - torch.randn_like(o)).pow(2).mean() for o in outputs)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient on {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient on {name}"


def check_heads_feed_decoder(net: EUNetBase, shape: tuple[int, ...]) -> None:
    """Head l+1's deep prediction depends on head l's Conv1: the gated features feed the decoder path."""
    net.eval()
    out = net.forward_explained(torch.rand(1, net.in_channels, *shape))
    assert len(out.heads) == len(net.heads) >= 2
    for l in range(len(out.heads) - 1):
        later = out.heads[l + 1].prediction.sum()
        (g,) = torch.autograd.grad(later, out.heads[l].head.conv1.weight, retain_graph=True)
        assert g.abs().sum() > 0, f"head {l + 1} does not depend on head {l}'s Conv1"


def check_torchscript(net: EUNetBase, shape: tuple[int, ...]) -> None:
    """Trace in eval mode, save, load, and get the same logits."""
    net.eval()
    x = torch.rand(1, net.in_channels, *shape)
    traced = torch.jit.trace(net, x)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)


def check_seeded_init(factory: Callable[[], nn.Module]) -> None:
    """The same seed gives the same weights; another seed gives different ones."""
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        states.append(factory().state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key])
    assert any(not torch.equal(v, states[2][k]) for k, v in states[0].items() if v.is_floating_point())


def check_explained_matches_forward(net: EUNetBase, shape: tuple[int, ...]) -> None:
    """``forward_explained`` returns the eval logits and, per head, maps on the head's own grid."""
    net.eval()
    x = torch.rand(1, net.in_channels, *shape)
    with torch.no_grad():
        out = net.forward_explained(x)
        torch.testing.assert_close(out.logits, net(x))
    if net.mhex:
        for h in out.heads:
            assert h.features.shape[2:] == h.prediction.shape[2:]
            assert h.prediction.shape[1] == net.out_channels
            assert h.features.shape[1] == h.head.conv1.weight.shape[1]
        for p in out.deep_predictions():
            assert p.shape == out.logits.shape


def check_all(factory: NetFactory, spatial_dims: int) -> None:
    """Every contract check for one architecture in one dimensionality, plain and EU."""
    shape = odd_shape(spatial_dims)
    for mhex in (False, True):
        torch.manual_seed(0)
        net = factory(spatial_dims, mhex)
        assert net.mhex == mhex and net.spatial_dims == spatial_dims
        check_output_forms(net, shape)
        check_gradients(net, shape)
        check_explained_matches_forward(net, shape)
        check_torchscript(net, shape)
        if mhex:
            check_heads_feed_decoder(net, shape)
    check_seeded_init(lambda: factory(spatial_dims, True))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def pinned_output_stats(net, spatial_dims: int) -> list[float]:
    """Sum, sum of squares and a strided sum of the eval logits of a seeded input (to pin outputs across changes)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, *((12, 20) if spatial_dims == 2 else (8, 12, 8)), generator=g)
    with torch.no_grad():
        y = net.eval()(x).double()
    return [y.sum().item(), (y * y).sum().item(), y.flatten()[::37].sum().item()]


def skip_attention_modes(net) -> set:
    """The ``attention`` option of every skip cross-attention block of ``net``."""
    from eunets_monai.networks.blocks.attention import SkipCrossAttention

    return {m.attention for m in net.modules() if isinstance(m, SkipCrossAttention)}
