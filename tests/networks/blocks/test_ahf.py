import itertools

import pytest
import torch

from eunets_monai.networks.blocks.ahf import (
    AHFUpBlock,
    DecoderAttentionFusion,
    EncoderAttentionFusion,
    HierarchicalAttentionSkip,
    encoder_attention_map,
)


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights and norm statistics, eval mode: every term of the equations then matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return module.eval()


# ---- slow references -------------------------------------------------------------------------------------------


def slow_eaf(x):
    """A[b, c, p] = (mean over positions q of x[b, c, q]) * (mean over channels k of x[b, k, p])."""
    out = torch.zeros_like(x)
    batch, channels = x.shape[:2]
    for b, c in itertools.product(range(batch), range(channels)):
        for p in itertools.product(*(range(s) for s in x.shape[2:])):
            out[(b, c, *p)] = x[b, c].mean() * x[(b, slice(None), *p)].mean()
    return out


def slow_conv2d(x, weight, bias):
    """3x3, stride 1, zero padding 1: out[o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] x[c, i + u - 1, j + v - 1]."""
    batch, channels, height, width = x.shape
    out = torch.zeros(batch, weight.shape[0], height, width)
    for b, o, i, j in itertools.product(range(batch), range(weight.shape[0]), range(height), range(width)):
        total = bias[o].clone()
        for c, u, v in itertools.product(range(channels), range(3), range(3)):
            if 0 <= i + u - 1 < height and 0 <= j + v - 1 < width:
                total += weight[o, c, u, v] * x[b, c, i + u - 1, j + v - 1]
        out[b, o, i, j] = total
    return out


def slow_transposed_conv2d(x, weight, bias):
    """3x3, stride 2, padding 1, output padding 1: input (p, q) adds w[c, o, u, v] x[c, p, q] at (2p+u-1, 2q+v-1)."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[1]
    out = bias.view(1, -1, 1, 1).repeat(batch, 1, 2 * height, 2 * width)
    for b, c, p, q, u, v in itertools.product(
        range(batch), range(channels), range(height), range(width), range(3), range(3)
    ):
        i, j = 2 * p + u - 1, 2 * q + v - 1
        if 0 <= i < 2 * height and 0 <= j < 2 * width:
            for o in range(out_channels):
                out[b, o, i, j] += weight[c, o, u, v] * x[b, c, p, q]
    return out


def slow_pointwise(x, weight):
    """1x1 conv without bias: out[b, o, ...] = sum_c w[o, c] x[b, c, ...]."""
    w = weight.flatten(1)
    return torch.stack([sum(w[o, c] * x[:, c] for c in range(x.shape[1])) for o in range(w.shape[0])], dim=1)


def slow_batch_norm_eval(x, bn):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)


def slow_channel_norm(x, gn):
    """One-group group norm of (B, C, 1, ...): per sample, across channels, biased variance."""
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        v = x[b].flatten()
        mean = v.sum() / v.numel()
        var = ((v - mean) ** 2).sum() / v.numel()
        normed = (x[b] - mean) / torch.sqrt(var + gn.eps)
        out[b] = normed * gn.weight.view(-1, *([1] * (x.ndim - 2))) + gn.bias.view(-1, *([1] * (x.ndim - 2)))
    return out


def slow_daf(daf, e, u, f):
    z = e + u + f
    l0, l1 = daf.local_att
    local = slow_batch_norm_eval(slow_pointwise(z, l0.conv.weight), l0.adn.N).clamp(min=0)
    local = slow_batch_norm_eval(slow_pointwise(local, l1.conv.weight), l1.adn.N)
    _, g0, g1 = daf.global_att
    pooled = z.mean(dim=tuple(range(2, z.ndim)), keepdim=True)
    glob = slow_channel_norm(slow_pointwise(pooled, g0.conv.weight), g0.adn.N).clamp(min=0)
    glob = slow_channel_norm(slow_pointwise(glob, g1.conv.weight), g1.adn.N)
    w = 1 / (1 + torch.exp(-(local + glob)))
    return 2 * e * w + 2 * u * (1 - w), w


# ---- tests -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 4, 2)])
def test_encoder_attention_map_matches_definition(shape):
    x = torch.randn(*shape)
    torch.testing.assert_close(encoder_attention_map(x), slow_eaf(x))
    torch.testing.assert_close(EncoderAttentionFusion()(x), slow_eaf(x))


def test_hae_matches_slow_computation():
    hae = randomise(HierarchicalAttentionSkip(2, channels=2, deeper_channels=3))
    torch.manual_seed(0)
    skip, att, deeper = torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 3, 3, 2)
    up = slow_transposed_conv2d(deeper, hae.up.conv.weight, hae.up.conv.bias)
    expected = slow_conv2d(att + up, hae.conv.conv.weight, hae.conv.conv.bias).clamp(min=0) * skip
    with torch.no_grad():
        torch.testing.assert_close(hae.up(deeper), up)
        torch.testing.assert_close(hae(skip, att, deeper), expected)


def test_hae_doubles_odd_sizes_3d():
    hae = HierarchicalAttentionSkip(3, channels=2, deeper_channels=4)
    out = hae(torch.rand(1, 2, 10, 6, 14), torch.rand(1, 2, 10, 6, 14), torch.rand(1, 4, 5, 3, 7))
    assert out.shape == (1, 2, 10, 6, 14)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_daf_matches_slow_computation(spatial_dims):
    daf = randomise(DecoderAttentionFusion(spatial_dims, channels=8, reduction=4))
    torch.manual_seed(0)
    e, u, f = (torch.randn(2, 8, *([3] * spatial_dims)) for _ in range(3))
    expected, w = slow_daf(daf, e, u, f)
    with torch.no_grad():
        torch.testing.assert_close(daf.coefficients(e, u, f), w)
        torch.testing.assert_close(daf(e, u, f), expected)
    assert ((w > 0) & (w < 1)).all()


def test_daf_fuses_equal_inputs_to_twice_the_input():
    # 2 E W + 2 U (1 - W) = 2 E whatever the coefficients when E == U
    daf = randomise(DecoderAttentionFusion(2, channels=4))
    e, f = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(daf(e, e.clone(), f), 2 * e)


def test_daf_global_branch_works_for_batch_size_one_in_training():
    daf = DecoderAttentionFusion(3, channels=8).train()
    out = daf(*(torch.rand(1, 8, 4, 4, 4) for _ in range(3)))
    out.sum().backward()
    assert daf.global_att[1].conv.weight.grad.abs().sum() > 0


def test_daf_tiny_width_keeps_two_hidden_channels():
    daf = DecoderAttentionFusion(2, channels=4, reduction=4)
    assert daf.global_att[1].conv.out_channels == 2 and daf.local_att[0].conv.out_channels == 2


def test_up_block_composes_upsample_fusion_conv():
    block = randomise(AHFUpBlock(2, in_channels=8, out_channels=4, residual=True))
    x, e, f = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        expected = block.conv(block.fusion(e, block.upsample(x), f))
        torch.testing.assert_close(block(x, e, f), expected)
    assert block(x, e, f).shape == (2, 4, 6, 6)
    assert type(block.conv).__name__ == "ResidualDoubleConv"
