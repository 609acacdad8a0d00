"""
The engine of ``eunets-infer``: :py:class:`VolumePredictor` turns one scan into a mask, per-volume-normalised CAMs
and an uncertainty map on the scan's own voxel grid (one sliding-window pass with dict outputs, Gaussian blending,
MONAI's ``Invertd`` back to the input grid), and :py:func:`run_cases` runs it over many cases with resume, atomic
per-case writes, one line per failing case and a summary (``summary.json`` / ``summary.csv``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Spacingd
from torch import nn

from eunets_monai.data.checks import CheckFinited, CheckShaped, error_summary
from eunets_monai.engine.precision import autocast, autocast_dtype, precision_name
from eunets_monai.inference.batch import normalize_volume_cam
from eunets_monai.inference.dicom_seg import DICOM_SEG_SUFFIX, write_dicom_seg
from eunets_monai.inference.explained import ExplainedPredictor
from eunets_monai.inference.io import (
    OUTPUT_SUFFIXES,
    CaseInput,
    ImageVolume,
    atomic_write_text,
    case_complete,
    check_volume,
    output_paths,
    read_volume,
    write_case,
)
from eunets_monai.uncertainty.single_pass import case_quality

__all__ = ["VolumePredictor", "DictOutputs", "normalize_volume_cam", "run_cases", "write_summary", "preprocessing_tail"]

logger = logging.getLogger("eunets_monai.infer")


class DictOutputs(nn.Module):
    """
    Split a predictor's channel-stacked output into named parts, so MONAI's inferer stitches a dict
    (``{"logits": (B, K, *S), "cam": ..., "uncertainty": ...}``) in one sliding-window pass.

    Args:
        predictor: returns (B, sum of channels, *S).
        slices: part name -> channel slice of that output.
    """

    def __init__(self, predictor: nn.Module, slices: Mapping[str, slice]) -> None:
        super().__init__()
        self.predictor = predictor
        self.slices = dict(slices)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(x, MetaTensor):
            x = x.as_tensor()
        out = self.predictor(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return {name: out[:, s] for name, s in self.slices.items()}


def preprocessing_tail(preprocessing: Compose) -> Compose:
    """The bundle's "infer" pipeline without its file loading and checks (volumes arrive already read and checked)."""
    skip = (LoadImaged, CheckShaped, CheckFinited, EnsureChannelFirstd)
    steps = list(preprocessing.transforms)
    while steps and isinstance(steps[0], skip):
        steps.pop(0)
    return Compose(steps)


def _target_spacing(tail: Compose) -> tuple[float, ...] | None:
    for t in tail.transforms:
        if isinstance(t, Spacingd):
            return tuple(float(v) for v in np.atleast_1d(t.spacing_transform.pixdim))
    return None


