"""
Equivalent-kernel class activation maps of the MHEX+ heads (EU-Nets, Sun & Lio, sec. 3.3).

Each MHEX+ head computes ``prediction = Conv2(ReLU(Conv1(A)))`` on its input features A. Composing the two
bias-free convolutions (dropping the ReLU, as the paper does) gives one *equivalent kernel* per class,

.. code-block:: text

    W_equiv[c] = sum_j W_Conv2[c, j] * W_Conv1[j]          (K, C_in, *kernel)
    CAM_c      = W_equiv[c] (*) A                            (a convolution; a weighted channel sum for 1x1)

so a head's CAM is read off the features of the forward pass that made the prediction: no backward pass, O(C)
work per pixel and class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from eunets_monai.networks.blocks.mhex import MHEXPlus
from eunets_monai.networks.nets.base import EUNetOutputs

__all__ = ["head_cam", "stage_cams", "mhex_cam", "minmax_normalize", "NORMALIZATIONS"]

NORMALIZATIONS = ("minmax", "none")


def head_cam(head: MHEXPlus, features: torch.Tensor, classes: Sequence[int] | None = None) -> torch.Tensor:
    """
    ``CAM_c = sum_j W_equiv[c, j] * A[j]`` of one head on its input features, with Conv1's own stride, padding
    and dilation (for a k x k Conv1 the equivalent kernel is applied as a convolution).

    Args:
        head: the MHEX+ head.
        features: its input A, (B, C_in, *S_l).
        classes: compute only these classes' maps (e.g. the foreground ones); default all K.

    Returns:
        (B, K, *S_l) (the stage grid, for the 1x1 heads here); (B, len(classes), *S_l) with ``classes``.
    """
    weight = head.equivalent_kernel()
    if classes is not None:
        weight = weight[list(classes)]
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[features.ndim - 2]
    c1 = head.conv1
    if isinstance(c1.padding, str) or c1.padding_mode != "zeros":
        raise ValueError(f"head_cam supports numeric zero padding in Conv1, got {c1.padding!r}/{c1.padding_mode!r}.")
    return conv(features, weight, None, c1.stride, c1.padding, c1.dilation)


def stage_cams(outputs: EUNetOutputs, classes: Sequence[int] | None = None) -> list[torch.Tensor]:
    """
    The equivalent-kernel CAM of every MHEX+ head, on each head's own (internally padded) stage grid.

    Args:
        outputs: the result of ``net.forward_explained(x)`` of an EU network.
        classes: compute only these classes' maps; default all K.

    Returns:
        one tensor (B, K, *S_l) per head, deepest stage first; raw (signed, unnormalised) values.

    Examples::

        >>> out = EUNet(2, 1, 2, channels=(4, 8, 16)).eval().forward_explained(torch.rand(1, 1, 32, 32))
        >>> [c.shape[2:] for c in stage_cams(out)]
        [torch.Size([16, 16]), torch.Size([32, 32])]
    """
    if not outputs.heads:
        raise ValueError("stage_cams needs a network with MHEX+ heads (mhex=True); this one has none.")
    return [head_cam(h.head, h.features, classes) for h in outputs.heads]


def minmax_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """
    Scale each (image, channel) map of ``x`` (B, K, *S) linearly to [0, 1]; a constant map becomes all zeros.
    """
    flat = x.flatten(2)
    lo = flat.min(-1, keepdim=True).values
    span = flat.max(-1, keepdim=True).values - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(x)


def mhex_cam(outputs: EUNetOutputs, normalize: str = "minmax", classes: Sequence[int] | None = None) -> torch.Tensor:
    """
    Multi-scale equivalent-kernel CAM per class on the output grid.

    ``normalize="minmax"`` (the default, for display and for comparison with Grad-CAM):

    1. each head's CAM is resized (bi-/trilinear) to the output grid with ``outputs.to_output_grid``;
    2. ReLU: keep the positive evidence for class c, as CAM and Grad-CAM do;
    3. min-max per image, class and stage to [0, 1]: heads of different depth have feature maps of very different
       magnitude, and without this the sum would show the loudest stage only;
    4. mean over the stages, then min-max per image and class again, so every map spans [0, 1]
       (an all-zero map, e.g. a class with no positive evidence anywhere, stays 0).

    ``normalize="none"``: the plain sum over stages of the resized raw CAMs (signed, unbounded), for analysis.

    Args:
        outputs: the result of ``net.forward_explained(x)`` of an EU network.
        normalize: ``"minmax"`` or ``"none"``.
        classes: compute only these classes' maps, in this order (e.g. ``range(1, K)``: no background map, a third
            less resizing for K = 3); default all K.

    Returns:
        (B, K, *S) on the logits' grid; (B, len(classes), *S) with ``classes``.

    Examples::

        >>> out = EUNet(3, 1, 2, channels=(4, 8, 16)).eval().forward_explained(torch.rand(1, 1, 20, 24, 16))
        >>> mhex_cam(out).shape
        torch.Size([1, 2, 20, 24, 16])
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}.")
    maps = [outputs.to_output_grid(c) for c in stage_cams(outputs, classes)]
    if normalize == "none":
        total = maps[0]
        for m in maps[1:]:
            total = total + m
        return total
    maps = [minmax_normalize(torch.relu(m)) for m in maps]
    return minmax_normalize(torch.stack(maps).mean(0))
