"""
U-Net Transformer (Petit et al. 2021, "U-Net Transformer: self and cross attention for medical image segmentation")
and its EU variant (U-Net Transformer + MHEX+), 2D and 3D.

The U-Net of :py:class:`~eunets_monai.networks.nets.unet.UNet` with two additions:

- **MHSA** at the bottleneck: the bottleneck features plus a sinusoidal positional encoding go through multi-head
  self-attention (MONAI ``SABlock``), whose output replaces them.
- **MHCA** on every skip connection: the coarser decoder features Y give queries and keys, the (max-pooled)
  skip features S the values; the attention output becomes, through a 1x1 conv, norm and sigmoid, a gate that is
  up-sampled to S's grid and multiplies S. The filtered skip then joins the transposed-conv up-sampled Y in the
  usual :py:class:`~eunets_monai.networks.blocks.unet_blocks.UpBlock`.

Choices where the paper leaves room (all documented so the count below can be checked):

- Up-sampling of Y is U-Net's transposed conv (the ``UpBlock``), not Petit's "up-sample, 3x3 conv, 1x1 conv" branch:
  with widths 32-512 that branch alone would add ~2.6M parameters (12.0M in all), while the transposed-conv reading
  gives 9.42M / 9.51M, exactly the UN-T / EUN-T counts of paper 000, Table 1.
- MHSA has an output projection (standard multi-head attention, as ``SABlock``) and no residual/MLP, as in the paper's
  figure where the MHSA output is the decoder's input.
- Positional encodings are the sine/cosine of Vaswani et al. per spatial axis (each axis gets an equal share of the
  channels), computed for the actual grid in every forward pass, so any (padded) input size works in 2D and 3D.
- The MHCA gate multiplies the skip features S themselves (the positional encoding only informs the attention).

Cost (``attention``): the paper's MHCA attends globally over the half-resolution grid of each skip, so the finest
skip of a 96^3 patch has 48^3 = 110,592 tokens and 1.2e10 query-key pairs per head: affordable in 2D (the paper's
setting), not in 3D. ``attention="reduced"`` (the default in 3D, via ``"auto"``) average-pools the keys and values
onto at most ``kv_size`` (8) cells per axis (PVT v2's linear spatial-reduction attention, see
:py:class:`~eunets_monai.networks.blocks.attention.SkipCrossAttention`): every query still attends over the whole
volume, at a cost linear in the voxels. In 2D ``"auto"`` keeps the paper's global attention. The bottleneck MHSA
(6^3 = 216 tokens for a 96^3 patch) stays global.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eunets_monai.networks.blocks.attention import BottleneckSelfAttention, SkipCrossAttention
from eunets_monai.networks.blocks.unet_blocks import UNetEncoder, UpBlock
from eunets_monai.networks.nets.base import EUNetBase, StageFn

__all__ = ["UNetTransformer", "EUNetTransformer"]


class UNetTransformer(EUNetBase):
    """
    U-Net Transformer: U-Net encoder, MHSA with positional encoding at the bottleneck, MHCA-filtered skips,
    transposed-conv up-sampling, (residual) double-conv decoder blocks. With ``mhex=True`` it is the EU-Net
    Transformer of Sun & Lio (paper 000, Fig. 2): residual decoder blocks and an MHEX+ head on every decoder stage,
    whose gated output is the next stage's MHCA query and up-sampling input.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: number of classes.
        channels: feature widths per level, bottleneck last.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in every 3x3 conv layer (for MC dropout).
        mhex: attach MHEX+ heads (EU variant) or not (plain baseline).
        residual: residual decoder blocks; defaults to ``mhex``.
        num_heads: heads of the MHSA and of every MHCA; must divide every width in ``channels``.
        pe_mode: positional encoding, ``"axes"`` (per spatial axis) or ``"sequence"`` (raster order), see
            :py:func:`~eunets_monai.networks.blocks.attention.grid_positional_encoding`.
        attention: MHCA over ``"global"`` keys (the paper) or ``"reduced"`` (keys/values average-pooled to
            ``kv_size`` cells per axis, cost linear in the voxels); ``"auto"``: global in 2D, reduced in 3D.
        kv_size: cells per axis of the pooled key/value grid of ``"reduced"`` attention.

    Inputs of any spatial size are accepted (zero-padded to a multiple of ``2 ** (len(channels) - 1)`` and cropped
    back).

    Examples::

        >>> net = UNetTransformer(spatial_dims=2, in_channels=1, out_channels=2, mhex=True)
        >>> net.eval()(torch.rand(1, 1, 96, 96)).shape
        torch.Size([1, 2, 96, 96])
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
        num_heads: int = 8,
        pe_mode: str = "axes",
        attention: str = "auto",
        kv_size: int = 8,
    ) -> None:
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}.")
        bad = [c for c in channels if c % num_heads]
        if bad:
            raise ValueError(f"num_heads={num_heads} must divide every width in channels={tuple(channels)}.")
        residual = mhex if residual is None else residual
        super().__init__(spatial_dims, in_channels, out_channels, channels[-2::-1], mhex, 2 ** (len(channels) - 1))
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, act, norm, dropout)
        self.mhsa = BottleneckSelfAttention(spatial_dims, channels[-1], num_heads, pe_mode)
        levels = list(reversed(range(len(channels) - 1)))  # deepest decoder stage first
        self.mhca = nn.ModuleList(
            SkipCrossAttention(
                spatial_dims,
                channels[i],
                channels[i + 1],
                num_heads,
                "sigmoid",
                act=act,
                norm=norm,
                pe_mode=pe_mode,
                attention=attention,
                kv_size=kv_size,
            )
            for i in levels
        )
        self.up_blocks = nn.ModuleList(
            UpBlock(spatial_dims, channels[i + 1], channels[i], channels[i], act, norm, dropout, residual)
            for i in levels
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(x)
        features[-1] = self.mhsa(features[-1])
        return features

    def decode(self, features: list[torch.Tensor], stage: StageFn) -> torch.Tensor:
        x = features[-1]
        for i, (mhca, up) in enumerate(zip(self.mhca, self.up_blocks)):
            skip = mhca(x, features[-2 - i])
            x = stage(i, up(x, skip))
        return x


class EUNetTransformer(UNetTransformer):
    """:py:class:`UNetTransformer` with ``mhex=True``: the EU-Net Transformer of Sun & Lio (same arguments)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("mhex", True)
        super().__init__(*args, **kwargs)
