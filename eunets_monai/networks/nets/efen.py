"""
EFEN, the enhanced feature extraction network of paper 003, and its EU variant (EFEN + MHEX+), 2D and 3D.

A U-Net (encoder E1, decoder D1) followed by a feature re-extraction U-Net (encoder E2, decoder D2). Every skip
connection of both decoders is the "improved skip connection" R of eqs. 5-9
(:py:class:`~eunets_monai.networks.blocks.attention.ImprovedSkip`): sinusoidal positional encoding (Box 1) on both
inputs, cross-attention whose queries and keys come from the coarser decoder features and whose values come from the
max-pooled encoder features, and a gate that multiplies the encoder features.

.. code-block:: text

    FE1_i = Phi_E1(FE1_{i-1})                                  eq. 1   (U-Net encoder level: pool, 2 x 3x3 conv)
    FD1_j = Psi_D1(concat(Phi_D1(FD1_{j-1}), R(FE1_i, FD1_{j-1})))  eq. 2   (Phi: transposed conv; Psi: 2 x 3x3 + 1x1)
    FE2_k = op_E2(concat(Phi_E2(FE2_{k-1}), FD1 at level k))    eq. 3   (op: 2 x 3x3 + 1x1)
    FD2_l = op_D2(concat(Phi_D2(FD2_{l-1}), R(FE1_k, FD2_{l-1})))   eq. 4   (skips from E1, as the paper stresses)
    R(FE', FD') = concat(FE' * op2(A V), op3(FD'))              eq. 5;  FE' = FE + P(FE), FD' = FD + P(FD)  eqs. 6-7
    A = softmax(Q K^T / sqrt(d_k)),  Q, K = FD' W_Q, FD' W_K,  V = op1(FE') W_V              eqs. 8-9

Where the paper is ambiguous, and what this implementation does:

- **Which decoder features feed R** (eq. 2 writes R(FE_i, FD_j) with FD_j the stage's own output): the coarser
  decoder features FD_{j-1}, since op3 up-samples them and op1 max-pools FE to their grid.
- **Q and K**: "calculated from FD"; taken from FD' = FD + P(FD) so the positional encoding reaches the attention
  weights (the reason the paper gives for it), projected by bias-free W_Q, W_K from C_D to C_E channels (the
  "necessary dimensional transformation"), so that d_k = C_E, the channel number of V.
- **Scale**: eq. 8 reads QK^T / d_k in the extracted text; the radical of the usual 1/sqrt(d_k) is the likely loss,
  and 1/sqrt(d_k) is used. Box 2's "elementwise_multiply(attention_weights, value)" is read as the weighted sum A V
  the text describes ("use these weights to sum the value"), i.e. a matrix product. One head, as in eq. 8.
- **op2** ends in ReLU (not a sigmoid), so the gate is non-negative but unbounded, as written; it multiplies FE'.
- **op3** "up-sampling, 3x3 conv, 1x1 conv, BN, ReLU": linear interpolation (no weights: the paper reserves
  "transposed convolution" for Phi), a 3x3 conv C_D -> C_E and a 1x1 conv C_E -> C_E.
- **Phi(FD) and op3(FD')** both enter the stage, as eqs. 2 and 5 write: Psi sees [Phi(FD) | FE' * gate | op3(FD')]
  (3 C_E channels) and is two 3x3 convs (the (residual) double conv of the U-Net decoder) plus a 1x1 conv.
- **Positional encoding of an image**: Box 1 is a 1D function of a sequence position; it is applied per spatial
  axis (each axis gets an equal share of the channels), which works for any grid in 2D and 3D. ``pe_mode="sequence"``
  applies it literally to the raster index of the flattened grid instead.
- **"Fuse the U-Net's outputs with the inputs of the encoder"** (sec. 3.1): E2 has the same levels as E1; its
  level-0 features of the input image are fused, by op_E2, with D1's last output (the U-Net without its 1x1 output
  conv), and every deeper level k < bottleneck with the D1 output of the same size (eq. 3). E2's bottleneck has no D1
  counterpart and is not fused. Phi_E2 is a U-Net encoder level (max-pool, two 3x3 convs).
- **Encoder**: the paper uses a VGG-19 encoder (pre-trained); here E1 and E2 are the U-Net encoders of the family
  (same widths as every other network), so the counts compare across the family, not with paper 003's Table 3.

MHEX+ placement: the heads sit on the four stages of the final decoder D2, whose gated outputs feed the next D2
stage and the output conv. D1's stages feed the main path too (D1 and E2), but heads there as well would add
2 x 0.088M > the 0.1M MHEX+ budget at the paper-000 setting, and D2's deep predictions are the ones nearest the
final output the CAMs explain. Residual double convs (sec. 3.4) are used in the Psi blocks of both decoders.

Cost (``attention``): paper 003's R attends globally over its skip's half-resolution grid, quadratic in the tokens:
the finest skip of a 96^3 patch has 110k tokens, and EFEN has two such decoders. ``attention="reduced"`` (the
default in 3D, via ``"auto"``; a departure from the 2D paper) average-pools R's keys and values onto at most
``kv_size`` (8) cells per axis (PVT v2's linear spatial-reduction attention, see
:py:class:`~eunets_monai.networks.blocks.attention.SkipCrossAttention`), so the cost is linear in the voxels while
every query still attends over the whole volume. In 2D ``"auto"`` keeps the paper's global attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from eunets_monai.networks.blocks.attention import ImprovedSkip
from eunets_monai.networks.blocks.convs import DoubleConv
from eunets_monai.networks.blocks.unet_blocks import UNetEncoder, UpBlock
from eunets_monai.networks.nets.base import EUNetBase, StageFn

__all__ = ["EFEN", "EUEFEN", "EFENUpBlock"]


def _conv1x1(spatial_dims: int, channels: int, act, norm, dropout: float) -> Convolution:
    """The 1x1 conv (+ norm + act) that closes Psi / op (paper 003: "two 3x3 convs and one 1x1 conv")."""
    return Convolution(
        spatial_dims, channels, channels, kernel_size=1, act=act, norm=norm, dropout=dropout or None, bias=norm is None
    )


class EFENUpBlock(nn.Module):
    """
    One EFEN decoder stage (eqs. 2 and 4): ``Psi(concat(Phi(FD), R(FE, FD)))`` with Phi the transposed conv of
    :py:class:`~eunets_monai.networks.blocks.unet_blocks.UpBlock`, R the improved skip and Psi the UpBlock's
    (residual) double conv followed by a 1x1 conv.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels C_D of the coarser decoder features FD.
        skip_channels: channels C_E of the encoder features FE; also the output width.
        act: activation type, as MONAI's ``Act`` factory takes it.
        norm: normalisation type, as MONAI's ``Norm`` factory takes it.
        dropout: dropout probability in the convs.
        residual: residual double conv (EU variants).
        num_heads: attention heads of R.
        pe_mode: positional encoding mode of R.
        attention: ``"global"``, ``"reduced"`` or ``"auto"``, see :py:class:`EFEN`.
        kv_size: cells per axis of the pooled key/value grid of ``"reduced"`` attention.

    Examples::

        >>> up = EFENUpBlock(2, in_channels=64, skip_channels=32)
        >>> up(torch.rand(1, 64, 8, 8), torch.rand(1, 32, 16, 16)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        residual: bool = False,
        num_heads: int = 1,
        pe_mode: str = "axes",
        attention: str = "global",
        kv_size: int = 8,
    ) -> None:
        super().__init__()
        self.skip = ImprovedSkip(
            spatial_dims, skip_channels, in_channels, num_heads, act, norm, dropout, pe_mode, attention, kv_size
        )
        # R has 2 C_E channels: the gated skip and op3(FD')
        self.up = UpBlock(
            spatial_dims, in_channels, 2 * skip_channels, skip_channels, act, norm, dropout, residual=residual
        )
        self.conv1x1 = _conv1x1(spatial_dims, skip_channels, act, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x``: FD (B, C_D, *S), ``skip``: FE (B, C_E, *2S) -> (B, C_E, *2S)."""
        return self.conv1x1(self.up(x, self.skip(skip, x)))


class EFEN(EUNetBase):
    """
    EFEN (paper 003): U-Net with improved skips (E1, D1), then a feature re-extraction encoder E2 fused level by
    level with D1's outputs, and a decoder D2 whose improved skips come from E1. With ``mhex=True`` (EU-EFEN) the
    decoders use residual double convs and an MHEX+ head sits on every D2 stage. See the module docstring for the
    equations and the choices made where the paper is ambiguous.

    ``encode`` runs E1, D1 and E2 and returns E1's skip features plus E2's bottleneck; ``decode`` runs D2.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: number of classes.
        channels: feature widths per level (both encoders), bottleneck last.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in the conv layers (for MC dropout).
        mhex: attach MHEX+ heads to D2 (EU variant) or not (plain baseline).
        residual: residual decoder double convs; defaults to ``mhex``.
        num_heads: attention heads of every improved skip (paper 003: 1); must divide ``channels[:-1]``.
        pe_mode: ``"axes"`` (Box 1 per spatial axis) or ``"sequence"`` (Box 1 on the raster index).
        attention: R's attention over ``"global"`` keys (paper 003) or ``"reduced"`` (keys/values average-pooled to
            ``kv_size`` cells per axis, cost linear in the voxels); ``"auto"``: global in 2D, reduced in 3D.
        kv_size: cells per axis of the pooled key/value grid of ``"reduced"`` attention.

    Inputs of any spatial size are accepted (zero-padded to a multiple of ``2 ** (len(channels) - 1)`` and cropped
    back).

    Examples::

        >>> net = EFEN(spatial_dims=2, in_channels=1, out_channels=2, mhex=True)
        >>> net.eval()(torch.rand(1, 1, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        mhex: bool = False,
        residual: bool | None = None,
        num_heads: int = 1,
        pe_mode: str = "axes",
        attention: str = "auto",
        kv_size: int = 8,
    ) -> None:
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}.")
        if any(c % num_heads for c in channels[:-1]):
            raise ValueError(f"num_heads={num_heads} must divide every skip width in channels={tuple(channels)}.")
        residual = mhex if residual is None else residual
        super().__init__(spatial_dims, in_channels, out_channels, channels[-2::-1], mhex, 2 ** (len(channels) - 1))
        levels = list(reversed(range(len(channels) - 1)))  # deepest decoder stage first

        def decoder() -> nn.ModuleList:
            return nn.ModuleList(
                EFENUpBlock(
                    spatial_dims,
                    channels[i + 1],
                    channels[i],
                    act,
                    norm,
                    dropout,
                    residual,
                    num_heads,
                    pe_mode,
                    attention,
                    kv_size,
                )
                for i in levels
            )

        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, act, norm, dropout)  # E1
        self.decoder1 = decoder()  # D1
        self.reencoder = UNetEncoder(spatial_dims, in_channels, channels, act, norm, dropout)  # Phi_E2
        self.fusions = nn.ModuleList(  # op_E2 for every level with a D1 output of its size
            nn.Sequential(
                DoubleConv(spatial_dims, 2 * c, c, act, norm, dropout), _conv1x1(spatial_dims, c, act, norm, dropout)
            )
            for c in channels[:-1]
        )
        self.decoder2 = decoder()  # D2

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = self.encoder(x)  # E1, eq. 1
        d1 = [skips[-1]]
        for i, up in enumerate(self.decoder1):  # D1, eq. 2
            d1.append(up(d1[-1], skips[-2 - i]))
        d1_by_level = d1[:0:-1]  # finest first: D1's output at level k
        h = x
        for k, level in enumerate(self.reencoder.levels):  # E2, eq. 3
            h = level(h if k == 0 else self.reencoder.pool(h))
            if k < len(self.fusions):
                h = self.fusions[k](torch.cat([h, d1_by_level[k]], dim=1))
        return [*skips[:-1], h]

    def decode(self, features: list[torch.Tensor], stage: StageFn) -> torch.Tensor:
        x = features[-1]
        for i, up in enumerate(self.decoder2):  # D2, eq. 4: skips from E1
            x = stage(i, up(x, features[-2 - i]))
        return x


class EUEFEN(EFEN):
    """:py:class:`EFEN` with ``mhex=True``: MHEX+ heads on D2, residual decoder blocks (same arguments)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("mhex", True)
        super().__init__(*args, **kwargs)
