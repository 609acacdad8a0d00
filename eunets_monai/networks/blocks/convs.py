"""Convolution blocks shared by the U-Net family: the double conv and its residual decoder form."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer
from torch import nn

__all__ = ["DoubleConv", "ResidualDoubleConv", "center_crop_to", "decoder_block"]


def _conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    act: str | tuple | None,
    norm: str | tuple | None,
    dropout: float,
    padding: bool,
) -> Convolution:
    # 3x3 conv -> norm -> dropout -> act; no bias since a norm follows (matches the paper's 7.76M U-Net).
    return Convolution(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=3,
        act=act,
        norm=norm,
        dropout=dropout or None,
        bias=norm is None,
        padding=1 if padding else 0,
    )


class DoubleConv(nn.Sequential):
    """
    Two (3x3 conv, norm, act) layers, the basic U-Net block (Ronneberger et al. 2015).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: output channels of both convolutions.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability after each normalisation (used by MC dropout).
        padding: ``True`` for same-size convolutions, ``False`` for the original unpadded ones
            (each conv then trims one voxel per side).

    Examples::

        >>> DoubleConv(2, 1, 32)(torch.rand(1, 1, 64, 64)).shape
        torch.Size([1, 32, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        padding: bool = True,
    ) -> None:
        super().__init__()
        self.add_module("conv_0", _conv(spatial_dims, in_channels, out_channels, act, norm, dropout, padding))
        self.add_module("conv_1", _conv(spatial_dims, out_channels, out_channels, act, norm, dropout, padding))


class ResidualDoubleConv(nn.Module):
    """
    The EU-Net decoder block (sec. 3.4): a double conv with an identity shortcut around its second conv,
    ``h = conv_0(x); out = act(norm(conv(h)) + h)``. The shortcut is parameter-free, which is what the
    paper's parameter counts imply (EUN - UN = 0.09M = the MHEX+ heads alone).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels (e.g. upsampled + skip channels).
        out_channels: output channels.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability after each normalisation.
        padding: must be ``True``: an identity shortcut needs same-size convolutions.

    Examples::

        >>> ResidualDoubleConv(3, 64, 32)(torch.rand(1, 64, 16, 16, 16)).shape
        torch.Size([1, 32, 16, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        padding: bool = True,
    ) -> None:
        super().__init__()
        if not padding:
            raise ValueError("ResidualDoubleConv needs padded convolutions: an identity shortcut needs equal sizes.")
        self.conv_0 = _conv(spatial_dims, in_channels, out_channels, act, norm, dropout, True)
        # Second conv without its activation: the activation comes after the residual sum, as in ResNet.
        self.conv_1 = _conv(spatial_dims, out_channels, out_channels, None, norm, dropout, True)
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_0(x)
        return self.act(self.conv_1(h) + h)


def decoder_block(residual: bool, **kwargs) -> nn.Module:
    """The decoder double conv: residual for EU variants, plain for the baselines."""
    return ResidualDoubleConv(**kwargs) if residual else DoubleConv(**kwargs)


def center_crop_to(x: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial dims of ``x`` (B, C, *spatial) to ``spatial_shape`` about its centre (unpadded U-Net skips)."""
    slices = [slice(None), slice(None)]
    for size, target in zip(x.shape[2:], spatial_shape):
        start = (size - target) // 2
        slices.append(slice(start, start + target))
    return x[tuple(slices)]
