"""
Grad-CAM for segmentation (Seg-Grad-CAM, Vinogradova et al. 2020): the baseline the EU-Net paper compares its
equivalent-kernel CAM with (sec. 4.3, Figs. 3-4).

For class c the target is the class's logit summed over a region M_c, by default the region predicted as c:

.. code-block:: text

    y_c        = sum_{p in M_c} logits[c, p]
    alpha_c[j] = mean_q  d y_c / d A[j, q]           (A: the target layer's activations)
    map_c      = ReLU(sum_j alpha_c[j] * A[j])       -> resized to the input grid, min-max to [0, 1]

MONAI's ``monai.visualize.GradCAM`` is the special case M_c = every voxel, and its hook wrapper leaves hooks on
the model and calls ``backward()`` (filling the parameters' ``.grad``). Here the hook is removed after the call
and the gradient comes from ``torch.autograd.grad`` on the activations only, so the model is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eunets_monai.explain.cam import minmax_normalize
from eunets_monai.networks.nets.base import EUNetBase, resize

__all__ = ["SegGradCAM", "seg_grad_cam", "resolve_layer"]


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> tuple[nn.Module, bool]:
    """
    The module whose activations Grad-CAM weights, and whether its *input* (``True``) or output is used.

    Args:
        model: the network.
        layer: a submodule, a dotted name from ``model.named_modules()`` (e.g. ``"up_blocks.3"``,
            ``"up_blocks.3.conv"``), or ``None``: the input of ``model.output_conv`` (the last decoder stage's
            features, every network of this package has one), else an error.
    """
    if isinstance(layer, nn.Module):
        return layer, False
    if layer is None:
        if isinstance(getattr(model, "output_conv", None), nn.Module):
            return model.output_conv, True
        raise ValueError(f"{type(model).__name__} has no output_conv: pass target_layer (a module or its name).")
    try:
        return model.get_submodule(layer), False
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ValueError(
            f"{type(model).__name__} has no submodule {layer!r}; names look like: {', '.join(names)}, ..."
        ) from None


def _region_masks(logits: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Boolean (B, K, *S) masks M_c: the predicted region of each class, or the given label map's."""
    k = logits.shape[1]
    if region is None:
        if k == 1:  # sigmoid output: foreground where the logit is positive
            return logits > 0
        labels = logits.argmax(1, keepdim=True)
    elif region.dtype == torch.bool and region.shape == logits.shape:
        return region
    elif region.shape[1] == 1 and region.shape[2:] == logits.shape[2:] and region.shape[0] == logits.shape[0]:
        labels = region.long()
        if k == 1:
            return labels > 0
    else:
        raise ValueError(
            f"region must be a label map (B, 1, *S) or a boolean mask (B, K, *S) matching the logits "
            f"{tuple(logits.shape)}, got {tuple(region.shape)} ({region.dtype})."
        )
    return labels == torch.arange(k, device=logits.device).view(1, k, *[1] * (logits.ndim - 2))


