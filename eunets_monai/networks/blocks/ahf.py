"""
Attention and fusion blocks of AHF-U-Net (Munia et al., "Attention-guided hierarchical fusion U-Net for
uncertainty-driven medical image segmentation", Information Fusion 115, 2025), for 2D and 3D.

With ``F_l`` the encoder features of level ``l`` (finest ``l = 0``) and ``U`` the up-sampled decoder features:

.. code-block:: text

    EAF:  A_l = GAP(F_l) * mean_c(F_l)                       # channel descriptor x spatial descriptor
    HAE:  E_l = act(Conv3(A_l + TConv3_s2(A_{l+1}))) * F_l   # hierarchical attention-enhanced skip
    DAF:  Z   = E_l + U + F_l
          W   = sigmoid(Local(Z) + Global(Z))                # importance coefficients in (0, 1)
          out = 2 * E_l * W + 2 * U * (1 - W)                # adaptive fusion, fed to the decoder double conv

The computations follow the authors' published code (the notebooks of github.com/AfsanaAhmedMunia/AHF-Fusion-U-Net);
which of them the paper calls EAF, HAE and DAF is our reading of its abstract (spatial + channel attention on the
encoder and decoder sides, a hierarchical attention-enhanced skip). ``Local``/``Global`` are the two branches of the
multi-scale channel attention of Dai et al.'s attentional feature fusion, which the authors' decoder uses.
See :py:mod:`eunets_monai.networks.nets.ahf_unet` for the one deliberate deviation (the norm in ``Global``).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool
from torch import nn

from eunets_monai.networks.blocks.convs import decoder_block

__all__ = [
    "AHFUpBlock",
    "DecoderAttentionFusion",
    "EncoderAttentionFusion",
    "HierarchicalAttentionSkip",
    "encoder_attention_map",
]

# Norm of the global (pooled) attention branch: per-sample, across channels.
GLOBAL_NORM = ("group", {"num_groups": 1})


def encoder_attention_map(x: torch.Tensor) -> torch.Tensor:
    """
    The EAF map ``A = GAP(x) * mean_c(x)``: the per-channel spatial mean (B, C, 1, ...) times the per-voxel channel
    mean (B, 1, *S), a rank-one channel x spatial attention map.

    Args:
        x: encoder features, (B, C, *S).

    Returns:
        (B, C, *S).

    Examples::

        >>> encoder_attention_map(torch.ones(1, 4, 8, 8)).shape
        torch.Size([1, 4, 8, 8])
    """
    spatial_axes = tuple(range(2, x.ndim))
    return x.mean(dim=spatial_axes, keepdim=True) * x.mean(dim=1, keepdim=True)


class EncoderAttentionFusion(nn.Module):
    """Parameter-free module form of :py:func:`encoder_attention_map` (EAF): (B, C, *S) -> (B, C, *S)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return encoder_attention_map(x)


