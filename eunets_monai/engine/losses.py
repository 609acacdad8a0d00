"""
The training losses: MONAI's Dice / CE / DiceCE / focal losses and BCE + Dice with smoothing 1 (paper 003,
eqs. 10-11), wrapped in MONAI's ``DeepSupervisionLoss`` over the final output and every MHEX+ head.

Targets are integer class maps (B, 1, *S) (what the presets give); predictions are logits (B, K, *S) or the list an
EU-Net returns in training mode, ``[logits, deep_pred_shallowest, ..., deep_pred_deepest]``.

Deep-supervision weights (MONAI ``DeepSupervisionLoss``), listed from the final output down the heads:

- ``"exp"`` (default): 1, 0.5, 0.25, 0.125, 0.0625, 0.0625, ... (halved per level, floored at 1/16);
- ``"two"``: 1, 0.5, 0.5, ...; ``"same"``: 1, 1, 1, ...; or explicit ``weights=[...]``.

Every head's weight is further multiplied by ``head_scale`` (1 by default), which a schedule may change during
training: :py:func:`ds_warmup_scale` ramps it from 0 to 1 (the heads join the loss gradually), set per step by the
bundles' ``DeepSupervisionScheduleHandler`` and by the study loop alike.

For a 5-level EU-Net (4 MHEX+ heads) "exp" gives ``1 * L(final) + 0.5 * L(head at the shallowest decoder stage)
+ 0.25 * L(next) + 0.125 * L(next) + 0.0625 * L(deepest head)``; every head's prediction is already on the output
grid, so the same full-resolution label is used for all terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss, FocalLoss
from monai.networks import one_hot
from torch import nn
from torch.nn.modules.loss import _Loss

from eunets_monai.engine.outputs import final_output

__all__ = ["LOSSES", "CrossEntropyLoss", "BCEDiceLoss", "EUDeepSupervisionLoss", "get_loss", "ds_warmup_scale"]


def _check_target(input: torch.Tensor, target: torch.Tensor) -> None:
    if target.ndim != input.ndim or target.shape[1] != 1:
        raise ValueError(
            f"loss target must be a class map (B, 1, *S) for logits (B, K, *S) {tuple(input.shape)}, "
            f"got {tuple(target.shape)}."
        )


class CrossEntropyLoss(_Loss):
    """
    Softmax cross-entropy between logits (B, K, *S) and an integer class map (B, 1, *S) (``torch``'s
    ``F.cross_entropy`` with the channel axis of the target dropped).

    Args:
        weight: optional per-class weights (K,).
        label_smoothing: as in ``torch.nn.CrossEntropyLoss``.

    Examples::

        loss = CrossEntropyLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8)))
    """

    def __init__(self, weight: torch.Tensor | Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float))
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_target(input, target)
        return F.cross_entropy(input, target[:, 0].long(), weight=self.weight, label_smoothing=self.label_smoothing)


class BCEDiceLoss(_Loss):
    """
    Paper 003, eqs. 10-11: ``L(p, g) = L_bce(p, g) + L_dice(p, g)`` with
    ``L_dice = 1 - (2 * sum_i p_i g_i + theta) / (sum_i p_i^2 + sum_i g_i^2 + theta)``, ``theta = 1``,
    where ``p = sigmoid(logits)`` per channel and ``g`` the one-hot label (each class a binary problem).

    ``L_bce`` is the mean binary cross-entropy over all voxels and channels; ``L_dice`` is eq. 11 per image and
    channel (sums over the image's voxels), averaged over images and channels (MONAI ``DiceLoss`` with
    ``sigmoid=True, squared_pred=True, smooth_nr=smooth_dr=1``).

    Args:
        include_background: keep channel 0 in both terms (with K = 1 logits channel the label is used as is).
        smooth: theta of eq. 11.
        lambda_bce, lambda_dice: term weights (1 and 1 in eq. 10).

    Examples::

        loss = BCEDiceLoss()(torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 1, 8, 8)))
    """

    def __init__(
        self, include_background: bool = True, smooth: float = 1.0, lambda_bce: float = 1.0, lambda_dice: float = 1.0
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.lambda_bce, self.lambda_dice = lambda_bce, lambda_dice
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_target(input, target)
        k = input.shape[1]
        g = target.float() if k == 1 else one_hot(target.long(), num_classes=k, dtype=input.dtype)
        if not self.include_background and k > 1:
            input, g = input[:, 1:], g[:, 1:]
        bce = F.binary_cross_entropy_with_logits(input, g)
        return self.lambda_bce * bce + self.lambda_dice * self.dice(input, g)


class EUDeepSupervisionLoss(DeepSupervisionLoss):
    """
    MONAI's ``DeepSupervisionLoss`` (weighted sum over ``[final, head_1, ...]``) that also takes integer targets
    when a level's resolution differs (nearest resizing on a float copy), checks the target layout, and, with
    ``deep_supervision=False``, uses only the final output of an EU-Net list.

    Args:
        loss: loss on (logits (B, K, *S), target (B, 1, *S)).
        weight_mode: "exp" | "two" | "same" (see the module docstring).
        weights: explicit per-level weights, final output first (overrides ``weight_mode``).
        deep_supervision: False trains on the final output alone.
        head_scale: factor on every head's weight (not the final output's); schedules set it per step.
    """

    def __init__(
        self,
        loss: nn.Module,
        weight_mode: str = "exp",
        weights: Sequence[float] | None = None,
        deep_supervision: bool = True,
        head_scale: float = 1.0,
    ) -> None:
        if weight_mode not in ("exp", "two", "same"):
            raise ValueError(f"weight_mode must be 'exp', 'two' or 'same', got {weight_mode!r}.")
        super().__init__(loss, weight_mode=weight_mode, weights=None if weights is None else list(weights))
        self.deep_supervision = deep_supervision
        self.head_scale = head_scale

    def get_weights(self, levels: int = 1) -> list[float]:
        weights = super().get_weights(levels)
        return [w if i == 0 else w * self.head_scale for i, w in enumerate(weights)]

    def get_loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape[2:] != target.shape[2:]:
            target = F.interpolate(target.float(), size=input.shape[2:], mode=self.interp_mode).to(target.dtype)
        return self.loss(input, target)

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not self.deep_supervision:
            input = final_output(input)
        if isinstance(input, (list, tuple)):
            input = list(input)
        _check_target(final_output(input), target)
        return super().forward(input, target)


LOSSES = ("dice", "ce", "dicece", "bcedice", "focal")


def _base_loss(name: str, **kwargs) -> nn.Module:
    if name == "dice":
        return DiceLoss(**{"to_onehot_y": True, "softmax": True, **kwargs})
    if name == "dicece":
        return DiceCELoss(**{"to_onehot_y": True, "softmax": True, **kwargs})
    if name == "focal":
        return FocalLoss(**{"to_onehot_y": True, "use_softmax": True, **kwargs})
    if name == "ce":
        return CrossEntropyLoss(**kwargs)
    if name == "bcedice":
        return BCEDiceLoss(**kwargs)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}.")


def ds_warmup_scale(iteration: int, warmup_iters: int) -> float:
    """
    The heads' loss-weight factor at ``iteration`` (1-based, as ignite counts) of a linear deep-supervision warm-up:
    ``min(1, (iteration - 1) / warmup_iters)``, so the first step trains the final output alone and the heads carry
    their full weight from step ``warmup_iters + 1`` on; 1 throughout when ``warmup_iters`` is 0.

    Examples::

        loss_fn.head_scale = ds_warmup_scale(engine.state.iteration, 100)
    """
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}.")
    if warmup_iters == 0:
        return 1.0
    return min(1.0, max(0, iteration - 1) / warmup_iters)


def get_loss(
    name: str = "dicece",
    deep_supervision: bool = True,
    weight_mode: str = "exp",
    weights: Sequence[float] | None = None,
    **kwargs,
) -> nn.Module:
    """
    The training loss by name, always taking logits (B, K, *S) or an EU-Net's training list and a class map
    (B, 1, *S).

    - "dice": MONAI ``DiceLoss(to_onehot_y=True, softmax=True)``;
    - "ce": softmax cross-entropy (:py:class:`CrossEntropyLoss`);
    - "dicece": MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` (Dice + CE, weights 1 and 1);
    - "bcedice": BCE + Dice with smoothing 1, paper 003 eqs. 10-11 (:py:class:`BCEDiceLoss`);
    - "focal": MONAI ``FocalLoss(to_onehot_y=True, use_softmax=True)`` (gamma 2).

    Args:
        name: one of ``LOSSES``.
        deep_supervision: weight the final output and every MHEX+ head's prediction (MONAI
            ``DeepSupervisionLoss``); False uses the final output only.
        weight_mode: deep-supervision weights from the final output down: "exp" = 1, 0.5, 0.25, ...
            (floored at 0.0625), "two" = 1, 0.5, 0.5, ..., "same" = 1, 1, ...
        weights: explicit per-level weights (final output first), overriding ``weight_mode``.
        kwargs: passed to the underlying loss (e.g. ``include_background``, ``lambda_dice``, ``gamma``).

    Returns:
        an ``nn.Module`` ``loss(pred, target) -> scalar``.

    Examples::

        loss_fn = get_loss("bcedice")
        loss = loss_fn(net(x), label)  # net in train mode returns [logits, *deep predictions]
    """
    return EUDeepSupervisionLoss(
        _base_loss(name, **kwargs), weight_mode=weight_mode, weights=weights, deep_supervision=deep_supervision
    )
