"""Encoder and up-sampling blocks of the U-Net family."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Pool
from torch import nn

from eunets_monai.networks.blocks.convs import DoubleConv, center_crop_to, decoder_block

__all__ = ["UNetEncoder", "UpBlock"]


class UNetEncoder(nn.Module):
    """
    The U-Net contracting path: a double conv per level, 2x max-pooling between levels; the last level
    is the bottleneck.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input image channels.
        channels: feature widths per level, e.g. ``(32, 64, 128, 256, 512)`` for 4 levels + bottleneck.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in every conv layer.
        padding: same-size (``True``) or the original unpadded (``False``) convolutions.

    Examples::

        >>> feats = UNetEncoder(2, 1, (8, 16, 32))(torch.rand(1, 1, 32, 32))
        >>> [f.shape[1:] for f in feats]
        [torch.Size([8, 32, 32]), torch.Size([16, 16, 16]), torch.Size([32, 8, 8])]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        padding: bool = True,
    ) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.levels = nn.ModuleList(
            DoubleConv(spatial_dims, widths[i], widths[i + 1], act, norm, dropout, padding)
            for i in range(len(channels))
        )
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns the features of every level, finest first: ``[(B, channels[0], *S), ..., bottleneck]``."""
        features = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            features.append(x)
        return features


class UpBlock(nn.Module):
    """
    One U-Net decoder stage: 2x transposed-conv up-sampling, concatenation with the skip features
    (centre-cropped in unpadded mode), then a (residual) double conv.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the coarser decoder input.
        skip_channels: channels of the skip features.
        out_channels: output channels (the up-sampling also maps to this width).
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in the double conv.
        residual: residual double conv (EU-Nets) or the plain one.
        padding: same-size (``True``) or unpadded (``False``) convolutions.

    Examples::

        >>> up = UpBlock(2, in_channels=64, skip_channels=32, out_channels=32)
        >>> up(torch.rand(1, 64, 8, 8), torch.rand(1, 32, 16, 16)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        residual: bool = False,
        padding: bool = True,
    ) -> None:
        super().__init__()
        self.upsample = UpSample(spatial_dims, in_channels, out_channels, scale_factor=2, mode="deconv")
        self.conv = decoder_block(
            residual,
            spatial_dims=spatial_dims,
            in_channels=out_channels + skip_channels,
            out_channels=out_channels,
            act=act,
            norm=norm,
            dropout=dropout,
            padding=padding,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x``: (B, in_channels, *S), ``skip``: (B, skip_channels, *2S or larger) -> (B, out_channels, *2S)."""
        x = self.upsample(x)
        if skip.shape[2:] != x.shape[2:]:
            skip = center_crop_to(skip, x.shape[2:])
        return self.conv(torch.cat([x, skip], dim=1))
