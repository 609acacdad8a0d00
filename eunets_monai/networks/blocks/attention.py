"""
Attention and positional-encoding blocks shared by the U-Net Transformer (Petit et al. 2021) and EFEN (paper 003),
2D and 3D:

- :py:func:`sinusoidal_encoding_1d`: the sine/cosine encoding of paper 003, Box 1.
- :py:func:`grid_positional_encoding`: that encoding for the actual feature grid, per spatial axis or over the
  flattened (raster) sequence of positions; computed for whatever size arrives, so padded inputs of any size work.
- :py:func:`multihead_attention`: softmax(Q K^T / sqrt(d_k)) V split over heads (paper 003 eq. 8 and the AV of eq. 5).
- :py:class:`SkipCrossAttention`: the multi-head cross-attention (MHCA) that filters a skip connection with the
  coarser decoder features (U-Net Transformer's sigmoid gate; EFEN's ``FE' * op2(AV)`` of eqs. 5-9), attending
  globally (the papers) or, for 3D volumes, to keys/values average-pooled onto a small grid (``"reduced"``,
  :py:func:`reduce_grid`), whose cost grows linearly with the number of voxels.
- :py:class:`ImprovedSkip`: EFEN's improved skip connection R(FE', FD'), eq. 5.
- :py:class:`BottleneckSelfAttention`: the U-Net Transformer's multi-head self-attention (MHSA) with positional
  encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

__all__ = [
    "BottleneckSelfAttention",
    "ImprovedSkip",
    "SkipCrossAttention",
    "add_positional_encoding",
    "grid_positional_encoding",
    "multihead_attention",
    "reduce_grid",
    "resolve_attention",
    "sinusoidal_encoding_1d",
]

PE_MODES = ("axes", "sequence")
ATTENTION_MODES = ("global", "reduced")


def sinusoidal_encoding_1d(positions: torch.Tensor, d_model: int, temperature: float = 10000.0) -> torch.Tensor:
    """
    Paper 003, Box 1: ``pe[:, 0::2] = sin(pos * div)``, ``pe[:, 1::2] = cos(pos * div)`` with
    ``div = exp(arange(0, d_model, 2) * -(log(temperature) / d_model))``.

    Args:
        positions: positions, shape (N,), any float/int dtype.
        d_model: encoding width; must be even.
        temperature: the 10000 of Box 1.

    Returns:
        (N, d_model) float tensor on ``positions``' device.

    Examples::

        >>> sinusoidal_encoding_1d(torch.arange(5), 4).shape
        torch.Size([5, 4])
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal encoding needs an even width, got d_model={d_model}.")
    pos = positions.to(torch.float32).unsqueeze(1)
    div = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device) * -(math.log(temperature) / d_model)
    )
    # stack then flatten interleaves sin/cos exactly like the 0::2 / 1::2 assignments of Box 1
    return torch.stack([torch.sin(pos * div), torch.cos(pos * div)], dim=-1).flatten(1)


