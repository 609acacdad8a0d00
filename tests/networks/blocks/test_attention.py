"""Each attention/positional-encoding equation against a direct, slow computation on tiny inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

from eunets_monai.networks.blocks.attention import (
    BottleneckSelfAttention,
    ImprovedSkip,
    SkipCrossAttention,
    add_positional_encoding,
    grid_positional_encoding,
    multihead_attention,
    reduce_grid,
    resolve_attention,
    sinusoidal_encoding_1d,
)


def box1(position: float, i: int, d_model: int) -> float:
    """Paper 003 Box 1, one entry: even columns sin, odd columns cos, frequency 10000^(-2*(i//2)/d_model)."""
    angle = position * math.exp(2 * (i // 2) * -(math.log(10000.0) / d_model))
    return math.sin(angle) if i % 2 == 0 else math.cos(angle)


def test_box1_encoding_matches_entrywise_formula():
    pe = sinusoidal_encoding_1d(torch.arange(7), 6)
    assert pe.shape == (7, 6)
    for p, i in itertools.product(range(7), range(6)):
        assert pe[p, i].item() == pytest.approx(box1(p, i, 6), abs=1e-6)


def test_box1_rejects_odd_width():
    with pytest.raises(ValueError, match="even width"):
        sinusoidal_encoding_1d(torch.arange(3), 5)


def slow_axes_encoding(shape, channels):
    """Loop over every voxel: axis a owns a contiguous channel group of even width, Box 1 of that coordinate."""
    ndim, pairs = len(shape), channels // 2
    widths = [2 * (pairs // ndim + (1 if a < pairs % ndim else 0)) for a in range(ndim)]
    out = torch.zeros(channels, *shape)
    for voxel in itertools.product(*(range(s) for s in shape)):
        start = 0
        for axis, width in enumerate(widths):
            for i in range(width):
                out[(start + i, *voxel)] = box1(voxel[axis], i, width)
            start += width
    return out


@pytest.mark.parametrize("shape,channels", [((3, 5), 8), ((4, 3), 7), ((3, 4, 2), 12), ((2, 3, 5), 10), ((2, 2, 3), 5)])
def test_axes_encoding_matches_slow_loop(shape, channels):
    torch.testing.assert_close(grid_positional_encoding(shape, channels), slow_axes_encoding(shape, channels))


def test_sequence_encoding_is_box1_on_the_raster_index():
    shape, channels = (3, 4, 2), 6
    pe = grid_positional_encoding(shape, channels, mode="sequence")
    for index, voxel in enumerate(itertools.product(*(range(s) for s in shape))):
        for i in range(channels):
            assert pe[(i, *voxel)].item() == pytest.approx(box1(index, i, channels), abs=1e-5)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
@pytest.mark.parametrize("shape,channels", [((3, 5), 8), ((3, 4, 2), 12)])
def test_axes_encoding_equals_monai_sincos_up_to_channel_order(shape, channels):
    # MONAI: [sin(w), cos(w), sin(h), cos(h)(, sin(d), cos(d))] with meshgrid 'ij' (h = axis 0, w = axis 1).
    ndim = len(shape)
    monai = build_sincos_position_embedding(list(shape), channels, spatial_dims=ndim).detach()[0]  # (N, C)
    monai = monai.t().reshape(channels, *shape)
    ours = grid_positional_encoding(shape, channels)
    per = channels // ndim
    half = per // 2
    monai_axis_order = [1, 0, 2][:ndim]
    for block, axis in enumerate(monai_axis_order):
        sin, cos = monai[block * per : block * per + half], monai[block * per + half : (block + 1) * per]
        torch.testing.assert_close(ours[axis * per : (axis + 1) * per : 2], sin)
        torch.testing.assert_close(ours[axis * per + 1 : (axis + 1) * per : 2], cos)


def test_axes_encoding_of_a_voxel_does_not_depend_on_grid_size():
    small, large = grid_positional_encoding((3, 4, 5), 12), grid_positional_encoding((6, 9, 7), 12)
    torch.testing.assert_close(small, large[:, :3, :4, :5])


def test_add_positional_encoding_and_bad_mode():
    x = torch.rand(2, 6, 3, 5)
    expected = grid_positional_encoding((3, 5), 6).expand(2, -1, -1, -1)
    torch.testing.assert_close(add_positional_encoding(x) - x, expected)
    with pytest.raises(ValueError, match="mode must be one of"):
        grid_positional_encoding((3, 5), 6, mode="learned")


def slow_attention(q, k, v, num_heads, scale=None):
    """Eq. 8 and AV of eq. 5 with explicit loops: per batch, head and query a softmax-weighted sum of values."""
    b, n, d = q.shape
    dh, dvh = d // num_heads, v.shape[2] // num_heads
    scale = 1 / math.sqrt(dh) if scale is None else scale
    m = k.shape[1]
    out = torch.zeros(b, n, v.shape[2], dtype=torch.float64)
    for bi, h, i in itertools.product(range(b), range(num_heads), range(n)):
        logits = [
            scale * sum(q[bi, i, h * dh + c].item() * k[bi, j, h * dh + c].item() for c in range(dh)) for j in range(m)
        ]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        total = sum(weights)
        for c in range(dvh):
            out[bi, i, h * dvh + c] = sum(w / total * v[bi, j, h * dvh + c].item() for j, w in enumerate(weights))
    return out.float()


@pytest.mark.parametrize("num_heads,keys", [(1, 5), (2, 5), (2, 3)])
def test_multihead_attention_matches_slow_loops(num_heads, keys):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, keys, 4), torch.randn(2, keys, 6)
    torch.testing.assert_close(multihead_attention(q, k, v, num_heads), slow_attention(q, k, v, num_heads))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        multihead_attention(q, k, v, num_heads=3)


def tokens(x):
    return x.flatten(2).transpose(1, 2)


def slow_max_pool(x):
    """2x max-pooling with explicit windows (2D or 3D)."""
    shape = [s // 2 for s in x.shape[2:]]
    out = torch.empty(*x.shape[:2], *shape)
    for voxel in itertools.product(*(range(s) for s in shape)):
        window = x[(..., *(slice(2 * p, 2 * p + 2) for p in voxel))]
        out[(..., *voxel)] = window.flatten(2).max(dim=2).values
    return out


def slow_reduce(x, size):
    """Average over explicit cells: cell i of an axis of length L covers floor(i L / s) .. ceil((i + 1) L / s) - 1."""
    shape = x.shape[2:]
    target = [min(n, size) for n in shape]
    out = torch.empty(*x.shape[:2], *target)
    for cell in itertools.product(*(range(s) for s in target)):
        window = tuple(slice(i * n // s, -(-(i + 1) * n // s)) for i, n, s in zip(cell, shape, target))
        out[(..., *cell)] = x[(..., *window)].flatten(2).mean(dim=2)
    return out


def reference_mhca(m: SkipCrossAttention, y, skip, heads):
    """
    MHCA written out: S' = S + P(S), V = r(op1(S')) W_V, Q = q_in(Y') W_Q, K = r(q_in(Y')) W_K, G = up(gate(AV)),
    out = G * S('), with r the identity (global) or the explicit cell average (reduced).
    """
    reduce = (lambda g: slow_reduce(g, m.kv_size)) if m.attention == "reduced" else (lambda g: g)
    skip_pe = skip + slow_axes_encoding(skip.shape[2:], skip.shape[1])
    y_pe = y + slow_axes_encoding(y.shape[2:], y.shape[1])
    value_grid = m.value_in(slow_max_pool(skip_pe))
    qk_grid = m.query_in(y_pe) if m.query_in is not None else y_pe
    qk, k_src, v_src = tokens(qk_grid), tokens(reduce(qk_grid)), tokens(reduce(value_grid))
    q, k, v = qk @ m.w_q.weight.t(), k_src @ m.w_k.weight.t(), v_src @ m.w_v.weight.t()
    z = slow_attention(q, k, v, heads).transpose(1, 2).reshape(y.shape[0], -1, *y.shape[2:])
    mode = "bilinear" if y.ndim == 4 else "trilinear"
    gate = F.interpolate(m.gate(z), size=skip.shape[2:], mode=mode, align_corners=False)
    return gate, gate * (skip_pe if m.gate_encoded else skip)


def randomise_norms(module):
    """Non-trivial eval-mode batch-norm statistics so the reference really exercises them."""
    for mod in module.modules():
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return module.eval()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_transformer_mhca_sigmoid_gate_matches_reference(spatial_dims):
    torch.manual_seed(0)
    m = randomise_norms(SkipCrossAttention(spatial_dims, skip_channels=4, query_channels=6, num_heads=2))
    grid = (2, 3) if spatial_dims == 2 else (2, 2, 1)
    y, skip = torch.randn(2, 6, *grid), torch.randn(2, 4, *(2 * g for g in grid))
    with torch.no_grad():
        gate, expected = reference_mhca(m, y, skip, 2)
        out = m(y, skip)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert ((gate > 0) & (gate < 1)).all(), "the U-Net Transformer gate is a sigmoid map"
    with torch.no_grad():
        assert m(y, torch.zeros_like(skip)).abs().max() == 0, "MHCA only filters the skip, it adds nothing to it"


@pytest.mark.parametrize("spatial_dims,grid", [(2, (7, 5)), (3, (5, 3, 4))])
def test_reduced_mhca_matches_reference(spatial_dims, grid):
    # kv_size 2: axes of 3, 4, 5, 7 are pooled into overlapping / uneven cells, so the cell bounds are exercised
    torch.manual_seed(3)
    m = SkipCrossAttention(spatial_dims, skip_channels=4, query_channels=6, num_heads=2, attention="reduced", kv_size=2)
    m = randomise_norms(m)
    y, skip = torch.randn(2, 6, *grid), torch.randn(2, 4, *(2 * g for g in grid))
    with torch.no_grad():
        _, expected = reference_mhca(m, y, skip, 2)
        out = m(y, skip)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        m.attention = "global"
        assert not torch.allclose(m(y, skip), out, atol=1e-4), "the reduction must change a grid over the budget"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_reduced_equals_global_within_the_budget(spatial_dims):
    torch.manual_seed(4)
    grid = (4, 3) if spatial_dims == 2 else (4, 3, 2)
    y, skip = torch.randn(1, 8, *grid), torch.randn(1, 4, *(2 * g for g in grid))
    kwargs = {"skip_channels": 4, "query_channels": 8, "num_heads": 2}
    fast = SkipCrossAttention(spatial_dims, attention="reduced", kv_size=4, **kwargs).eval()
    paper = SkipCrossAttention(spatial_dims, attention="global", **kwargs).eval()
    paper.load_state_dict(fast.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast(y, skip), paper(y, skip))


@pytest.mark.parametrize("shape,size", [((7, 5), 3), ((5, 3, 4), 2), ((9, 8, 6), 4), ((3, 2, 4), 8)])
def test_reduce_grid_matches_explicit_cells(shape, size):
    x = torch.randn(2, 3, *shape)
    out = reduce_grid(x, size)
    assert out.shape[2:] == tuple(min(s, size) for s in shape)
    torch.testing.assert_close(out, slow_reduce(x, size))


def test_attention_modes_resolve():
    assert resolve_attention("auto", 2) == "global" and resolve_attention("auto", 3) == "reduced"
    assert SkipCrossAttention(3, 4, 8).attention == "global", "the block itself keeps the papers' default"
    assert ImprovedSkip(3, 4, 8, attention="auto").cross.attention == "reduced"
    with pytest.raises(ValueError, match="attention must be 'auto' or one of"):
        SkipCrossAttention(2, 4, 8, attention="window")
    with pytest.raises(ValueError, match="kv_size must be a positive"):
        SkipCrossAttention(3, 4, 8, attention="reduced", kv_size=0)


def test_attention_never_materialises_the_weights():
    # 4096 queries x 4096 keys x 2 heads would be a 128 MiB float32 weight matrix; the fused kernel works in blocks
    n, heads = 4096, 2
    q, k, v = (torch.randn(1, n, 8, requires_grad=True) for _ in range(3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        multihead_attention(q, k, v, heads).sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.key_averages())
    assert 0 < largest < n * n * heads * 4 / 16


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_efen_improved_skip_matches_eq5(spatial_dims):
    torch.manual_seed(1)
    r = randomise_norms(ImprovedSkip(spatial_dims, skip_channels=4, decoder_channels=6))
    grid = (3, 2) if spatial_dims == 2 else (1, 2, 2)
    fd, fe = torch.randn(2, 6, *grid), torch.randn(2, 4, *(2 * g for g in grid))
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    with torch.no_grad():
        gate, gated = reference_mhca(r.cross, fd, fe, 1)  # Q, K = FD' W_Q / W_K, gate * FE'
        fd_pe = fd + slow_axes_encoding(grid, 6)
        op3 = r.op3(F.interpolate(fd_pe, size=fe.shape[2:], mode=mode, align_corners=False))
        expected = torch.cat([gated, op3], dim=1)
        out = r(fe, fd)
    assert r.cross.query_in is None and r.cross.gate_encoded
    assert (gate >= 0).all(), "EFEN's op2 ends in ReLU"
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3), (2, 1, 3)])
def test_bottleneck_self_attention_matches_reference(shape):
    torch.manual_seed(2)
    m = BottleneckSelfAttention(len(shape), channels=4, num_heads=2).eval()
    x = torch.randn(2, 4, *shape)
    with torch.no_grad():
        t = tokens(x + slow_axes_encoding(shape, 4))
        q, k, v = (t @ w.t() for w in m.qkv.weight.chunk(3, dim=0))
        expected = slow_attention(q, k, v, 2) @ m.out_proj.weight.t() + m.out_proj.bias
        expected = expected.transpose(1, 2).reshape(x.shape)
        torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)


def test_mhca_errors_are_clear():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SkipCrossAttention(2, skip_channels=6, query_channels=8, num_heads=4)
    with pytest.raises(ValueError, match="pe_mode"):
        SkipCrossAttention(2, 4, 8, pe_mode="rope")
    m = SkipCrossAttention(2, 4, 8)
    with pytest.raises(ValueError, match="twice the decoder's spatial size"):
        m(torch.rand(1, 8, 4, 4), torch.rand(1, 4, 6, 8))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        BottleneckSelfAttention(2, 6, num_heads=4)
