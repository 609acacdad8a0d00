"""
The one forward pass every network of the family shares: encoder -> decoder stages -> output conv, with an
optional MHEX+ head after each decoder stage (the segmentation_models_pytorch pattern: each architecture only
supplies ``encode`` and ``decode``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from eunets_monai.networks.blocks.mhex import MHEXPlus

__all__ = ["EUNetBase", "EUNetOutputs", "HeadOutputs", "StageFn"]

# Called by ``decode`` on each decoder stage's output with the stage index; returns what continues on the path.
StageFn = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class HeadOutputs:
    """
    What one MHEX+ head saw and produced in a forward pass (at the stage's own resolution).

    Attributes:
        stage: decoder stage index, 0 = deepest.
        features: the head input A, (B, C, *spatial_l): the activations the equivalent-kernel CAM weights.
        hidden: Y = ReLU(Conv1(A)), (B, C, *spatial_l).
        prediction: the deep prediction Conv2(Y), (B, K, *spatial_l).
        head: the :py:class:`MHEXPlus` module (``head.conv1.weight``, ``head.conv2.weight``).
    """

    stage: int
    features: torch.Tensor
    hidden: torch.Tensor
    prediction: torch.Tensor
    head: MHEXPlus


@dataclass
class EUNetOutputs:
    """
    Everything the explanation and uncertainty code needs from one forward pass.

    Attributes:
        logits: final logits, (B, K, *out_spatial).
        heads: one :py:class:`HeadOutputs` per MHEX+ head, deepest stage first (empty for a plain network).
        grid_shape: spatial shape of the logits before internal padding was cropped away.
        crop: the slices that crop a tensor on ``grid_shape`` back to ``logits``' spatial shape.
    """

    logits: torch.Tensor
    heads: list[HeadOutputs]
    grid_shape: tuple[int, ...]
    crop: tuple[slice, ...]

    def to_output_grid(self, x: torch.Tensor, mode: str = "linear") -> torch.Tensor:
        """Resize a stage-resolution map (B, *, *spatial_l) to the output grid of ``logits``."""
        if tuple(x.shape[2:]) != self.grid_shape:
            x = resize(x, self.grid_shape, mode)
        return x[(slice(None), slice(None), *self.crop)]

    def deep_predictions(self) -> list[torch.Tensor]:
        """Every head's deep prediction on the output grid, shallowest stage first (next to the final output)."""
        return [self.to_output_grid(h.prediction) for h in reversed(self.heads)]


def resize(x: torch.Tensor, spatial_shape: Sequence[int], mode: str = "linear") -> torch.Tensor:
    """``F.interpolate`` with ``mode="linear"`` meaning bi-/trilinear for 2D/3D maps."""
    if mode == "linear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    align = False if mode in ("linear", "bilinear", "trilinear", "bicubic") else None
    return F.interpolate(x, size=tuple(spatial_shape), mode=mode, align_corners=align)


class EUNetBase(nn.Module, ABC):
    """
    Base class of every network here, plain or EU. Subclasses build their layers and implement
    :py:meth:`encode` and :py:meth:`decode`; this class owns the MHEX+ heads, the output conv, the
    input checks, the internal padding and the output contract:

    - ``train()`` mode, ``mhex=True``: ``[logits, deep_pred_shallowest, ..., deep_pred_deepest]``, every
      tensor (B, K, *input_spatial), the list form MONAI's ``DeepSupervisionLoss`` takes.
    - otherwise: the logits tensor (B, K, *input_spatial) only, so inferers, ``verify_net_in_out``, TorchScript
      tracing and MONAI Label work unchanged.
    - :py:meth:`forward_explained`: logits plus every head's input features, hidden map and deep prediction.

    Inputs of any spatial size are accepted: they are padded (symmetrically, with zeros) up to a multiple of
    :py:attr:`size_divisor` and the outputs cropped back. The padding is computed in Python, so a
    ``torch.jit.trace`` export is fixed to the traced input size: trace at the size you deploy, the sliding-window
    ROI (which every window has, since MONAI's inferers pad smaller images up to it).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: number of classes K.
        stage_channels: channels of each decoder stage's output, deepest first; one MHEX+ head per entry.
        mhex: attach MHEX+ heads (the EU variant) or not (the plain baseline).
        size_divisor: spatial sizes the encoder can halve cleanly, usually ``2 ** (levels - 1)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stage_channels: Sequence[int],
        mhex: bool,
        size_divisor: int,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mhex = mhex
        self.size_divisor = size_divisor
        self.heads = nn.ModuleList(MHEXPlus(spatial_dims, c, out_channels) for c in stage_channels) if mhex else None
        self.output_conv = Conv[Conv.CONV, spatial_dims](stage_channels[-1], out_channels, kernel_size=1)

    @abstractmethod
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of the (padded) input, finest first, bottleneck last."""

    @abstractmethod
    def decode(self, features: list[torch.Tensor], stage: StageFn) -> torch.Tensor:
        """
        Run the decoder on ``features``, passing every decoder stage's output through ``x = stage(i, x)``
        (i = 0 for the deepest stage) before it is used further, and return the last stage's output.
        """

    def padding(self, spatial_shape: Sequence[int]) -> list[tuple[int, int]]:
        """(before, after) zero padding per spatial dim that makes ``spatial_shape`` divisible by ``size_divisor``."""
        pads = []
        for size in spatial_shape:
            extra = math.ceil(size / self.size_divisor) * self.size_divisor - size
            pads.append((extra // 2, extra - extra // 2))
        return pads

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line ``ValueError`` for an input this network cannot take."""
        if x.ndim != self.spatial_dims + 2:
            axes = ", ".join("HWD"[: self.spatial_dims])
            raise ValueError(
                f"{type(self).__name__} is {self.spatial_dims}D and expects (B, C, {axes}) input, "
                f"got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channel(s), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})."
            )

    def forward_explained(self, x: torch.Tensor) -> EUNetOutputs:
        """
        One forward pass that also returns what each MHEX+ head saw.

        Args:
            x: input image, (B, in_channels, *spatial).

        Returns:
            :py:class:`EUNetOutputs` with the logits (B, K, *spatial) and one :py:class:`HeadOutputs` per head.
        """
        self.check_input(x)
        pads = self.padding(x.shape[2:])
        if any(p for pair in pads for p in pair):
            # F.pad takes the last dimension first.
            x = F.pad(x, [p for pair in reversed(pads) for p in pair])
        heads: list[HeadOutputs] = []

        def stage(i: int, features: torch.Tensor) -> torch.Tensor:
            if self.heads is None:
                return features
            gated, hidden, prediction = self.heads[i](features)
            heads.append(HeadOutputs(i, features, hidden, prediction, self.heads[i]))
            return gated

        logits = self.output_conv(self.decode(self.encode(x), stage))
        grid = tuple(logits.shape[2:])
        crop = tuple(slice(before, size - after) for (before, after), size in zip(pads, grid))
        return EUNetOutputs(logits[(slice(None), slice(None), *crop)], heads, grid, crop)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            x: input image, (B, in_channels, *spatial).

        Returns:
            logits (B, K, *spatial); in training mode with MHEX+, ``[logits, *deep_predictions]``.
        """
        out = self.forward_explained(x)
        if self.training and self.heads is not None:
            return [out.logits, *out.deep_predictions()]
        return out.logits
