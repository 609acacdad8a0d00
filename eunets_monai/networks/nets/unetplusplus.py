"""
U-Net++ (Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation", DLMIA 2018) and
EU-Net++ (U-Net++ + MHEX+), 2D and 3D.

The nested, densely connected skips: with ``X^{i,0}`` the encoder features of level ``i`` (finest ``i = 0``),

.. code-block:: text

    X^{i,j} = H([X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})])      for j >= 1, i + j <= L - 1

where ``H`` is a double 3x3 conv (+ norm + act) and ``L = len(channels)``. The main decoder path is the last node
of every row, ``X^{L-2,1}, X^{L-3,2}, ..., X^{0,L-1}``, and ``X^{0,L-1}`` goes to the 1x1 output conv.

EU-Net++ (paper 000, sec. 3.4) uses this densely connected version without U-Net++'s own deep supervision (the
MHEX+ heads supervise instead): one MHEX+ head per main-path node, deepest first, its gated output replacing the
node. A main-path node ``X^{i,L-1-i}`` is the last node of its row, so no later node of the row reads it: its only
consumer is the next main-path node ``X^{i-1,L-i}`` (through ``Up``), and the gated output feeding that node is all
there is to route. The intermediate nodes (``i + j < L - 1``) get no head, so they and the dense skips are the same
in U-Net++ and EU-Net++. All nested nodes (``j >= 1``) are decoder blocks and so are residual in EU-Net++.

``Up`` is bilinear (trilinear in 3D) up-sampling by default, as in the widely used PyTorch U-Net++; with widths
32-512, 1 input channel and 2 classes this gives 9.16M parameters, paper 000's Table 1 count (9.25M with MHEX+).
``upsample="deconv"`` uses a 2x2 transposed conv per node as in Zhou et al.'s Keras code (9.05M).

Sizes: any input size is accepted (zero-padded internally to a multiple of ``2 ** (len(channels) - 1)``, cropped
back).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from torch import nn

from eunets_monai.networks.blocks.convs import decoder_block
from eunets_monai.networks.blocks.unet_blocks import UNetEncoder
from eunets_monai.networks.nets.base import EUNetBase, StageFn

__all__ = ["NestedBlock", "UNetPlusPlus", "EUNetPlusPlus"]

UPSAMPLE_MODES = ("nontrainable", "deconv")


class NestedBlock(nn.Module):
    """
    One nested U-Net++ node ``X^{i,j}``: up-sample the node below, concatenate it after the ``j`` same-level nodes,
    and apply a (residual) double conv.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the coarser node ``X^{i+1,j-1}``.
        skip_channels: channels of each same-level node ``X^{i,k}`` (all equal).
        num_skips: number ``j`` of same-level nodes concatenated.
        out_channels: output channels (= ``skip_channels`` in U-Net++).
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in the double conv.
        residual: residual double conv (EU variant) or the plain one.
        upsample: ``"nontrainable"`` (bi-/trilinear, no parameters) or ``"deconv"`` (2x2 transposed conv to
            ``out_channels``).

    Examples::

        >>> node = NestedBlock(2, in_channels=16, skip_channels=8, num_skips=2, out_channels=8)
        >>> node(torch.rand(1, 16, 8, 8), [torch.rand(1, 8, 16, 16), torch.rand(1, 8, 16, 16)]).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        num_skips: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        residual: bool = False,
        upsample: str = "nontrainable",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}.")
        up_channels = in_channels if upsample == "nontrainable" else out_channels
        self.upsample = UpSample(
            spatial_dims, in_channels, up_channels, scale_factor=2, mode=upsample, pre_conv=None, interp_mode="linear"
        )
        self.conv = decoder_block(
            residual,
            spatial_dims=spatial_dims,
            in_channels=num_skips * skip_channels + up_channels,
            out_channels=out_channels,
            act=act,
            norm=norm,
            dropout=dropout,
        )

    def forward(self, below: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """``below``: (B, in_channels, *S); ``skips``: j tensors (B, skip_channels, *2S) -> (B, out_channels, *2S)."""
        return self.conv(torch.cat([*skips, self.upsample(below)], dim=1))


class UNetPlusPlus(EUNetBase):
    """
    U-Net++ with 4 encoder levels + bottleneck by default: the U-Net encoder and dense nested skip pathways.
    With ``mhex=True`` it is EU-Net++: residual nested blocks and an MHEX+ head on every main-path node.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: number of classes.
        channels: feature widths per level, bottleneck last (Zhou et al. use ``(32, 64, 128, 256, 512)``).
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in every conv layer (for MC dropout).
        mhex: attach MHEX+ heads (EU-Net++) or not (plain U-Net++).
        residual: residual nested blocks; defaults to ``mhex``.
        upsample: ``"nontrainable"`` (bi-/trilinear, default) or ``"deconv"`` (2x2 transposed conv per node).

    Examples::

        >>> net = UNetPlusPlus(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), mhex=True)
        >>> net.eval()(torch.rand(1, 1, 35, 50, 36)).shape
        torch.Size([1, 2, 35, 50, 36])
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
        upsample: str = "nontrainable",
    ) -> None:
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}.")
        residual = mhex if residual is None else residual
        levels = len(channels)
        super().__init__(spatial_dims, in_channels, out_channels, channels[-2::-1], mhex, 2 ** (levels - 1))
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, act, norm, dropout)
        # nested[j - 1][i] is node X^{i,j}: column j holds levels 0 .. L-1-j.
        self.nested = nn.ModuleList(
            nn.ModuleList(
                NestedBlock(
                    spatial_dims, channels[i + 1], channels[i], j, channels[i], act, norm, dropout, residual, upsample
                )
                for i in range(levels - j)
            )
            for j in range(1, levels)
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor], stage: StageFn) -> torch.Tensor:
        levels = len(features)
        rows = [[f] for f in features]  # rows[i][j] = X^{i,j}
        for j, column in enumerate(self.nested, start=1):
            for i, node in enumerate(column):
                x = node(rows[i + 1][j - 1], rows[i][:j])
                if i == levels - 1 - j:  # last node of its row: on the main decoder path, stage j - 1
                    x = stage(j - 1, x)
                rows[i].append(x)
        return rows[0][levels - 1]


class EUNetPlusPlus(UNetPlusPlus):
    """:py:class:`UNetPlusPlus` with ``mhex=True``: EU-Net++ (same arguments)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("mhex", True)
        super().__init__(*args, **kwargs)
