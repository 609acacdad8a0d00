"""
MONAI transform, inferer and post-processing presets for the MSD tasks the project trains on.

Every pipeline works on dicts with ``"image"`` (and ``"label"``) file paths, as produced by
:py:func:`eunets_monai.data.datalists.msd_datalist`:

- ``"train"``: load and check, RAS, resample to the task spacing, intensity preset, (CT: foreground crop), pad to
  the patch size, ``num_samples`` positive/negative-balanced random patches, light augmentation, integer labels.
  In 2D mode (``spatial_dims=2``) the patches are single axial slices ``(C, H, W)`` drawn from the same volumes.
- ``"val"``: the same deterministic steps on whole volumes (image + label), for sliding-window / slice inference.
- ``"infer"``: image only, meta data kept so that MONAI's ``Invertd`` maps predictions back to the input geometry
  (see :py:func:`get_postprocessing`).

Axial slices: after ``Orientationd("RAS")`` the spatial axes are (R, A, S), so an axial slice is an (R, A) plane
and the slice axis is spatial axis 2; :py:func:`get_inferer` gives ``SliceInferer(spatial_dim=2)`` to match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    Lambdad,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
)

from eunets_monai.data.checks import CheckedLoadImaged, CheckFinited, CheckShaped, RoundLabelsd
from eunets_monai.engine.outputs import final_output

__all__ = [
    "TaskPreset",
    "TASKS",
    "STAGES",
    "get_task",
    "get_transforms",
    "get_inferer",
    "get_invertd",
    "get_postprocessing",
]

STAGES = ("train", "val", "infer")
SLICE_AXIS = 2  # spatial axis of axial slices in RAS orientation


@dataclass(frozen=True)
class TaskPreset:
    """
    Everything task-specific the pipelines, networks and bundle metadata need.

    Attributes:
        name: short name ("spleen", "heart", "hippocampus").
        msd_task: MSD folder name, e.g. "Task09_Spleen".
        modality: "CT" or "MRI".
        channel_def: output channel -> class name, as in a bundle's ``network_data_format`` (keys "0", "1", ...).
        spacing: target voxel spacing in mm along (R, A, S) after ``Orientationd("RAS")``.
        patch_size: 3D training patch and sliding-window ``roi_size``, voxels.
        patch_size_2d: 2D training slice patch (H, W) = (R, A) and ``SliceInferer`` ``roi_size``.
        intensity: "ct_window" (clip ``hu_window`` to [0, 1]) or "zscore" (per image, non-zero voxels, per channel).
        hu_window: (a_min, a_max) Hounsfield window for "ct_window".
        crop_foreground: crop the training volume to the image foreground (CT: the body, after windowing).
        in_channels: image channels.
        pos, neg: positive/negative patch-centre ratio of ``RandCropByPosNegLabeld``.
        source: where the numbers come from.
    """

    name: str
    msd_task: str
    modality: str
    channel_def: dict[str, str]
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    patch_size_2d: tuple[int, int]
    intensity: str
    hu_window: tuple[float, float] | None = None
    crop_foreground: bool = False
    in_channels: int = 1
    pos: float = 1.0
    neg: float = 1.0
    source: str = field(default="", compare=False)

    @property
    def out_channels(self) -> int:
        """Number of classes K (background included): the network's ``out_channels``."""
        return len(self.channel_def)

    @property
    def spatial_dims(self) -> int:
        """Default network dimensionality (3; the paper's 2D setting is ``spatial_dims=2``)."""
        return 3

    @property
    def roi_size(self) -> tuple[int, int, int]:
        """Sliding-window ROI for 3D inference (= ``patch_size``)."""
        return self.patch_size

    @property
    def roi_size_2d(self) -> tuple[int, int]:
        """Per-slice ROI for 2D inference (= ``patch_size_2d``)."""
        return self.patch_size_2d


TASKS: dict[str, TaskPreset] = {
    "spleen": TaskPreset(
        name="spleen",
        msd_task="Task09_Spleen",
        modality="CT",
        channel_def={"0": "background", "1": "spleen"},
        spacing=(1.5, 1.5, 2.0),
        patch_size=(96, 96, 96),
        patch_size_2d=(256, 256),
        intensity="ct_window",
        hu_window=(-57.0, 164.0),
        crop_foreground=True,
        source="MONAI spleen_ct_segmentation bundle / 3D spleen tutorial (spacing, HU window, 96^3 patches)",
    ),
    "heart": TaskPreset(
        name="heart",
        msd_task="Task02_Heart",
        modality="MRI",
        channel_def={"0": "background", "1": "left atrium"},
        spacing=(1.25, 1.25, 1.37),
        patch_size=(160, 128, 80),
        patch_size_2d=(320, 320),
        intensity="zscore",
        source="nnU-Net Task02 median spacing and 3D patch as in MONAI's dynunet_pipeline; 2D = the 320x320 slices",
    ),
    "hippocampus": TaskPreset(
        name="hippocampus",
        msd_task="Task04_Hippocampus",
        modality="MRI",
        channel_def={"0": "background", "1": "anterior", "2": "posterior"},
        spacing=(1.0, 1.0, 1.0),
        patch_size=(40, 56, 40),
        patch_size_2d=(40, 56),
        intensity="zscore",
        source="MSD Task04 native 1 mm spacing; nnU-Net 3d_fullres patch 40x56x40 (volumes ~35x50x36)",
    ),
}