def _axis_widths(channels: int, ndim: int) -> list[int]:
    """Even channel counts per spatial axis: the sin/cos pairs shared out as evenly as possible, first axes first."""
    pairs = channels // 2
    return [2 * (pairs // ndim + (1 if a < pairs % ndim else 0)) for a in range(ndim)]


def grid_positional_encoding(
    spatial_shape: Sequence[int],
    channels: int,
    mode: str = "axes",
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """
    Sinusoidal positional encoding for a feature grid of any size.

    Args:
        spatial_shape: the grid, e.g. (H, W) or (H, W, D).
        channels: number of feature channels C.
        mode: ``"axes"``: the channels are shared out over the spatial axes (an even number each, pairs as evenly as
            possible, first axes first) and each axis' group is Box 1 of that axis' coordinate, so the code of a voxel
            does not depend on the grid's other sizes (with C divisible by 2 * ndim it equals MONAI's
            ``build_sincos_position_embedding`` up to a channel permutation). ``"sequence"``: Box 1 literally, on the
            raster index of the flattened grid with ``d_model = C``. An odd C leaves the last channel zero.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (C, *spatial_shape) tensor.

    Examples::

        >>> grid_positional_encoding((4, 6, 5), 32).shape
        torch.Size([32, 4, 6, 5])
    """
    if mode not in PE_MODES:
        raise ValueError(f"positional encoding mode must be one of {PE_MODES}, got {mode!r}.")
    spatial_shape = [int(s) for s in spatial_shape]
    even = channels - channels % 2
    parts = []
    if mode == "sequence":
        n = math.prod(spatial_shape)
        pe = sinusoidal_encoding_1d(torch.arange(n, device=device), even)  # (N, even)
        parts.append(pe.t().reshape(even, *spatial_shape))
    else:
        ndim = len(spatial_shape)
        for axis, width in enumerate(_axis_widths(channels, ndim)):
            if width == 0:
                continue
            pe = sinusoidal_encoding_1d(torch.arange(spatial_shape[axis], device=device), width).t()  # (width, L)
            view = [width] + [spatial_shape[a] if a == axis else 1 for a in range(ndim)]
            parts.append(pe.reshape(view).expand(width, *spatial_shape))
    if channels % 2:
        parts.append(torch.zeros(1, *spatial_shape, device=device))
    return torch.cat(parts, dim=0).to(dtype)


def add_positional_encoding(x: torch.Tensor, mode: str = "axes") -> torch.Tensor:
    """``x + P(x)`` (paper 003 eqs. 6-7) for features ``x`` of shape (B, C, *spatial)."""
    return x + grid_positional_encoding(x.shape[2:], x.shape[1], mode, x.device, x.dtype)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, C)."""
    return x.flatten(2).transpose(1, 2)


def _grid(t: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """(B, N, C) -> (B, C, *spatial)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *spatial_shape)


def multihead_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int = 1, scale: float | None = None
) -> torch.Tensor:
    """
    Scaled dot-product attention ``softmax(Q K^T * scale) V`` on ``num_heads`` channel groups, concatenated.

    Runs on ``F.scaled_dot_product_attention``, which does not materialise the (N, M) weights where a fused kernel
    applies: on CPU (no mask, no dropout; checked with ``torch.profiler`` in the tests) PyTorch runs its
    flash-attention CPU kernel, forward and backward, for any head width; on CUDA it picks the flash (half
    precision, e.g. under AMP) or memory-efficient (float32) kernel, each with its own head-width rules, and
    otherwise falls back to the plain "math" path, which does build the weights.

    Args:
        q: queries, (B, N, D).
        k: keys, (B, M, D).
        v: values, (B, M, Dv).
        num_heads: heads h; D and Dv must be divisible by h.
        scale: logit scale; default ``1 / sqrt(D / h)``.

    Returns:
        (B, N, Dv).

    Examples::

        >>> multihead_attention(torch.rand(2, 10, 8), torch.rand(2, 10, 8), torch.rand(2, 10, 4), num_heads=2).shape
        torch.Size([2, 10, 4])
    """
    b, n, d = q.shape
    dv = v.shape[2]
    if d % num_heads or dv % num_heads:
        raise ValueError(f"query width {d} and value width {dv} must be divisible by num_heads={num_heads}.")

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], num_heads, t.shape[2] // num_heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)  # (B, h, N, Dv/h)
    return out.transpose(1, 2).reshape(b, n, dv)


def reduce_grid(x: torch.Tensor, size: int) -> torch.Tensor:
    """
    Average-pool a feature grid to at most ``size`` cells per spatial axis (``F.adaptive_avg_pool``: cell i of an
    axis of length L averages positions ``floor(i L / s)`` to ``ceil((i + 1) L / s) - 1``); axes already no longer
    than ``size`` are kept, so a grid within the budget comes back unchanged.

    Args:
        x: features, (B, C, *spatial), 2D or 3D.
        size: most cells per axis after pooling.

    Returns:
        (B, C, *[min(L, size) for L in spatial]).

    Examples::

        >>> reduce_grid(torch.rand(1, 4, 48, 48, 48), 8).shape
        torch.Size([1, 4, 8, 8, 8])
    """
    target = tuple(min(int(s), size) for s in x.shape[2:])
    if target == tuple(x.shape[2:]):
        return x
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[x.ndim - 2]
    return pool(x, target)


