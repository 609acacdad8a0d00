"""
The explained predictor: one module that maps an image patch to logits, CAMs and uncertainty in one tensor, so
MONAI's ``SlidingWindowInferer`` / ``SliceInferer`` / ``SupervisedEvaluator`` stitch all three like plain logits.
"""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from torch import nn

from eunets_monai.explain.cam import NORMALIZATIONS, mhex_cam
from eunets_monai.explain.gradcam import SegGradCAM
from eunets_monai.uncertainty.collaboration import MODES, collaboration_outputs, cosines_to_uncertainty

__all__ = ["ExplainedPredictor", "CAM_KINDS"]

CAM_KINDS = ("mhex", "gradcam")


class ExplainedPredictor(nn.Module):
    """
    Wrap a segmentation network so that one call returns

    .. code-block:: text

        (B, K + K + 1, *S) = [ logits (K) | CAM per class (K), [0, 1] by default | uncertainty in [0, 1] (1) ]

    (channels of a disabled part are left out; :py:attr:`channel_slices` names them).

    - CAM ``True`` / ``"mhex"``: the multi-scale equivalent-kernel CAM (:py:func:`~eunets_monai.explain.cam.mhex_cam`)
      from the same forward pass. A plain network (no MHEX+ heads) has no equivalent kernel: this raises a
      ``ValueError`` at construction rather than silently switching method; ask for ``cam="gradcam"``
      (Seg-Grad-CAM at ``gradcam_layer``, default: the input of the output conv) to explain a plain network.
    - uncertainty ``"fast"`` / ``"exact"``: the collaboration gradient
      (:py:func:`~eunets_monai.uncertainty.collaboration.collaboration_gradient`); needs >= 2 MHEX+ heads. In fast
      mode logits, CAM and uncertainty share one forward pass (+ one backward pass per head).

    Gradients are switched on locally where needed, so it works inside inferers that run under
    ``torch.no_grad()``; the output is detached. Put the network in ``eval()`` mode first.

    Args:
        network: a network of this package (``forward_explained``, ``out_channels``); any segmentation
            ``nn.Module`` with an ``out_channels`` attribute for ``cam="gradcam"``, ``uncertainty=None``.
        cam: ``True`` / ``"mhex"``, ``"gradcam"``, or ``False`` / ``None`` (no CAM channels).
        uncertainty: ``"fast"``, ``"exact"``, or ``None`` (no uncertainty channel).
        gradcam_layer: Seg-Grad-CAM target layer (a module or dotted name) for ``cam="gradcam"``.
        chunk_size: exact mode: pixels per batched VJP / weight entries per batched JVP.
        cam_normalize: ``"minmax"``: every patch's CAM per class in [0, 1] (under a sliding window each window is
            scaled on its own before blending; exact per volume when the ROI covers the volume). ``"none"``: the raw
            signed multi-scale sum (Seg-Grad-CAM: the unscaled ReLU map), consistent across windows; rescale the
            stitched volume afterwards (e.g. :py:func:`~eunets_monai.explain.cam.minmax_normalize`).

    Examples::

        >>> predictor = ExplainedPredictor(EUNet(3, 1, 2, channels=(8, 16, 32)).eval())
        >>> out = SlidingWindowInferer(roi_size=(32, 32, 32))(volume, predictor)   # (1, 5, *volume_shape)
        >>> mask = out[:, predictor.channel_slices["logits"]].argmax(1)
        >>> uncertainty = out[:, predictor.channel_slices["uncertainty"]]
    """

    def __init__(
        self,
        network: nn.Module,
        cam: bool | str | None = True,
        uncertainty: str | None = "fast",
        gradcam_layer: nn.Module | str | None = None,
        chunk_size: int = 256,
        cam_normalize: str = "minmax",
    ) -> None:
        super().__init__()
        self.network = network
        self.cam = "mhex" if cam is True else (cam or None)
        if self.cam not in (None, *CAM_KINDS):
            raise ValueError(f"cam must be True, False, None or one of {CAM_KINDS}, got {cam!r}.")
        if uncertainty not in (None, *MODES):
            raise ValueError(f"uncertainty must be None or one of {MODES}, got {uncertainty!r}.")
        self.uncertainty = uncertainty
        self.chunk_size = chunk_size
        if cam_normalize not in NORMALIZATIONS:
            raise ValueError(f"cam_normalize must be one of {NORMALIZATIONS}, got {cam_normalize!r}.")
        self.cam_normalize = cam_normalize
        num_classes = getattr(network, "out_channels", None)
        if not isinstance(num_classes, int):
            raise TypeError(f"{type(network).__name__} has no integer out_channels attribute (number of classes K).")
        heads = getattr(network, "heads", None)
        num_heads = 0 if heads is None else len(heads)
        name = type(network).__name__
        if self.cam == "mhex" and num_heads == 0:
            raise ValueError(
                f"{name} has no MHEX+ heads, so it has no equivalent-kernel CAM: build it with mhex=True, or pass "
                f"cam='gradcam' (Seg-Grad-CAM) or cam=False."
            )
        if uncertainty is not None and num_heads < 2:
            raise ValueError(
                f"{name} has {num_heads} MHEX+ head(s); the collaboration-gradient uncertainty needs >= 2 "
                f"(mhex=True); pass uncertainty=None."
            )
        self._gradcam = SegGradCAM(network, gradcam_layer, cam_normalize) if self.cam == "gradcam" else None
        sizes = {"logits": num_classes, "cam": num_classes if self.cam else 0, "uncertainty": 1 if uncertainty else 0}
        self.channel_slices: dict[str, slice] = {}
        start = 0
        for key, size in sizes.items():
            if size:
                self.channel_slices[key] = slice(start, start + size)
                start += size
        self.num_channels = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: image patch (B, C_in, *S).

        Returns:
            (B, :py:attr:`num_channels`, *S), detached: logits | CAM | uncertainty as enabled.
        """
        if isinstance(x, MetaTensor):  # inferers may pass MetaTensors; autograd and vmap want plain tensors
            x = x.as_tensor()
        logits = cam = unc = outputs = None
        if self.uncertainty is not None:
            outputs, cosines = collaboration_outputs(self.network, x, mode=self.uncertainty, chunk_size=self.chunk_size)
            unc = cosines_to_uncertainty(cosines, len(self.network.heads) - 1)
        if self.cam == "mhex":
            with torch.no_grad():
                outputs = self.network.forward_explained(x) if outputs is None else outputs
                cam = mhex_cam(outputs, self.cam_normalize)
        elif self.cam == "gradcam":
            cam, logits = self._gradcam.explain(x)
        if outputs is not None:
            logits = outputs.logits
        elif logits is None:
            with torch.no_grad():
                out = self.network(x)
            logits = out[0] if isinstance(out, (list, tuple)) else out
        parts = [logits.detach()] + [p.detach().to(logits.dtype) for p in (cam, unc) if p is not None]
        return torch.cat(parts, 1)
