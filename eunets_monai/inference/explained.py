"""
The explained predictor: one module that maps an image patch to logits, CAMs and uncertainty in one tensor, so
MONAI's ``SlidingWindowInferer`` / ``SliceInferer`` / ``SupervisedEvaluator`` stitch all three like plain logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from torch import nn

from eunets_monai.explain.cam import NORMALIZATIONS, mhex_cam
from eunets_monai.explain.gradcam import SegGradCAM
from eunets_monai.uncertainty.baselines import softmax_entropy
from eunets_monai.uncertainty.collaboration import collaboration_outputs, collaboration_to_unit
from eunets_monai.uncertainty.single_pass import heads_mutual_information

__all__ = ["ExplainedPredictor", "CAM_KINDS", "UNCERTAINTY_METHODS", "DEFAULT_UNCERTAINTY"]

CAM_KINDS = ("mhex", "gradcam")
# Each method's [0, 1] map: entropy H(softmax(z / T)) / log K; heads_mi (H(mean_l P_l) - mean_l H(P_l)) / log K;
# collaboration / collaboration_exact (U + L - 1) / (2 (L - 1)), U the collaboration gradient (sketch / exact).
UNCERTAINTY_METHODS = ("entropy", "heads_mi", "collaboration", "collaboration_exact")
# The validated single-pass winner (docs/uncertainty.md): what the bundles write unless told otherwise.
DEFAULT_UNCERTAINTY = "entropy"
_LEGACY = {"fast": DEFAULT_UNCERTAINTY, "exact": "collaboration_exact"}  # names of the former collaboration modes
_NEEDS_HEADS = {"heads_mi": 2, "collaboration": 2, "collaboration_exact": 2}


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
    - uncertainty (one channel in [0, 1], higher = more doubt; see ``docs/uncertainty.md`` for how each finds errors):
      ``"entropy"`` (default): softmax entropy of the final prediction / log K, with ``temperature`` T fitted on
      validation data if given (:py:func:`~eunets_monai.uncertainty.single_pass.fit_temperature`); free.
      ``"heads_mi"``: mutual information across the MHEX+ heads' deep predictions / log K (>= 2 heads; free).
      ``"collaboration"``: the collaboration gradient's sketch estimate (``num_probes`` JVPs per head pair),
      ``"collaboration_exact"``: its exact value (small inputs only); both mapped as (U + L - 1) / (2 (L - 1)),
      the paper's orientation (:py:func:`~eunets_monai.uncertainty.collaboration.collaboration_gradient`).
      The former names ``"fast"`` (-> the default) and ``"exact"`` (-> ``"collaboration_exact"``) still work, with a
      ``FutureWarning``.

    Gradients are switched on locally where needed, so it works inside inferers that run under
    ``torch.no_grad()``; the output is detached. Put the network in ``eval()`` mode first.

    Args:
        network: a network of this package (``forward_explained``, ``out_channels``); any segmentation
            ``nn.Module`` with an ``out_channels`` attribute for ``cam="gradcam"``, ``uncertainty=None``.
        cam: ``True`` / ``"mhex"``, ``"gradcam"``, or ``False`` / ``None`` (no CAM channels).
        uncertainty: one of :py:data:`UNCERTAINTY_METHODS`, or ``None`` (no uncertainty channel).
        gradcam_layer: Seg-Grad-CAM target layer (a module or dotted name) for ``cam="gradcam"``.
        chunk_size: exact mode: pixels per batched VJP / weight entries per batched JVP.
        cam_normalize: ``"minmax"``: every patch's CAM per class in [0, 1] (under a sliding window each window is
            scaled on its own before blending; exact per volume when the ROI covers the volume). ``"none"``: the raw
            signed multi-scale sum (Seg-Grad-CAM: the unscaled ReLU map), consistent across windows; rescale the
            stitched volume afterwards (e.g. :py:func:`~eunets_monai.explain.cam.minmax_normalize`).
        temperature: ``"entropy"``: divides the logits before the softmax (1 = raw entropy).
        num_probes: ``"collaboration"``: sketch probes per head pair.
        cam_classes: ``cam="mhex"``: the classes whose CAM channels are computed, in order (e.g. ``range(1, K)`` to
            skip the background); default all K. ``cam="gradcam"`` always gives all K.

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
        uncertainty: str | None = DEFAULT_UNCERTAINTY,
        gradcam_layer: nn.Module | str | None = None,
        chunk_size: int = 256,
        cam_normalize: str = "minmax",
        temperature: float = 1.0,
        num_probes: int = 32,
        cam_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.cam = "mhex" if cam is True else (cam or None)
        if self.cam not in (None, *CAM_KINDS):
            raise ValueError(f"cam must be True, False, None or one of {CAM_KINDS}, got {cam!r}.")
        if uncertainty in _LEGACY:
            warnings.warn(
                f"uncertainty={uncertainty!r} is a former name; using {_LEGACY[uncertainty]!r} "
                f"(see UNCERTAINTY_METHODS).",
                FutureWarning,
                stacklevel=2,
            )
            uncertainty = _LEGACY[uncertainty]
        if uncertainty not in (None, *UNCERTAINTY_METHODS):
            raise ValueError(f"uncertainty must be None or one of {UNCERTAINTY_METHODS}, got {uncertainty!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.uncertainty, self.temperature, self.num_probes = uncertainty, float(temperature), num_probes
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
        if num_heads < _NEEDS_HEADS.get(uncertainty, 0):
            raise ValueError(
                f"{name} has {num_heads} MHEX+ head(s); uncertainty={uncertainty!r} needs >= 2 (mhex=True); pass "
                f"uncertainty='entropy' or None."
            )
        self._gradcam = SegGradCAM(network, gradcam_layer, cam_normalize) if self.cam == "gradcam" else None
        self.cam_classes = None
        if cam_classes is not None and self.cam == "mhex":
            self.cam_classes = [int(c) for c in cam_classes]
            if not self.cam_classes or not all(0 <= c < num_classes for c in self.cam_classes):
                raise ValueError(f"cam_classes must be class indices in [0, {num_classes}), got {list(cam_classes)}.")
        num_cams = len(self.cam_classes) if self.cam_classes is not None else num_classes
        sizes = {"logits": num_classes, "cam": num_cams if self.cam else 0, "uncertainty": 1 if uncertainty else 0}
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
        if self.uncertainty in ("collaboration", "collaboration_exact"):
            mode = "sketch" if self.uncertainty == "collaboration" else "exact"
            outputs, cosines = collaboration_outputs(
                self.network, x, mode=mode, num_probes=self.num_probes, chunk_size=self.chunk_size
            )
            unc = collaboration_to_unit(cosines, len(self.network.heads) - 1)
        elif self.uncertainty == "heads_mi":
            with torch.no_grad():
                outputs = self.network.forward_explained(x)
            unc = heads_mutual_information(outputs, normalize=True)
        if self.cam == "mhex":
            with torch.no_grad():
                outputs = self.network.forward_explained(x) if outputs is None else outputs
                cam = mhex_cam(outputs, self.cam_normalize, self.cam_classes)
        elif self.cam == "gradcam":
            cam, logits = self._gradcam.explain(x)
        if outputs is not None:
            logits = outputs.logits
        elif logits is None:
            with torch.no_grad():
                out = self.network(x)
            logits = out[0] if isinstance(out, (list, tuple)) else out
        if self.uncertainty == "entropy":
            z = logits.detach().float()
            z = torch.cat([torch.zeros_like(z), z], 1) if z.shape[1] == 1 else z  # sigmoid = softmax of (0, z)
            unc = softmax_entropy(z / self.temperature, normalize=True)
        # float32 whatever the autocast dtype: CAMs and uncertainty are not rounded to bfloat16/float16
        parts = [t.detach().float() for t in (logits, cam, unc) if t is not None]
        return torch.cat(parts, 1)
