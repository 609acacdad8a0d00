"""
Optimiser parameter groups for EU-Nets: the MHEX+ heads' own learning rate.

Why the heads need one: each head's Conv1 (C x C, 1x1, no bias, no norm after it) sits on the decoder's main path
(``sigmoid(Y) * Y`` with ``Y = ReLU(Conv1(X))`` replaces ``X``) and starts as the identity. Adam moves every
weight by about the learning rate per step whatever its gradient's size, so at the rate the rest of the network
needs (the convolutions there are followed by a normalisation and do not care about their scale) the C - 1
off-diagonal entries of each Conv1 row drift as far as its diagonal entry within a few hundred steps: the
decoder features are replaced by a random projection, half cut by the ReLU, at every stage. The EU-Nets then
learnt the second hippocampus class hundreds of steps after their plain baselines, with or without deep
supervision, while the same network with residual decoders and no heads learnt it as fast as the plain U-Net
(docs/RESULTS.md, "The slow start"). A smaller rate for the heads keeps Conv1 near the identity early on.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_HEAD_LR", "default_head_lr", "param_groups"]

# The heads' rate relative to the rest, by spatial dims, that the bundles and the study use by default. 2D: of the
# rates tried (1, 0.1, 0.01; U-Net, 3 folds) the one with no slow start and no loss against the plain U-Net. 3D: the
# full rate, since at 0.01 the 3D EU-Net ended below the U-Net (-0.37 points at 600 steps) and the bundle's 400-step
# real-data check fell from 0.82 to 0.51-0.76 (docs/RESULTS.md, "The slow start").
DEFAULT_HEAD_LR = {2: 0.01, 3: 1.0}


def default_head_lr(spatial_dims: int) -> float:
    """The heads' default learning-rate multiple for a 2D or 3D network (``DEFAULT_HEAD_LR``)."""
    if spatial_dims not in DEFAULT_HEAD_LR:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    return DEFAULT_HEAD_LR[spatial_dims]


def param_groups(net: torch.nn.Module, lr: float, head_lr: float = 1.0) -> list[dict]:
    """
    Parameter groups for a ``torch.optim`` optimiser: the MHEX+ heads (``net.heads``) at ``lr * head_lr``,
    everything else at ``lr``. Each group records its ``lr_scale`` (1 or ``head_lr``) so that a schedule which sets
    rates directly keeps the ratio; MONAI/PyTorch schedulers that multiply rates (``ReduceLROnPlateau``) keep it
    anyway.

    Args:
        net: a network of this package (plain networks have ``heads = None``: one group).
        lr: the base learning rate.
        head_lr: the heads' rate as a multiple of ``lr``.

    Returns:
        one group, or two (body, heads) when the network has heads and ``head_lr != 1``.

    Examples::

        opt = torch.optim.Adam(param_groups(net, lr=3e-3, head_lr=0.1))
    """
    if head_lr <= 0:
        raise ValueError(f"head_lr must be > 0, got {head_lr}.")
    heads = getattr(net, "heads", None)
    if heads is None or head_lr == 1.0:
        return [{"params": list(net.parameters()), "lr": lr, "lr_scale": 1.0}]
    head_params = list(heads.parameters())
    ids = {id(p) for p in head_params}
    body = [p for p in net.parameters() if id(p) not in ids]
    return [
        {"params": body, "lr": lr, "lr_scale": 1.0},
        {"params": head_params, "lr": lr * head_lr, "lr_scale": head_lr},
    ]
