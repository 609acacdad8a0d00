"""
Batch inference of a bundle's network over a folder or datalist of NIfTI images, case by case: segmentation mask,
equivalent-kernel CAMs and uncertainty map per case, written with the input's geometry (MONAI's ``Invertd``
undoes the preprocessing), each file written atomically (temporary file, then ``os.replace``). A bad case
(unreadable file, wrong dimensions, NaN...) logs one line naming the file and the reason; the other cases finish.

Used by every bundle's ``configs/inference.json``::

    python -m monai.bundle run --config_file bundles/eunet_spleen/configs/inference.json \\
        --input_dir /data/images --output_dir /data/eunet_outputs
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import nn

from eunets_monai.data.checks import error_summary
from eunets_monai.data.presets import get_invertd
from eunets_monai.engine.precision import autocast, autocast_dtype
from eunets_monai.explain.cam import minmax_normalize
from eunets_monai.inference.explained import DEFAULT_UNCERTAINTY, ExplainedPredictor
from eunets_monai.utils import atomic_write

__all__ = [
    "BatchInference",
    "BatchInferenceError",
    "BatchResult",
    "collect_images",
    "load_checkpoint",
    "case_name",
    "atomic_write_nifti",
    "normalize_volume_cam",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class BatchInferenceError(RuntimeError):
    """A problem that stops the whole batch (no images, missing checkpoint); the message is one line."""


@dataclass
class BatchResult:
    """
    What a batch run produced.

    Attributes:
        outputs: case name -> {"mask": path, "cam": path, "uncertainty": path} (only the parts that were computed).
        failures: case image path -> one-line reason, for the cases that could not be processed.
    """

    outputs: dict[str, dict[str, Path]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def case_name(path: str | os.PathLike) -> str:
    """File name without the NIfTI suffix: ``/d/hippocampus_025.nii.gz`` -> ``hippocampus_025``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def collect_images(source: str | os.PathLike | Sequence, section: str = "test") -> list[str]:
    """
    The image paths to run on, in a stable order.

    Args:
        source: a folder (every ``*.nii.gz`` / ``*.nii`` in it, sorted), a JSON datalist (an MSD ``dataset.json``,
            whose ``section`` is used, or a plain list of paths / ``{"image": path}`` dicts; relative paths are
            taken relative to the JSON file), a single NIfTI file, or a Python list of paths / dicts.
        section: the ``dataset.json`` key to read when ``source`` is an MSD ``dataset.json``.

    Returns:
        absolute image paths.

    Raises:
        BatchInferenceError: one line when the source does not exist or holds no image.

    Examples::

        images = collect_images("eunets_monai/data/sample/hippocampus/imagesTs")
    """
    if isinstance(source, (list, tuple)):
        items, base = list(source), Path.cwd()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise BatchInferenceError(f"input not found: {path}; give a folder of NIfTI images or a JSON datalist.")
        if path.is_dir():
            items = sorted(str(p) for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
            if not items:
                raise BatchInferenceError(f"no NIfTI images (*.nii.gz, *.nii) in folder {path.resolve()}.")
            return [str(Path(p).resolve()) for p in items]
        if path.name.endswith(NIFTI_SUFFIXES):
            return [str(path.resolve())]
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BatchInferenceError(f"cannot read datalist {path}: {type(e).__name__}: {e}") from None
        items = content.get(section, []) if isinstance(content, Mapping) else content
        base = path.resolve().parent
    images = []
    for item in items:
        image = item.get("image") if isinstance(item, Mapping) else item
        if not isinstance(image, (str, os.PathLike)):
            raise BatchInferenceError(f"datalist entry without an image path: {item!r} (in {source}).")
        image_path = Path(image).expanduser()
        images.append(str(image_path if image_path.is_absolute() else (base / image_path).resolve()))
    if not images:
        raise BatchInferenceError(f"no images listed in {source} (section {section!r}).")
    return images


def load_checkpoint(network: nn.Module, ckpt_path: str | os.PathLike, key: str = "model") -> nn.Module:
    """
    Load weights saved by the bundle's ``CheckpointSaver`` (a bare state dict, or a dict holding it under ``key``).

    Raises:
        BatchInferenceError: one line when the file is missing or does not hold weights for ``network``.

    Examples::

        load_checkpoint(net, "bundles/eunet_spleen/models/model.pt")
    """
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise BatchInferenceError(
            f"checkpoint not found: {path}; train the bundle first (configs/train.json) or pass --ckpt_path FILE."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
        network.load_state_dict(state)
    except Exception as e:
        reason = " ".join(str(e).split())[:300]
        raise BatchInferenceError(f"cannot load checkpoint {path}: {type(e).__name__}: {reason}") from None
    return network


def atomic_write_nifti(array: torch.Tensor | np.ndarray, meta: Mapping, path: Path, dtype: np.dtype) -> Path:
    """
    Write a channel-first array (C, *spatial) as NIfTI with the affine in ``meta`` (the input's, after ``Invertd``)
    through nibabel, as stored: no resampling (MONAI's writer resampled, and failed for sagittal/coronal stacks) and
    no squeezing (single-slice inputs keep their shape). The data go to a temporary file beside ``path`` that
    replaces ``path`` only once complete.

    A single channel is written as a 3D volume; C > 1 channels become the last (4th) NIfTI axis.
    """
    data = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    affine = meta["affine"]
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    image = nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)))


