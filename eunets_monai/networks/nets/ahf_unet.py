"""
AHF-U-Net (Munia et al., "Attention-guided hierarchical fusion U-Net for uncertainty-driven medical image
segmentation", Information Fusion 115, 102719, 2025) and AHF-EU-Net (AHF-U-Net + MHEX+), 2D and 3D.

What comes from the paper and the authors' code, and what is our reading:

- From the paper (abstract) and EU-Nets (paper 000, sec. 2): a U-Net whose encoder and decoder carry attention
  fusion modules built from spatial and channel attention (EAF, DAF), an enhanced hierarchical attention skip
  (HAE), and SE/CBAM-like importance coefficients that weight the fusion connections.
- From the authors' published code (notebooks in github.com/AfsanaAhmedMunia/AHF-Fusion-U-Net, a milesial
  U-Net with transposed-conv up-sampling): the exact computations, see :py:mod:`eunets_monai.networks.blocks.ahf`.
  Per skip level l: ``A_l = GAP(F_l) * mean_c(F_l)``, ``E_l = ReLU(Conv3(A_l + TConv3_s2(A_{l+1}))) * F_l``; per
  decoder stage: ``U = TConv2_s2(x)``, fusion ``2 E W + 2 U (1 - W)`` with ``W = sigmoid(Local(Z) + Global(Z))``,
  ``Z = E + U + F``, replacing U-Net's concatenation, then a double conv on C (not 2C) channels.
- Our reading / deviations: the names EAF / HAE / DAF attached to these computations; bias-free convs wherever a
  norm follows (the project's U-Net convention, which reproduces the paper's 7.76M U-Net); in the global (pooled)
  attention branch a per-sample norm across channels (one-group group norm) where the authors use batch norm,
  because batch norm on a pooled (B, C, 1, 1) map fails for batch size 1 in training and instance norm would zero
  it (dropping the norm instead leaves the branch's ReLU units dead for whole batches); at least 2 hidden channels
  in the fusion attention; ``norm``/``act``/``dropout`` apply to every other block so 3D runs can use instance
  norm; the decoder double convs are residual in the EU variant (paper 000, sec. 3.4).

Parameters at the paper's 2D setting (widths 32-512, 1 input channel, 2 classes): 9.42M plain, 9.51M EU, against
9.86M / 9.95M in paper 000's Table 1 (-4.5%): the authors' code at those widths gives the same 9.42M; the paper's
own AHF-U-Net build is not published.

Sizes: any input size is accepted (zero-padded internally to a multiple of ``2 ** (len(channels) - 1)``, cropped
back).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eunets_monai.networks.blocks.ahf import AHFUpBlock, HierarchicalAttentionSkip, encoder_attention_map
from eunets_monai.networks.blocks.unet_blocks import UNetEncoder
from eunets_monai.networks.nets.base import EUNetBase, StageFn

__all__ = ["AHFUNet", "AHFEUNet"]


class AHFUNet(EUNetBase):
    """
    AHF-U-Net: a U-Net encoder (double 3x3 conv + norm + act, max-pooling), hierarchical attention-enhanced skips,
    and decoder stages that up-sample by transposed conv and fuse with the skips by attention (no concatenation).
    With ``mhex=True`` it is AHF-EU-Net: residual decoder double convs and an MHEX+ head on every decoder stage,
    whose gated output is the next stage's input.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: number of classes.
        channels: feature widths per level, bottleneck last; ``(64, 128, 256, 512, 1024)`` is the authors' setting.
        act: activation type and arguments, as MONAI's ``Act`` factory takes them.
        norm: normalisation type and arguments, as MONAI's ``Norm`` factory takes them.
        dropout: dropout probability in every conv layer with a norm or an activation (for MC dropout).
        mhex: attach MHEX+ heads (AHF-EU-Net) or not (plain AHF-U-Net).
        residual: residual decoder blocks; defaults to ``mhex``.
        reduction: bottleneck ratio r of the decoder fusion attention (C -> C / r -> C).

    Examples::

        >>> net = AHFUNet(spatial_dims=2, in_channels=1, out_channels=2, mhex=True)
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
        reduction: int = 4,
    ) -> None:
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}.")
        residual = mhex if residual is None else residual
        super().__init__(spatial_dims, in_channels, out_channels, channels[-2::-1], mhex, 2 ** (len(channels) - 1))
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, act, norm, dropout)
        # One HAE per skip level, finest first.
        self.skips = torch.nn.ModuleList(
            HierarchicalAttentionSkip(spatial_dims, channels[i], channels[i + 1], act, dropout)
            for i in range(len(channels) - 1)
        )
        # Decoder stages, deepest first.
        self.up_blocks = torch.nn.ModuleList(
            AHFUpBlock(spatial_dims, channels[i + 1], channels[i], act, norm, dropout, residual, reduction)
            for i in reversed(range(len(channels) - 1))
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def enhanced_skips(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The HAE skips E_l of every skip level, finest first, from the encoder features (finest first)."""
        maps = [encoder_attention_map(f) for f in features]
        return [hae(features[i], maps[i], maps[i + 1]) for i, hae in enumerate(self.skips)]

    def decode(self, features: list[torch.Tensor], stage: StageFn) -> torch.Tensor:
        enhanced = self.enhanced_skips(features)
        x = features[-1]
        for i, up in enumerate(self.up_blocks):
            level = len(features) - 2 - i
            x = stage(i, up(x, enhanced[level], features[level]))
        return x


class AHFEUNet(AHFUNet):
    """:py:class:`AHFUNet` with ``mhex=True``: AHF-EU-Net (same arguments)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("mhex", True)
        super().__init__(*args, **kwargs)