def resolve_attention(attention: str, spatial_dims: int) -> str:
    """``"auto"`` -> ``"global"`` in 2D (the papers), ``"reduced"`` in 3D; any other value is checked and kept."""
    if attention == "auto":
        return "global" if spatial_dims < 3 else "reduced"
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be 'auto' or one of {ATTENTION_MODES}, got {attention!r}.")
    return attention


def _conv1x1(spatial_dims: int, cin: int, cout: int, act, norm, dropout: float = 0.0) -> Convolution:
    # a bias in front of a norm is cancelled by it (and would get a zero gradient), so only without a norm
    return Convolution(
        spatial_dims, cin, cout, kernel_size=1, act=act, norm=norm, dropout=dropout or None, bias=norm is None
    )


class SkipCrossAttention(nn.Module):
    """
    Multi-head cross-attention (MHCA) filtering a skip connection S with the coarser decoder features Y:

    .. code-block:: text

        S' = S + P(S)                      Y' = Y + P(Y)
        V  = r(op1(S')) W_V                op1 = max-pool 2, 1x1 conv, norm, act      (to Y's grid)
        Q  = q_in(Y') W_Q,  K = r(q_in(Y')) W_K   q_in = 1x1 conv, norm, act (U-Net Transformer) or identity (EFEN)
        A  = softmax(Q K^T / sqrt(d_k))    per head
        G  = up(gate(A V))                 gate = 1x1 conv, norm, sigmoid (U-Net Transformer) / act (EFEN op2)
        out = G * S   (U-Net Transformer)   or   G * S' (EFEN eq. 5)

    with ``r`` the identity (``attention="global"``, the papers: every position of Y's grid attends to every other,
    N^2 pairs for N positions) or :py:func:`reduce_grid` (``attention="reduced"``): keys and values are average-pooled
    onto at most ``kv_size`` cells per axis, so each of the N queries attends to at most ``kv_size ** spatial_dims``
    keys and the cost grows linearly with N. This is the "linear spatial-reduction attention" of PVT v2 (Wang et al.,
    "PVT v2: Improved baselines with Pyramid Vision Transformer", Computational Visual Media 8, 2022), without its
    extra conv/norm after the pooling (the pooled sources are already conv/norm/act outputs, and W_K, W_V are linear,
    so pooling before or after them is the same). Every query still sees the whole volume, which is what the skip
    gate is for (suppressing regions far from the organ using the coarse decoder's context); windowed attention
    (Swin) would limit a single gate to a local window. A grid no larger than ``kv_size`` on every axis (the deep
    skips) gets exactly the global attention.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        skip_channels: channels C_S of the skip features S (also the attention width).
        query_channels: channels C_Y of the decoder features Y (half the skip's resolution).
        num_heads: attention heads; ``skip_channels`` must be divisible by it.
        gate_act: activation of the gate: ``"sigmoid"`` (Petit et al.) or e.g. ``"relu"`` (EFEN's op2).
        query_conv: 1x1 conv + norm + act on Y' before W_Q / W_K (Petit et al.); ``False``: W_Q / W_K act on Y'
            directly (EFEN eq. 8).
        gate_encoded: multiply the position-encoded S' (EFEN eq. 5) instead of S (Petit et al.).
        act: activation of op1 and q_in, as MONAI's ``Act`` factory takes it.
        norm: normalisation, as MONAI's ``Norm`` factory takes it.
        pe_mode: positional encoding mode, see :py:func:`grid_positional_encoding`.
        attention: ``"global"`` (the papers) or ``"reduced"`` (keys/values pooled to ``kv_size`` cells per axis);
            ``"auto"``: global in 2D, reduced in 3D.
        kv_size: cells per axis of the pooled key/value grid of ``"reduced"`` attention.

    Examples::

        >>> mhca = SkipCrossAttention(2, skip_channels=32, query_channels=64, num_heads=4)
        >>> mhca(torch.rand(1, 64, 8, 8), torch.rand(1, 32, 16, 16)).shape
        torch.Size([1, 32, 16, 16])
        >>> fast = SkipCrossAttention(3, skip_channels=16, query_channels=32, num_heads=2, attention="reduced")
        >>> fast(torch.rand(1, 32, 24, 24, 24), torch.rand(1, 16, 48, 48, 48)).shape  # 13824 queries x 512 keys
        torch.Size([1, 16, 48, 48, 48])
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        query_channels: int,
        num_heads: int = 1,
        gate_act: str | tuple = "sigmoid",
        query_conv: bool = True,
        gate_encoded: bool = False,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        pe_mode: str = "axes",
        attention: str = "global",
        kv_size: int = 8,
    ) -> None:
        super().__init__()
        if skip_channels % num_heads:
            raise ValueError(f"skip_channels={skip_channels} must be divisible by num_heads={num_heads}.")
        if pe_mode not in PE_MODES:
            raise ValueError(f"pe_mode must be one of {PE_MODES}, got {pe_mode!r}.")
        if kv_size < 1:
            raise ValueError(f"kv_size must be a positive number of cells per axis, got {kv_size}.")
        self.attention = resolve_attention(attention, spatial_dims)
        self.kv_size = kv_size
        self.num_heads = num_heads
        self.gate_encoded = gate_encoded
        self.pe_mode = pe_mode
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.value_in = _conv1x1(spatial_dims, skip_channels, skip_channels, act, norm)
        self.query_in = _conv1x1(spatial_dims, query_channels, skip_channels, act, norm) if query_conv else None
        qk_in = skip_channels if query_conv else query_channels
        self.w_q = nn.Linear(qk_in, skip_channels, bias=False)
        self.w_k = nn.Linear(qk_in, skip_channels, bias=False)
        self.w_v = nn.Linear(skip_channels, skip_channels, bias=False)
        self.gate = _conv1x1(spatial_dims, skip_channels, skip_channels, gate_act, norm)

    def attention_gate(self, y: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            y: decoder features Y, (B, C_Y, *S).
            skip: skip features S, (B, C_S, *2S).

        Returns:
            the gate G, (B, C_S, *2S), and the position-encoded skip S', (B, C_S, *2S).
        """
        skip_pe = add_positional_encoding(skip, self.pe_mode)
        value_grid = self.value_in(self.pool(skip_pe))
        if value_grid.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"skip features {tuple(skip.shape)} pooled to {tuple(value_grid.shape[2:])} do not match the "
                f"decoder features {tuple(y.shape)}: the skip must have twice the decoder's spatial size."
            )
        y_pe = add_positional_encoding(y, self.pe_mode)
        qk = self.query_in(y_pe) if self.query_in is not None else y_pe
        key_grid = qk
        if self.attention == "reduced":
            key_grid, value_grid = reduce_grid(qk, self.kv_size), reduce_grid(value_grid, self.kv_size)
        q, k, v = self.w_q(_tokens(qk)), self.w_k(_tokens(key_grid)), self.w_v(_tokens(value_grid))
        z = multihead_attention(q, k, v, self.num_heads)
        gate = self.gate(_grid(z, y.shape[2:]))
        gate = F.interpolate(gate, size=skip.shape[2:], mode=_linear(skip.ndim - 2), align_corners=False)
        return gate, skip_pe

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``y``: (B, C_Y, *S), ``skip``: (B, C_S, *2S) -> the filtered skip, (B, C_S, *2S)."""
        gate, skip_pe = self.attention_gate(y, skip)
        return gate * (skip_pe if self.gate_encoded else skip)


def _linear(spatial_dims: int) -> str:
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]


class ImprovedSkip(nn.Module):
    """
    EFEN's improved skip connection (paper 003, eqs. 5-9):

    .. code-block:: text

        R(FE', FD') = concat(FE' * op2(A V), op3(FD'))
        op3 = up-sampling (linear), 3x3 conv, 1x1 conv, norm, act

    with ``FE' * op2(A V)`` the :py:class:`SkipCrossAttention` in its EFEN form (Q, K = FD' W_Q, FD' W_K; gate
    activation = ``act``; the gate multiplies FE').

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        skip_channels: channels C_E of the encoder features FE.
        decoder_channels: channels C_D of the coarser decoder features FD.
        num_heads: attention heads (paper 003: one).
        act: activation type, as MONAI's ``Act`` factory takes it.
        norm: normalisation type, as MONAI's ``Norm`` factory takes it.
        dropout: dropout after op3's norm.
        pe_mode: positional encoding mode, see :py:func:`grid_positional_encoding`.
        attention: ``"global"`` (paper 003), ``"reduced"`` or ``"auto"``, see :py:class:`SkipCrossAttention`.
        kv_size: cells per axis of the pooled key/value grid of ``"reduced"`` attention.

    Examples::

        >>> r = ImprovedSkip(3, skip_channels=8, decoder_channels=16)
        >>> r(torch.rand(1, 8, 8, 8, 8), torch.rand(1, 16, 4, 4, 4)).shape
        torch.Size([1, 16, 8, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        decoder_channels: int,
        num_heads: int = 1,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        pe_mode: str = "axes",
        attention: str = "global",
        kv_size: int = 8,
    ) -> None:
        super().__init__()
        self.pe_mode = pe_mode
        self.cross = SkipCrossAttention(
            spatial_dims,
            skip_channels,
            decoder_channels,
            num_heads,
            gate_act=act,
            query_conv=False,
            gate_encoded=True,
            act=act,
            norm=norm,
            pe_mode=pe_mode,
            attention=attention,
            kv_size=kv_size,
        )
        # no bias on the 3x3 conv either: only a linear 1x1 conv separates it from the norm
        self.op3 = nn.Sequential(
            Convolution(
                spatial_dims, decoder_channels, skip_channels, kernel_size=3, conv_only=True, bias=norm is None
            ),
            _conv1x1(spatial_dims, skip_channels, skip_channels, act, norm, dropout),
        )

    def forward(self, skip: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """``skip``: FE (B, C_E, *2S), ``decoder``: FD (B, C_D, *S) -> R, (B, 2 C_E, *2S)."""
        decoder_pe = add_positional_encoding(decoder, self.pe_mode)
        up = F.interpolate(decoder_pe, size=skip.shape[2:], mode=_linear(skip.ndim - 2), align_corners=False)
        return torch.cat([self.cross(decoder, skip), self.op3(up)], dim=1)


class BottleneckSelfAttention(nn.Module):
    """
    The U-Net Transformer's MHSA on the bottleneck features: ``X -> MHSA(X + P(X))``, multi-head self-attention
    laid out like MONAI's ``SABlock`` (one bias-free Q/K/V projection, softmax(Q K^T / sqrt(d)) per head, an output
    projection with bias). ``SABlock`` itself needs ``einops``, which is no dependency of this package, so the
    attention runs on :py:func:`multihead_attention`, the kernel the MHCA blocks share. As in Petit et al. its output
    replaces the bottleneck features (no residual, no MLP).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        channels: bottleneck channels C; divisible by ``num_heads``.
        num_heads: attention heads.
        pe_mode: positional encoding mode, see :py:func:`grid_positional_encoding`.

    Examples::

        >>> BottleneckSelfAttention(3, 64, num_heads=8)(torch.rand(1, 64, 3, 4, 3)).shape
        torch.Size([1, 64, 3, 4, 3])
    """

    def __init__(self, spatial_dims: int, channels: int, num_heads: int = 8, pe_mode: str = "axes") -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"bottleneck channels={channels} must be divisible by num_heads={num_heads}.")
        if pe_mode not in PE_MODES:
            raise ValueError(f"pe_mode must be one of {PE_MODES}, got {pe_mode!r}.")
        self.spatial_dims = spatial_dims
        self.num_heads = num_heads
        self.pe_mode = pe_mode
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.out_proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S)."""
        q, k, v = self.qkv(_tokens(add_positional_encoding(x, self.pe_mode))).chunk(3, dim=-1)
        return _grid(self.out_proj(multihead_attention(q, k, v, self.num_heads)), x.shape[2:])