class BatchInference:
    """
    Run a segmentation network over many NIfTI images, one case at a time.

    For each case: ``preprocessing`` (a dict transform on key ``"image"``, e.g. the task preset's "infer"
    stage) -> ``inferer(image, predictor)`` on ``device`` -> softmax of the logits (and, for an EU network, the
    CAM and uncertainty channels of :py:class:`~eunets_monai.inference.explained.ExplainedPredictor`) ->
    ``Invertd`` back to the input's grid -> ``{case}_seg.nii.gz`` (argmax class indices, uint8),
    ``{case}_cam.nii.gz`` (K channels on the 4th axis, float32) and ``{case}_uncertainty.nii.gz`` (in [0, 1],
    float32) under ``output_dir``.

    Args:
        network: the segmentation network (any :py:class:`~eunets_monai.networks.nets.base.EUNetBase`).
        preprocessing: invertible dict transform producing a channel-first MetaTensor "image".
        inferer: a MONAI inferer (``SlidingWindowInferer`` / ``SliceInferer``) called as ``inferer(x, predictor)``.
        output_dir: where the NIfTI files go (created if needed).
        ckpt_path: weights to load before the first case; None keeps the network's current weights.
        cam: write CAMs (EU networks only).
        uncertainty: None or one of ``ExplainedPredictor``'s methods (default: softmax entropy, see
            ``docs/uncertainty.md``).
        device: torch device; default cuda when available, else cpu.
        exit_on_error: turn a batch-stopping error into ``SystemExit`` with its one-line message (used by the
            bundle CLI so the user sees one line, not a traceback); otherwise raise :py:class:`BatchInferenceError`.
        section: ``dataset.json`` section read when the input is an MSD ``dataset.json``.
        precision: the network's compute dtype (``eunets_monai.engine.precision.PRECISIONS``; "auto": bfloat16 on
            CPUs with bf16 units, float16 on CUDA); stitching, softmax and inversion stay float32.

    Examples::

        runner = BatchInference(net, get_transforms("hippocampus", "infer"), get_inferer("hippocampus"), "out")
        result = runner("eunets_monai/data/sample/hippocampus/imagesTs")
    """

    def __init__(
        self,
        network: nn.Module,
        preprocessing: Compose,
        inferer,
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        cam: bool = True,
        uncertainty: str | None = DEFAULT_UNCERTAINTY,
        device: str | torch.device | None = None,
        exit_on_error: bool = False,
        section: str = "test",
        precision: str = "fp32",
    ) -> None:
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.output_dir = Path(output_dir)
        self.ckpt_path = ckpt_path
        self.cam = cam
        self.uncertainty = uncertainty
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.exit_on_error = exit_on_error
        self.section = section
        self.dtype = autocast_dtype(precision, self.device)
        self.invert = get_invertd(preprocessing, keys="pred", nearest_interp=False)

    def build_predictor(self) -> tuple[nn.Module, dict[str, slice]]:
        """The module the inferer runs and its output channels: ExplainedPredictor for an EU net, else the net."""
        k = self.network.out_channels
        heads = getattr(self.network, "heads", None)
        if (self.cam or (self.uncertainty is not None and heads is not None and len(heads) >= 2)) and heads:
            uncertainty = self.uncertainty
            if uncertainty is not None and len(heads) < 2:
                logger.warning("the collaboration-gradient uncertainty needs >= 2 MHEX+ heads: writing no map.")
                uncertainty = None
            # Raw CAMs, scaled once per volume after stitching (a per-window scaling differs from window to window).
            predictor = ExplainedPredictor(self.network, cam=self.cam, uncertainty=uncertainty, cam_normalize="none")
            return predictor, dict(predictor.channel_slices)
        return self.network, {"logits": slice(0, k)}

    def __call__(self, source: str | os.PathLike | Sequence) -> BatchResult:
        """Run on every image of ``source`` (see :py:func:`collect_images`); returns the :py:class:`BatchResult`."""
        try:
            images = collect_images(source, self.section)
            if self.ckpt_path is not None:
                load_checkpoint(self.network, self.ckpt_path)
        except BatchInferenceError as e:
            if self.exit_on_error:
                raise SystemExit(f"error: {e}") from None
            raise
        self.network.to(self.device).eval()
        predictor, slices = self.build_predictor()
        result = BatchResult()
        for i, image in enumerate(images, 1):
            try:
                result.outputs[case_name(image)] = self.run_case(image, predictor, slices)
                logger.info(f"[{i}/{len(images)}] {case_name(image)} -> {self.output_dir}")
            except Exception as e:  # one bad case must not lose the others
                result.failures[image] = _one_line_error(e)
                logger.error(f"[{i}/{len(images)}] skipped {image}: {result.failures[image]}")
        done = len(result.outputs)
        logger.info(f"batch inference: {done} of {len(images)} case(s) written to {self.output_dir.resolve()}")
        if result.failures and self.exit_on_error:
            raise SystemExit(f"error: {len(result.failures)} of {len(images)} case(s) failed (see the log above).")
        return result

    def run_case(self, image_path: str, predictor: nn.Module, slices: Mapping[str, slice]) -> dict[str, Path]:
        """Process one case and return its written files (written only when every part succeeded)."""
        data = self.preprocessing({"image": image_path})
        image = data["image"]
        if not bool(torch.isfinite(torch.as_tensor(image)).all()):
            raise ValueError(f"{image_path}: image has NaN/Inf values after preprocessing.")
        # The explained predictor switches gradients on itself (CAM/uncertainty backward passes): no no_grad around it.
        with torch.no_grad() if predictor is self.network else nullcontext(), autocast(self.dtype, self.device):
            out = self.inferer(image.unsqueeze(0).to(self.device), predictor)
        out = torch.as_tensor(out).detach()[0].float().cpu()
        parts = [torch.softmax(out[slices["logits"]], dim=0)]
        names = ["probs"]
        if "cam" in slices:
            parts.append(normalize_volume_cam(out[slices["cam"]]))
            names.append("cam")
        if "uncertainty" in slices:
            parts.append(out[slices["uncertainty"]].clamp(0.0, 1.0))
            names.append("uncertainty")
        sizes = [p.shape[0] for p in parts]
        # One Invertd call brings every map back to the input's grid (linear interpolation).
        data["pred"] = MetaTensor(torch.cat(parts), meta=dict(image.meta))
        inverted = self.invert(data)["pred"]
        meta = dict(inverted.meta) if isinstance(inverted, MetaTensor) else dict(image.meta)
        maps = dict(zip(names, torch.split(torch.as_tensor(inverted), sizes)))
        name = case_name(image_path)
        to_write = [(f"{name}_seg.nii.gz", "mask", maps["probs"].argmax(0, keepdim=True), np.uint8)]
        if "cam" in maps:
            to_write.append((f"{name}_cam.nii.gz", "cam", maps["cam"], np.float32))
        if "uncertainty" in maps:
            to_write.append((f"{name}_uncertainty.nii.gz", "uncertainty", maps["uncertainty"], np.float32))
        written = {}
        for filename, key, array, dtype in to_write:
            written[key] = atomic_write_nifti(array, meta, self.output_dir / filename, dtype)
        return written


def normalize_volume_cam(raw: torch.Tensor) -> torch.Tensor:
    """
    Per-volume CAM scaling, after stitching: ReLU (positive evidence), then min-max per class over the whole volume
    to [0, 1] (one scale for the volume, unlike a per-window scaling, which gives every window its own maximum).

    Args:
        raw: stitched raw CAMs (K, *S).

    Returns:
        (K, *S) in [0, 1]; a class without positive evidence is all zeros.

    Examples::

        cam = normalize_volume_cam(stitched[0, predictor.channel_slices["cam"]])
    """
    return minmax_normalize(torch.relu(raw)[None])[0]


def _one_line_error(e: BaseException) -> str:
    return error_summary(e)[:500]