def _to_input_grid(model: nn.Module, cam: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resize a layer-grid map to the input grid; for this package's networks, undo their internal padding."""
    if isinstance(model, EUNetBase):
        pads = model.padding(shape)
        padded = tuple(s + a + b for s, (a, b) in zip(shape, pads))
        if cam.shape[2:] != padded:
            cam = resize(cam, padded)
        return cam[(slice(None), slice(None), *(slice(a, a + s) for s, (a, _) in zip(shape, pads)))]
    return resize(cam, shape) if cam.shape[2:] != shape else cam


class SegGradCAM:
    """
    Seg-Grad-CAM for 2D/3D segmentation networks (any ``nn.Module`` returning logits (B, K, *S), or a list whose
    first item is the logits).

    Gradients are switched on locally, so it works under ``torch.no_grad()``; the model's parameters and
    ``.grad`` are not touched (the activations are detached at the target layer and differentiated directly, so
    nothing upstream is back-propagated). Call it on a model in ``eval()`` mode: in train mode batch norm couples
    the images of a batch.

    Args:
        model: the segmentation network.
        target_layer: see :py:func:`resolve_layer`; its output (or input, for the default) must be one tensor
            (B, C, *S') produced once per forward pass.
        normalize: ``"minmax"`` (per image and class to [0, 1]) or ``"none"`` (the ReLU map as is).

    Examples::

        >>> cam = SegGradCAM(UNet(2, 1, 3, channels=(4, 8, 16)).eval(), target_layer="up_blocks.1")
        >>> cam(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None = None, normalize: str = "minmax"):
        if normalize not in ("minmax", "none"):
            raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}.")
        self.model = model
        self.layer, self.use_input = resolve_layer(model, target_layer)
        self.normalize = normalize

    def activations_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model once; return the target activations (a leaf requiring grad) and the logits."""
        captured: list[torch.Tensor] = []

        def grab(t: torch.Tensor) -> torch.Tensor:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"Grad-CAM target layer {type(self.layer).__name__} must give one tensor.")
            leaf = t.detach().requires_grad_(True)  # cut the graph here: only d score / d A is needed
            captured.append(leaf)
            return leaf.clone()  # a non-leaf copy, so an in-place op downstream cannot hit the leaf

        if self.use_input:
            handle = self.layer.register_forward_pre_hook(lambda _m, args: (grab(args[0]), *args[1:]))
        else:
            handle = self.layer.register_forward_hook(lambda _m, _args, out: grab(out))
        try:
            out = self.model(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"Grad-CAM target layer ran {len(captured)} times in one forward pass; need once.")
        logits = out[0] if isinstance(out, (list, tuple)) else out
        return captured[0], logits

    def __call__(
        self, x: torch.Tensor, class_idx: int | Sequence[int] | None = None, region: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            x: input image (B, C_in, *S).
            class_idx: the class(es) to explain; ``None``: all K classes.
            region: ``None`` (each class's predicted region, argmax of the logits, or logit > 0 if K == 1), a label
                map (B, 1, *S), or a boolean mask (B, K, *S).

        Returns:
            (B, len(class_idx), *S) on the input grid (B, 1, *S) for an int ``class_idx``; a class with an empty
            region gets an all-zero map.
        """
        return self.explain(x, class_idx, region)[0]

    def explain(
        self, x: torch.Tensor, class_idx: int | Sequence[int] | None = None, region: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        :py:meth:`__call__` that also returns the logits of the same forward pass.

        Returns:
            ``(maps, logits)``: the maps as :py:meth:`__call__` gives them and the model's logits (B, K, *S'),
            both detached.
        """
        with torch.enable_grad():
            acts, logits = self.activations_and_logits(x)
            k = logits.shape[1]
            classes = range(k) if class_idx is None else [class_idx] if isinstance(class_idx, int) else class_idx
            classes = list(classes)
            if any(not 0 <= c < k for c in classes):
                raise ValueError(f"class_idx {class_idx} out of range for {k} output channel(s).")
            masks = _region_masks(logits.detach(), region)
            maps = []
            for i, c in enumerate(classes):
                # Images of a batch are independent in eval mode, so one backward serves the whole batch.
                score = (logits[:, c] * masks[:, c]).sum()
                if not score.requires_grad:  # the target layer does not reach the logits
                    raise RuntimeError("the logits do not depend on the Grad-CAM target layer's activations.")
                (grad,) = torch.autograd.grad(score, acts, retain_graph=i < len(classes) - 1)
                weights = grad.flatten(2).mean(-1).view(*grad.shape[:2], *[1] * (grad.ndim - 2))
                maps.append(torch.relu((weights * acts.detach()).sum(1)))
        cam = _to_input_grid(self.model, torch.stack(maps, 1), tuple(x.shape[2:]))
        return (minmax_normalize(cam) if self.normalize == "minmax" else cam), logits.detach()


def seg_grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: nn.Module | str | None = None,
    class_idx: int | Sequence[int] | None = None,
    region: torch.Tensor | None = None,
    normalize: str = "minmax",
) -> torch.Tensor:
    """
    One-call form of :py:class:`SegGradCAM`: (B, K or len(class_idx), *S) maps on the input grid.

    Examples::

        >>> seg_grad_cam(net.eval(), torch.rand(1, 1, 16, 16, 16), target_layer="up_blocks.0", class_idx=1).shape
        torch.Size([1, 1, 16, 16, 16])
    """
    return SegGradCAM(model, target_layer, normalize)(x, class_idx, region)
