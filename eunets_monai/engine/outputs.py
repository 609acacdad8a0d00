"""Selecting the final segmentation output from what a network returns in training or evaluation mode."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["final_output"]


def final_output(pred: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """
    The final logits of a network output: ``pred[0]`` for the deep-supervision list an EU-Net returns in training
    mode (``[logits, deep_pred_shallowest, ..., deep_pred_deepest]``), else ``pred`` itself.

    Args:
        pred: logits (B, K, *S) or a list/tuple whose first item is the logits.

    Returns:
        the final logits, (B, K, *S) (or (K, *S) for a decollated item).

    Examples::

        logits = final_output(net(x))  # works in train and eval mode
    """
    if isinstance(pred, (list, tuple)):
        if not pred:
            raise ValueError("final_output got an empty list of network outputs.")
        return pred[0]
    return pred