class HierarchicalAttentionSkip(nn.Module):
    """
    Hierarchical attention-enhanced (HAE) skip: the EAF map of the next deeper level is brought up by a 3x3
    stride-2 transposed conv, added to this level's map, passed through a 3x3 conv + activation, and the result
    re-weights the skip features: ``E = act(Conv3(A + TConv(A_deeper))) * F``.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        channels: channels C of this level's features ``F`` and map ``A``.
        deeper_channels: channels of the next deeper level's map.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        dropout: dropout probability after the activation (MC dropout).

    Examples::

        >>> hae = HierarchicalAttentionSkip(2, channels=8, deeper_channels=16)
        >>> f, a, a_deep = torch.rand(1, 8, 16, 16), torch.rand(1, 8, 16, 16), torch.rand(1, 16, 8, 8)
        >>> hae(f, a, a_deep).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        deeper_channels: int,
        act: str | tuple = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        # k3, s2, p1, output padding 1: exactly doubles every spatial size.
        self.up = Convolution(
            spatial_dims,
            deeper_channels,
            channels,
            strides=2,
            kernel_size=3,
            is_transposed=True,
            output_padding=1,
            conv_only=True,
        )
        # No norm: the authors' HAE conv is conv + bias + ReLU; the activation comes before dropout.
        self.conv = Convolution(
            spatial_dims,
            channels,
            channels,
            kernel_size=3,
            adn_ordering="AD",
            act=act,
            norm=None,
            dropout=dropout or None,
        )

    def forward(self, skip: torch.Tensor, attention: torch.Tensor, deeper_attention: torch.Tensor) -> torch.Tensor:
        """
        Args:
            skip: encoder features F, (B, C, *S).
            attention: EAF map of this level, (B, C, *S).
            deeper_attention: EAF map of the next deeper level, (B, deeper_channels, *S/2).

        Returns:
            the enhanced skip E, (B, C, *S).
        """
        return self.conv(attention + self.up(deeper_attention)) * skip


class DecoderAttentionFusion(nn.Module):
    """
    Decoder attention fusion (DAF): importance coefficients ``W = sigmoid(Local(Z) + Global(Z))`` computed from
    ``Z = E + U + F`` choose, per channel and voxel, between the enhanced skip ``E`` and the up-sampled decoder
    features ``U``: ``out = 2 E W + 2 U (1 - W)``. ``Local`` is pointwise (1x1 conv, norm, act, 1x1 conv, norm), a
    CBAM-like spatially varying attention; ``Global`` is SE-like (global average pool, 1x1 conv, act, 1x1 conv).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        channels: channels C of ``E``, ``U`` and ``F``.
        reduction: bottleneck ratio r of both branches (C -> C / r -> C).
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation of the local branch, as MONAI's ``Norm`` factory takes it (the global branch always
            uses a one-group group norm).

    Examples::

        >>> daf = DecoderAttentionFusion(3, channels=16)
        >>> e, u, f = (torch.rand(2, 16, 8, 8, 8) for _ in range(3))
        >>> daf(e, u, f).shape
        torch.Size([2, 16, 8, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        reduction: int = 4,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        # At least 2 hidden channels, so that the per-sample channel norm of the global branch is not degenerate.
        hidden = max(2, channels // reduction)
        bias = norm is None  # a norm right after a conv makes its bias redundant
        self.local_att = nn.Sequential(
            Convolution(spatial_dims, channels, hidden, kernel_size=1, act=act, norm=norm, bias=bias),
            Convolution(spatial_dims, hidden, channels, kernel_size=1, act=None, norm=norm, bias=bias),
        )
        # The pooled (B, C, 1, ...) map is normalised per sample across channels (one-group group norm) where the
        # authors use batch norm: batch norm fails there for batch size 1 in training and instance norm would zero
        # it, while without any norm the near-identical pooled vectors of a batch often leave every hidden unit
        # dead after the activation. Centring across channels keeps about half of them active for every sample.
        self.global_att = nn.Sequential(
            Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
            Convolution(spatial_dims, channels, hidden, kernel_size=1, act=act, norm=GLOBAL_NORM, bias=False),
            Convolution(spatial_dims, hidden, channels, kernel_size=1, act=None, norm=GLOBAL_NORM, bias=False),
        )

    def coefficients(self, enhanced: torch.Tensor, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The importance coefficients W, (B, C, *S), each in (0, 1)."""
        z = enhanced + upsampled + skip
        return torch.sigmoid(self.local_att(z) + self.global_att(z))

    def forward(self, enhanced: torch.Tensor, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            enhanced: the HAE skip E, (B, C, *S).
            upsampled: up-sampled decoder features U, (B, C, *S).
            skip: raw encoder features F, (B, C, *S).

        Returns:
            the fused features, (B, C, *S).
        """
        w = self.coefficients(enhanced, upsampled, skip)
        return 2 * enhanced * w + 2 * upsampled * (1 - w)


class AHFUpBlock(nn.Module):
    """
    One AHF-U-Net decoder stage: 2x transposed-conv up-sampling, DAF fusion with the enhanced and raw skips
    (instead of concatenation), then a (residual) double conv.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the coarser decoder input.
        out_channels: channels of the skips and of the output.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in the double conv.
        residual: residual double conv (EU variant) or the plain one.
        reduction: bottleneck ratio of the DAF attention branches.

    Examples::

        >>> up = AHFUpBlock(2, in_channels=16, out_channels=8)
        >>> x, e, f = torch.rand(2, 16, 8, 8), torch.rand(2, 8, 16, 16), torch.rand(2, 8, 16, 16)
        >>> up(x, e, f).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple = "relu",
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        residual: bool = False,
        reduction: int = 4,
    ) -> None:
        super().__init__()
        self.upsample = UpSample(spatial_dims, in_channels, out_channels, scale_factor=2, mode="deconv")
        self.fusion = DecoderAttentionFusion(spatial_dims, out_channels, reduction, act, norm)
        self.conv = decoder_block(
            residual,
            spatial_dims=spatial_dims,
            in_channels=out_channels,
            out_channels=out_channels,
            act=act,
            norm=norm,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, enhanced: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x``: (B, in_channels, *S); ``enhanced``, ``skip``: (B, out_channels, *2S) -> (B, out_channels, *2S)."""
        return self.conv(self.fusion(enhanced, self.upsample(x), skip))
