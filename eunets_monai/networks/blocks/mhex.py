"""The MHEX+ head (EU-Nets, Sun & Lio, sec. 3.2)."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["MHEXPlus", "HEAD_INITS"]

HEAD_INITS = ("identity", "default")


class MHEXPlus(nn.Module):
    """
    MHEX+ head attached to one decoder stage of an EU-Net:

    .. code-block:: text

        Y          = ReLU(Conv1(X))        # 1x1 conv, no bias
        Y_attended = sigmoid(Y) * Y        # self-gate; replaces X on the decoder path
        prediction = Conv2(Y)              # 1x1 conv, no bias: the stage's deep prediction

    Both convolutions are bias-free, so the two linear maps compose into the *equivalent kernel*
    ``W_equiv = W2 @ W1`` (sec. 3.3), see :py:meth:`equivalent_kernel`.

    Conv1 starts as the identity (``init="identity"``), so at initialisation ``Y = ReLU(X)`` and the head passes the
    decoder features on, gated, instead of a random projection of them. The paper does not say how the heads are
    initialised; with PyTorch's default (``init="default"``) every EU-Net here first learnt one hippocampus class
    only and found the second one hundreds of steps later than its plain baseline (docs/RESULTS.md, "Head
    initialisation"). Conv2 keeps PyTorch's default.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels C of the decoder-stage features X.
        out_channels: number of classes of the deep prediction.
        init: Conv1's initialisation, ``"identity"`` or ``"default"`` (PyTorch's Kaiming-uniform); see above.

    Examples::

        >>> head = MHEXPlus(spatial_dims=2, in_channels=32, out_channels=2)
        >>> gated, hidden, pred = head(torch.rand(1, 32, 64, 64))
        >>> gated.shape, pred.shape
        (torch.Size([1, 32, 64, 64]), torch.Size([1, 2, 64, 64]))
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, init: str = "identity") -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        # Conv1 is C x C so that the gated features can replace X on the main decoder path.
        self.conv1 = conv_type(in_channels, in_channels, kernel_size=1, bias=False)
        self.conv2 = conv_type(in_channels, out_channels, kernel_size=1, bias=False)
        self._init_conv1(init)

    def reset_parameters(self, init: str = "identity") -> None:
        """(Re-)initialise both convolutions: Conv1 as ``init`` says (``HEAD_INITS``), Conv2 PyTorch's default."""
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()
        self._init_conv1(init)

    def _init_conv1(self, init: str) -> None:
        if init not in HEAD_INITS:
            raise ValueError(f"init must be one of {HEAD_INITS}, got {init!r}.")
        if init == "identity":
            nn.init.dirac_(self.conv1.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: decoder-stage features, shape (B, C, *spatial).

        Returns:
            ``(gated, hidden, prediction)``: sigmoid(Y) * Y and Y, both (B, C, *spatial), and the deep
            prediction Conv2(Y), (B, out_channels, *spatial).
        """
        hidden = torch.relu(self.conv1(x))
        gated = torch.sigmoid(hidden) * hidden
        return gated, hidden, self.conv2(hidden)

    def identity_drift(self) -> float:
        """
        How far Conv1 has moved from the identity it starts at: ``||W1 - I||_F / ||I||_F`` (0 at the identity start;
        about 1 once the off-diagonal entries weigh as much as the diagonal).
        """
        w1 = self.conv1.weight.detach().flatten(1)  # (C, C) for the 1x1 Conv1
        eye = torch.eye(w1.shape[0], w1.shape[1], dtype=w1.dtype, device=w1.device)
        return float(torch.linalg.norm(w1 - eye) / torch.linalg.norm(eye))

    def equivalent_kernel(self) -> torch.Tensor:
        """
        Compose Conv2 into Conv1: ``W_equiv[c] = sum_j W2[c, j] * W1[j]`` (sec. 3.3).

        Written for any Conv1 kernel size, so a k x k Conv1 would give a real k x k equivalent kernel. Conv2 must
        be 1x1 (a pointwise map commutes with the spatial kernel) and Conv1 ungrouped.

        Returns:
            (out_channels, in_channels, *kernel_size): (K, C, 1, 1) or (K, C, 1, 1, 1) for the 1x1 heads here.
        """
        w1, w2 = self.conv1.weight, self.conv2.weight  # (C, C_in, *k), (K, C, 1, ...)
        if any(s != 1 for s in w2.shape[2:]):
            raise ValueError(f"equivalent_kernel needs a 1x1 Conv2, got kernel size {tuple(w2.shape[2:])}.")
        if self.conv1.groups != 1:
            raise ValueError(f"equivalent_kernel needs an ungrouped Conv1, got groups={self.conv1.groups}.")
        return torch.einsum("kj,j...->k...", w2.flatten(1), w1)