class VolumePredictor:
    """
    One scan in, its maps on the scan's own voxel grid out.

    ``volume`` -> checks (channels, NaN/Inf, constant, spacing) -> the bundle's preprocessing (orientation, spacing,
    intensity) -> ``inferer`` with dict outputs (logits, raw CAMs, uncertainty; one pass) -> softmax, per-volume CAM
    scaling, uncertainty clipped to [0, 1] -> ``Invertd`` (linear) back to the input grid -> argmax.

    Args:
        network: the bundle's network, weights loaded.
        preprocessing: the bundle's "infer" ``Compose`` (its loading steps are skipped).
        inferer: ``SlidingWindowInferer`` / ``SliceInferer`` (Gaussian blending recommended).
        outputs: any of ``"seg"``, ``"cam"``, ``"uncertainty"``.
        device: where the network runs.
        precision: the network's compute dtype, one of :py:data:`~eunets_monai.engine.precision.PRECISIONS`:
            ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA only) or ``"auto"`` (bfloat16 on a CPU with bf16
            units, float16 on CUDA, else float32); see :py:func:`~eunets_monai.engine.precision.autocast_dtype`.
            Only the windows' forward passes run in it: stitching, softmax, CAM scaling and inversion stay float32.
        channel: pick this channel of multi-channel inputs.
        progress: show the inferer's progress bar on volumes of more than ``progress`` windows (0: never).

    Raises:
        ValueError: unknown ``outputs`` or ``precision``, or ``precision="fp16"`` on a CPU.

    Examples::

        predictor = VolumePredictor(net, get_transforms("hippocampus", "infer"), inferer, ("seg", "cam"))
        maps = predictor(read_volume(CaseInput("c", "scan.nii.gz")))   # {"seg": (1, *S) uint8, "cam": ...}
        fast = VolumePredictor(net, get_transforms("hippocampus", "infer"), inferer, precision="auto")  # bf16 CPU
    """

    def __init__(
        self,
        network: nn.Module,
        preprocessing: Compose,
        inferer: Inferer,
        outputs: Sequence[str] = OUTPUT_SUFFIXES,
        device: str | torch.device = "cpu",
        precision: str | bool | None = "fp32",
        channel: int | None = None,
        progress: int = 0,
    ) -> None:
        unknown = set(outputs) - set(OUTPUT_SUFFIXES)
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {OUTPUT_SUFFIXES}, got {tuple(outputs)}.")
        self.outputs = tuple(outputs)
        self.device = torch.device(device)
        self.dtype = autocast_dtype(precision, self.device)  # None: float32
        self.precision = precision_name(self.dtype)  # what runs: "fp32", "bf16" or "fp16"
        self.network = network.to(self.device).eval()
        self.tail = preprocessing_tail(preprocessing)
        self.target_spacing = _target_spacing(self.tail)
        self.invert = Invertd(keys="pred", transform=self.tail, orig_keys="image", nearest_interp=False, to_tensor=True)
        self.inferer = inferer
        self.channel = channel
        self.progress = progress
        self.in_channels = int(getattr(network, "in_channels", 1))
        self.num_classes = int(network.out_channels)
        self.model, self.explained = self._build_model()

    def _build_model(self) -> tuple[nn.Module, bool]:
        want_cam, want_unc = "cam" in self.outputs, "uncertainty" in self.outputs
        if not (want_cam or want_unc):
            return DictOutputs(self.network, {"logits": slice(0, self.num_classes)}), False
        # Raw CAMs (no per-window scaling): they are scaled once per volume after stitching. The background CAM is
        # never written: it is not computed.
        foreground = range(1, self.num_classes) if self.num_classes > 1 else None
        kwargs: dict = {"cam": want_cam, "cam_normalize": "none", "cam_classes": foreground}
        if not want_unc:
            kwargs["uncertainty"] = None
        try:
            predictor = ExplainedPredictor(self.network, **kwargs)
        except ValueError as e:
            raise ValueError(f"{e} (ask for fewer outputs with --outputs seg)") from None
        return DictOutputs(predictor, dict(predictor.channel_slices)), True

    def _windows(self, shape: Sequence[int]) -> int:
        roi = getattr(self.inferer, "roi_size", None)
        overlap = float(np.max(getattr(self.inferer, "overlap", 0.25)))
        if roi is None or len(roi) != len(shape):
            return 1
        step = [max(1, int(r * (1 - overlap))) for r in roi]
        return int(np.prod([max(1, math.ceil((s - r) / st) + 1) for s, r, st in zip(shape, roi, step)]))

    def predict_network_grid(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stitched maps on the network grid for a preprocessed image (C, *S): probs, cam, uncertainty."""
        if self.progress and hasattr(self.inferer, "progress"):
            self.inferer.progress = self._windows(image.shape[1:]) > self.progress
        grad = nullcontext() if self.explained else torch.no_grad()
        with grad, autocast(self.dtype, self.device):
            out = self.inferer(image[None].to(self.device), self.model)
        # float32 from here on (the inferer stitches in the input's float32; .float() also covers other inferers)
        maps = {"probs": torch.softmax(torch.as_tensor(out["logits"][0]).float(), 0)}
        if "cam" in out:
            maps["cam"] = normalize_volume_cam(torch.as_tensor(out["cam"][0]).float())  # foreground classes
        if "uncertainty" in out:
            maps["uncertainty"] = torch.as_tensor(out["uncertainty"][0]).float().clamp(0.0, 1.0)
        return {k: v.detach().cpu() for k, v in maps.items()}

    def __call__(self, volume: ImageVolume) -> dict[str, np.ndarray]:
        """
        Args:
            volume: the scan as read (see :py:func:`~eunets_monai.inference.io.read_volume`).

        Returns:
            ``{"seg": (1, *S) uint8, "cam": (K - 1, *S) float32, "uncertainty": (1, *S) float32}`` (as requested) on
            the input's voxel grid ``S``.
        """
        volume = check_volume(volume, self.in_channels, self.target_spacing, self.channel)
        flat = len(volume.spatial_shape) == 2
        data = volume.data[..., None] if flat else volume.data  # a 2D image is a one-slice volume
        image = MetaTensor(
            torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
            affine=torch.as_tensor(volume.affine, dtype=torch.float64),
            meta={"filename_or_obj": volume.source},
        )
        prepared = self.tail({"image": image})
        maps = self.predict_network_grid(prepared["image"])
        names, parts = list(maps), list(maps.values())
        # One Invertd call brings every map back to the input grid (linear interpolation, then argmax).
        prepared["pred"] = MetaTensor(torch.cat(parts), meta=dict(prepared["image"].meta))
        inverted = torch.as_tensor(self.invert(prepared)["pred"]).float()
        split = dict(zip(names, torch.split(inverted, [p.shape[0] for p in parts])))
        result: dict[str, np.ndarray] = {}
        # The mask is always made: the summary's label volumes need it even when it is not written.
        result["seg"] = split["probs"].argmax(0, keepdim=True).to(torch.uint8).numpy()
        if "cam" in split:
            result["cam"] = split["cam"].clamp(0.0, 1.0).numpy().astype(np.float32)
        if "uncertainty" in split:
            result["uncertainty"] = split["uncertainty"].clamp(0.0, 1.0).numpy().astype(np.float32)
        if flat:
            result = {k: v[..., 0] for k, v in result.items()}
        return result


def _case_stats(volume: ImageVolume, maps: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict:
    """Per label volume (ml) and mean uncertainty inside it; the per-case triage score (higher: look at this scan)."""
    stats: dict = {}
    seg = maps["seg"][0]
    if "uncertainty" in maps:
        quality = case_quality(seg, maps["uncertainty"][0])
        stats["quality_score"] = round(quality["score"], 6)
        inside = quality["mean_in_structure"]  # NaN when nothing was predicted: JSON has no NaN
        stats["uncertainty_in_structure"] = None if math.isnan(inside) else round(inside, 6)
    for label, name in enumerate(class_names):
        if label == 0:
            continue
        inside = seg == label
        stats[f"volume_ml_{name}"] = round(float(inside.sum()) * volume.voxel_ml, 4)
        if "uncertainty" in maps:
            unc = maps["uncertainty"][0]
            stats[f"mean_uncertainty_{name}"] = round(float(unc[inside].mean()), 5) if inside.any() else None
    return stats


def run_cases(
    cases: Sequence[CaseInput],
    predictor: VolumePredictor,
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    overwrite: bool = False,
    progress: bool = True,
    previous: Mapping[str, dict] | None = None,
    on_case: Callable[[CaseInput, ImageVolume, dict[str, np.ndarray]], str | None] | None = None,
    dicom_seg: bool = False,
    algorithm: str = "eunets-monai",
) -> list[dict]:
    """
    Run ``predictor`` over ``cases``, writing each case as a unit; never stops for a bad case.

    A case's files are written (and its preview drawn) by one background thread while the next case is computed:
    compressing a float32 CAM costs about a tenth of a small case's network time, and this hides it. At most one
    case waits to be written, so memory holds at most two cases' maps.

    Args:
        cases: what to run (see :py:func:`~eunets_monai.inference.io.collect_inputs`).
        predictor: the :py:class:`VolumePredictor`.
        output_dir: the (writable) output folder.
        class_names: label names, background first (for the summary's columns).
        overwrite: redo cases whose outputs all exist (else they are skipped).
        progress: a progress bar over cases.
        previous: case name -> its row of an earlier summary (kept for skipped cases).
        on_case: called with (case, volume, maps) after a case is written (to draw its preview); a string it returns
            is added to the case's warnings.
        dicom_seg: also write ``<case>_seg.dcm`` (a DICOM Segmentation, see
            :py:mod:`~eunets_monai.inference.dicom_seg`) for each DICOM series input, as part of the case's unit.
        algorithm: the algorithm name a DICOM SEG records (e.g. the bundle's name).

    Returns:
        one summary row per case, in the order of ``cases``: case, input, status ("ok" / "skipped" / "failed"),
        error, seconds (computing + writing), shape, spacing, warnings, outputs, per-label ``volume_ml_<name>`` and
        ``mean_uncertainty_<name>``.
    """
    from tqdm.auto import tqdm

    rows: list[dict] = []
    pending: tuple[dict, CaseInput, Future, float] | None = None

    def settle() -> None:  # wait for the case being written and finish its row
        nonlocal pending
        if pending is not None:
            row, case, future, start = pending
            pending = None
            try:
                row.update(future.result())
            except Exception as e:
                _fail(row, case, e)
                row["seconds"] = round(time.perf_counter() - start, 3)

    bar = tqdm(cases, desc="eunets-infer", unit="case", disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eunets-write") as writer:
        try:
            for case in bar:
                bar.set_postfix_str(case.name[:40])
                row: dict = {"case": case.name, "input": case.path, "status": "", "error": ""}
                if case.series_uid:
                    row["series_uid"] = case.series_uid
                rows.append(row)
                extra = (DICOM_SEG_SUFFIX,) if dicom_seg and case.series_uid else ()
                if not overwrite and case_complete(output_dir, case.name, predictor.outputs, extra):
                    kept = (previous or {}).get(case.name, {})
                    row.update({k: v for k, v in kept.items() if k not in ("status", "error")})
                    row["status"] = "skipped"
                    continue
                start = time.perf_counter()
                try:
                    output_paths(output_dir, case.name, predictor.outputs)
                    volume = read_volume(case)
                    row["shape"] = list(volume.spatial_shape)
                    row["spacing"] = [round(s, 5) for s in volume.spacing]
                    maps = predictor(volume)
                except Exception as e:  # one bad case never costs the others their outputs
                    _fail(row, case, e)
                    row["seconds"] = round(time.perf_counter() - start, 3)
                    continue
                computed = time.perf_counter() - start
                settle()
                args = (output_dir, case, volume, maps, predictor.outputs, class_names, on_case, computed)
                args += (algorithm if dicom_seg else None,)
                pending = (row, case, writer.submit(_write_and_describe, *args), start)
        finally:
            settle()  # also on Ctrl-C: the case being written is finished, never left half-written
    bar.close()
    return rows


def _write_and_describe(
    output_dir: str | os.PathLike,
    case: CaseInput,
    volume: ImageVolume,
    maps: dict[str, np.ndarray],
    outputs: Sequence[str],
    class_names: Sequence[str],
    on_case: Callable[[CaseInput, ImageVolume, dict[str, np.ndarray]], str | None] | None,
    computed: float,
    dicom_algorithm: str | None = None,
) -> dict:
    """The writer thread's part of a case: its files as a unit, its summary statistics, its preview."""
    start = time.perf_counter()
    arrays = {k: (maps[k], np.uint8 if k == "seg" else np.float32) for k in outputs}
    extra = {}
    if dicom_algorithm and volume.dicom_sources:
        seg, sources = maps["seg"][0], volume.dicom_sources

        def dicom(path: Path) -> None:
            write_dicom_seg(path, seg, sources, class_names, dicom_algorithm, _package_version())

        extra[DICOM_SEG_SUFFIX] = dicom
    written = write_case(output_dir, case.name, arrays, volume, extra)
    update = _case_stats(volume, maps, class_names)
    update["outputs"] = [p.name for p in written.values()]
    update["status"] = "ok"
    note = on_case(case, volume, maps) if on_case is not None else None
    update["warnings"] = "; ".join(volume.warnings + ([note] if note else []))
    update["seconds"] = round(computed + time.perf_counter() - start, 3)
    return update


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eunets-monai")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def _fail(row: dict, case: CaseInput, error: Exception) -> None:
    row["status"], row["error"] = "failed", error_summary(error)[:500]
    logger.error(f"{case.path}: {_strip_name(row['error'], case.path)}")


def _strip_name(error: str, path: str) -> str:
    # Errors usually start with the file name already; the log line names it once.
    for prefix in (f"{path}: ", f"DataError: {path}: "):
        if error.startswith(prefix):
            return error[len(prefix) :]
    return error


def write_summary(output_dir: str | os.PathLike, rows: Sequence[dict]) -> tuple[Path, Path]:
    """``summary.json`` (list of rows) and ``summary.csv`` (one line per case) in ``output_dir``, written atomically."""
    root = Path(output_dir)
    json_path, csv_path = root / "summary.json", root / "summary.csv"
    atomic_write_text(json_path, json.dumps(list(rows), indent=2) + "\n")
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()})
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path


def read_previous_summary(output_dir: str | os.PathLike) -> dict[str, dict]:
    """Rows of an earlier ``summary.json`` by case name (empty when there is none or it is unreadable)."""
    try:
        rows = json.loads((Path(output_dir) / "summary.json").read_text())
        return {r["case"]: r for r in rows if isinstance(r, dict) and "case" in r}
    except (OSError, ValueError, TypeError):
        return {}