def get_task(task: str | TaskPreset) -> TaskPreset:
    """A :py:class:`TaskPreset` by short name (see ``TASKS``) or itself (a custom preset for another MSD task)."""
    if isinstance(task, TaskPreset):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task preset {task!r}; expected one of {sorted(TASKS)} or a TaskPreset.")
    return TASKS[task]


def _load_steps(p: TaskPreset, keys: list[str]) -> list:
    has_label = "label" in keys
    steps: list = [
        CheckedLoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        CheckShaped(keys=keys, spatial_dims=3, channels={"image": p.in_channels, "label": 1}),
        CheckFinited(keys="image"),
    ]
    if has_label:
        steps.append(RoundLabelsd(keys="label", num_classes=p.out_channels))
    steps += [
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=p.spacing, mode=("bilinear", "nearest")[: len(keys)]),
    ]
    return steps


def _intensity_steps(p: TaskPreset) -> list:
    if p.intensity == "ct_window":
        a_min, a_max = p.hu_window or (-57.0, 164.0)
        return [ScaleIntensityRanged(keys="image", a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)]
    if p.intensity == "zscore":
        return [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    raise ValueError(f"unknown intensity preset {p.intensity!r} for task {p.name!r}; use 'ct_window' or 'zscore'.")


def _augment_steps(p: TaskPreset, patch: tuple[int, ...]) -> list:
    keys = ["image", "label"]
    steps: list = [RandFlipd(keys=keys, prob=0.1, spatial_axis=axis) for axis in range(len(patch))]
    # Quarter turns in the axial plane only where they keep the patch shape (batches must stack).
    if patch[0] == patch[1]:
        steps.append(RandRotate90d(keys=keys, prob=0.1, max_k=3, spatial_axes=(0, 1)))
    steps += [
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ]
    return steps


def _final_steps(keys: list[str]) -> list:
    steps: list = [EnsureTyped(keys="image", dtype=torch.float32)]
    if "label" in keys:
        steps.append(CastToTyped(keys="label", dtype=torch.int64))
    return steps


def get_transforms(
    task: str | TaskPreset,
    stage: str,
    spatial_dims: int = 3,
    patch_size: Sequence[int] | None = None,
    num_samples: int = 4,
    augment: bool = True,
) -> Compose:
    """
    The MONAI preprocessing pipeline of a task and stage.

    Args:
        task: "spleen" | "heart" | "hippocampus", or a :py:class:`TaskPreset`.
        stage: "train" | "val" | "infer" ("infer": image only).
        spatial_dims: 3 (3D patches) or 2 (axial-slice patches for training; "val"/"infer" still give volumes).
        patch_size: training patch, 3 or 2 values; default the task's ``patch_size`` / ``patch_size_2d``.
        num_samples: patches drawn per volume per epoch in "train".
        augment: random flips/rotations/intensity jitter in "train".

    Returns:
        ``Compose`` mapping a dict of paths to: "train" a list of ``num_samples`` dicts with ``"image"``
        (C, *patch) float32 and ``"label"`` (1, *patch) int64 (patch is (H, W) in 2D mode); "val" one dict with the
        whole resampled volumes (C, X, Y, Z) / (1, X, Y, Z); "infer" one dict with the image (C, X, Y, Z) MetaTensor.

    Examples::

        train_tf = get_transforms("hippocampus", "train", spatial_dims=2, num_samples=8)
        patches = train_tf({"image": "img.nii.gz", "label": "lbl.nii.gz"})  # list of 8 dicts
    """
    p = get_task(task)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    keys = ["image"] if stage == "infer" else ["image", "label"]
    steps = _load_steps(p, keys) + _intensity_steps(p)
    if stage == "train":
        steps += _train_sampling_steps(p, spatial_dims, patch_size, num_samples, augment)
    return Compose(steps + _final_steps(keys))


def _train_sampling_steps(
    p: TaskPreset, spatial_dims: int, patch_size: Sequence[int] | None, num_samples: int, augment: bool
) -> list:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    patch = tuple(int(s) for s in (patch_size or (p.patch_size if spatial_dims == 3 else p.patch_size_2d)))
    if len(patch) != spatial_dims or min(patch) < 1:
        raise ValueError(f"patch_size must be {spatial_dims} positive ints for a {spatial_dims}D network, got {patch}.")
    keys = ["image", "label"]
    # 2D: crop a one-slice-thick (H, W, 1) patch from the volume, then drop the slice axis.
    crop = patch if spatial_dims == 3 else (*patch, 1)
    pad = patch if spatial_dims == 3 else (*patch, -1)
    steps: list = []
    if p.crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key="image", allow_smaller=True))
    steps += [
        SpatialPadd(keys=keys, spatial_size=pad),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=crop,
            pos=p.pos,
            neg=p.neg,
            num_samples=num_samples,
            # CT: negative centres only inside the body (windowed intensity > 0), as MONAI's spleen bundle does.
            image_key="image" if p.intensity == "ct_window" else None,
            image_threshold=0.0,
        ),
    ]
    if spatial_dims == 2:
        steps.append(SqueezeDimd(keys=keys, dim=1 + SLICE_AXIS))
    if augment:
        steps += _augment_steps(p, patch)
    return steps


