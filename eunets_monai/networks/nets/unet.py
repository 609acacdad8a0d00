"""U-Net (Ronneberger et al. 2015) and EU-Net (U-Net + MHEX+), 2D and 3D, padded or the original unpadded form."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eunets_monai.networks.blocks.unet_blocks import UNetEncoder, UpBlock
from eunets_monai.networks.nets.base import EUNetBase, StageFn

__all__ = ["UNet", "EUNet", "unpadded_output_size", "valid_unpadded_sizes"]


def unpadded_output_size(size: int, levels: int) -> int | None:
    """
    Output size of an unpadded U-Net with ``levels`` levels (bottleneck included) for input ``size``, or ``None``
    when some level's size is odd before pooling or shrinks to nothing.
    """
    for _ in range(levels - 1):
        size -= 4  # two unpadded 3x3 convs
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(levels - 1):
        size = size * 2 - 4
    return size if size > 0 else None


def valid_unpadded_sizes(levels: int, upto: int) -> list[int]:
    """Every input size up to ``upto`` an unpadded U-Net with ``levels`` levels accepts."""
    return [s for s in range(1, upto + 1) if unpadded_output_size(s, levels)]


class UNet(EUNetBase):
    """
    U-Net with 4 encoder levels + bottleneck by default: double 3x3 conv + norm + ReLU per level, max-pooling,
    transposed-conv up-sampling, concatenated skips and a 1x1 output conv. With ``mhex=True`` it is the EU-Net
    of Sun & Lio: residual double-conv decoder blocks and an MHEX+ head on every decoder stage.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: number of classes.
        channels: feature widths per level, bottleneck last; ``(64, 128, 256, 512, 1024)`` is the original.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in every conv layer (for MC dropout).
        mhex: attach MHEX+ heads (EU-Net) or not (plain U-Net).
        residual: residual decoder blocks; defaults to ``mhex``.
        padding: ``True``: same-size convs, any input size (padded internally, output cropped to the input size).
            ``False``: the original unpadded U-Net with centre-cropped skips; the output is smaller than the input
            (572 -> 388 with 5 levels) and only sizes for which every pre-pooling size is even are accepted
            (see :py:func:`valid_unpadded_sizes`).

    Examples::

        >>> net = UNet(spatial_dims=2, in_channels=1, out_channels=2, mhex=True)
        >>> net.eval()(torch.rand(1, 1, 96, 96)).shape
        torch.Size([1, 2, 96, 96])
        >>> UNet(2, 1, 2, channels=(4, 8, 16, 32, 64), padding=False)(torch.rand(1, 1, 572, 572)).shape
        torch.Size([1, 2, 388, 388])
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
        padding: bool = True,
    ) -> None:
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}.")
        residual = mhex if residual is None else residual
        super().__init__(spatial_dims, in_channels, out_channels, channels[-2::-1], mhex, 2 ** (len(channels) - 1))
        self.unpadded = not padding
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, act, norm, dropout, padding)
        self.up_blocks = torch.nn.ModuleList(
            UpBlock(spatial_dims, channels[i + 1], channels[i], channels[i], act, norm, dropout, residual, padding)
            for i in reversed(range(len(channels) - 1))
        )

    def padding(self, spatial_shape: Sequence[int]) -> list[tuple[int, int]]:
        if not self.unpadded:
            return super().padding(spatial_shape)
        levels = len(self.up_blocks) + 1
        for size in spatial_shape:
            if unpadded_output_size(size, levels) is None:
                nearby = [s for s in valid_unpadded_sizes(levels, size + 64) if abs(s - size) <= 64]
                raise ValueError(
                    f"unpadded UNet with {levels} levels cannot take spatial size {size} (input shape "
                    f"{tuple(spatial_shape)}); valid sizes near it: {nearby}."
                )
        return [(0, 0)] * len(spatial_shape)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor], stage: StageFn) -> torch.Tensor:
        x = features[-1]
        for i, up in enumerate(self.up_blocks):
            x = stage(i, up(x, features[-2 - i]))
        return x


class EUNet(UNet):
    """:py:class:`UNet` with ``mhex=True``: the EU-Net of Sun & Lio (same arguments)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("mhex", True)
        super().__init__(*args, **kwargs)