def get_inferer(
    task: str | TaskPreset,
    spatial_dims: int = 3,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    **kwargs,
) -> Inferer:
    """
    Whole-volume inference for a task: ``SlidingWindowInferer`` over 3D patches, or, for a 2D network,
    ``SliceInferer`` over axial slices (``spatial_dim=2`` after RAS) with a 2D sliding window inside each slice.

    Windows run on the input's device (GPU when the data and network are there, else CPU); extra keyword arguments
    (``mode``, ``sw_device``, ``device``, ``progress``...) go to MONAI's inferer.

    Args:
        task: task name or :py:class:`TaskPreset`.
        spatial_dims: 3 or 2 (the network's dimensionality).
        roi_size: window size, default the task's ``roi_size`` (3D) / ``roi_size_2d`` (2D).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction.

    Returns:
        a MONAI ``Inferer``; ``inferer(volume (B, C, X, Y, Z), network)`` -> (B, K, X, Y, Z).

    Examples::

        inferer = get_inferer("spleen", spatial_dims=2)
        logits = inferer(volume, net2d)
    """
    p = get_task(task)
    if spatial_dims == 3:
        roi = tuple(roi_size or p.roi_size)
        if len(roi) != 3:
            raise ValueError(f"roi_size must have 3 values for a 3D network, got {roi}.")
        return SlidingWindowInferer(roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, **kwargs)
    if spatial_dims == 2:
        roi = tuple(roi_size or p.roi_size_2d)
        if len(roi) != 2:
            raise ValueError(f"roi_size must have 2 values for a 2D network, got {roi}.")
        return SliceInferer(
            spatial_dim=SLICE_AXIS, roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, **kwargs
        )
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


def get_invertd(preprocessing: Compose, keys: str | Sequence[str] = "pred", nearest_interp: bool = False) -> Invertd:
    """
    MONAI ``Invertd`` that maps channel-first predictions on the preprocessed grid back to the input image's
    geometry (undoing ``Spacingd`` and ``Orientationd`` of an "infer"/"val" pipeline), using the meta data the
    pipeline kept on ``"image"``.

    Args:
        preprocessing: the very ``Compose`` (from :py:func:`get_transforms`) that produced ``"image"``.
        keys: prediction keys to invert (any channel count: logits, probabilities, CAMs, uncertainty...).
        nearest_interp: nearest-neighbour resampling (for label maps); False resamples linearly (probabilities).

    Examples::

        pre = get_transforms("spleen", "infer")
        invert = get_invertd(pre, keys=["pred"])
    """
    return Invertd(keys=keys, transform=preprocessing, orig_keys="image", nearest_interp=nearest_interp, to_tensor=True)


def get_postprocessing(
    task: str | TaskPreset, stage: str, preprocessing: Compose | None = None, argmax: bool = True
) -> Compose:
    """
    Per-case post-processing (after ``decollate_batch``, as MONAI engines apply ``postprocessing``) on ``"pred"``
    (logits (K, *S), or the deep-supervision list in "train") and ``"label"``.

    - "train" / "val": final output only, softmax, argmax, one-hot with K channels for ``pred`` and ``label``:
      what MONAI's ``MeanDice`` handler expects.
    - "infer": softmax, ``Invertd`` back to the input image's geometry (needs ``preprocessing``, the "infer"
      pipeline that produced the batch), then argmax to a (1, *S_input) uint8 class map when ``argmax``.

    Args:
        task: task name or :py:class:`TaskPreset`.
        stage: "train" | "val" | "infer".
        preprocessing: the "infer" ``Compose``; required for "infer".
        argmax: "infer" only: class map (True) or per-class probabilities (False).

    Examples::

        pre = get_transforms("hippocampus", "infer")
        post = get_postprocessing("hippocampus", "infer", preprocessing=pre)
    """
    p = get_task(task)
    k = p.out_channels
    if stage in ("train", "val"):
        return Compose(
            [
                Lambdad(keys="pred", func=final_output),
                Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys=["pred", "label"], argmax=(True, False), to_onehot=(k, k)),
            ]
        )
    if stage == "infer":
        if preprocessing is None:
            raise ValueError("get_postprocessing(stage='infer') needs the 'infer' preprocessing Compose to invert.")
        steps: list[MapTransform] = [Activationsd(keys="pred", softmax=True), get_invertd(preprocessing, "pred")]
        if argmax:
            steps.append(AsDiscreted(keys="pred", argmax=True, dtype=torch.uint8))
        return Compose(steps)
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}.")
