"""
Reading scans and writing results for ``eunets-infer``: NIfTI (nibabel), NRRD/MHA/MHD (ITK) and DICOM series folders
(pydicom) become one :py:class:`ImageVolume` each: voxels in the file's own order plus the RAS affine of that voxel
grid. Results are written with that same affine (and, for NIfTI inputs, the input's own header: qform/sform codes,
units), so every output lies on the input voxel for voxel whatever its axis order or obliquity.

Every reading problem is a :py:class:`~eunets_monai.data.checks.DataError` whose message is one line naming the file.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from eunets_monai.data.checks import DataError
from eunets_monai.utils import TMP_TAG, atomic_write_text, temporary_name

__all__ = [
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "OUTPUT_SUFFIXES",
    "CaseInput",
    "ImageVolume",
    "InputError",
    "collect_inputs",
    "read_volume",
    "check_volume",
    "safe_case_name",
    "output_paths",
    "case_complete",
    "write_case",
    "clean_stale_temps",
    "check_writable",
    "atomic_write_text",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
OUTPUT_SUFFIXES = ("seg", "cam", "uncertainty")
# Files of a previous run (or of this one) in an output folder that doubles as the input folder.
_OWN_OUTPUT = re.compile(r"(_(seg|cam|uncertainty)\.nii(\.gz)?|_seg\.dcm)$")
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 100.0


class InputError(RuntimeError):
    """A problem that stops the whole run (no input at all, unwritable output folder); the message is one line."""


@dataclass(frozen=True)
class CaseInput:
    """
    One case to run: an image file, or one series of a DICOM folder.

    Attributes:
        name: safe case name, the prefix of its output files.
        path: the file or DICOM folder.
        series_uid: the DICOM SeriesInstanceUID (None for files).
    """

    name: str
    path: str
    series_uid: str | None = None


@dataclass
class ImageVolume:
    """
    A scan as stored: ``data`` (C, *spatial) float32 in the file's own voxel order (2 or 3 spatial axes) and the
    4x4 ``affine`` from voxel indices to RAS millimetres. ``header`` is the NIfTI header of a NIfTI input (reused
    for the outputs); ``dicom_sources`` the pydicom datasets (pixel data dropped) of a DICOM series, in slice order,
    for a DICOM SEG output; ``warnings`` collects plausibility remarks for the summary.
    """

    data: np.ndarray
    affine: np.ndarray
    source: str
    header: nib.Nifti1Header | None = None
    warnings: list[str] = field(default_factory=list)
    dicom_sources: list | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape[1:])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each stored axis."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0)[: len(self.spatial_shape)])

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


# ----------------------------------------------------------------------------------------------------- collection
def _is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES)


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    if path.suffix:  # DICOM files without a suffix are common; other suffixes are not DICOM
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _skipped(path: Path, exclude: Path | None) -> bool:
    # Hidden files (macOS "._x.nii.gz" resource forks, our own temporaries) and outputs of this tool.
    if path.name.startswith(".") or _OWN_OUTPUT.search(path.name):
        return True
    return exclude is not None and exclude in path.resolve().parents


def _dicom_series(folder: Path) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its files, for the DICOM files directly inside ``folder``."""
    import pydicom

    series: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith(".") or _OWN_OUTPUT.search(f.name) or not _is_dicom_file(f):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:
            continue  # non-DICOM files beside a series (DICOMDIR is read but has no SeriesInstanceUID)
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if uid:
            series.setdefault(uid, []).append(f)
    return series


def _dicom_cases(folder: Path) -> list[CaseInput]:
    series = _dicom_series(folder)
    if not series:
        raise DataError(f"{folder}: no readable DICOM image in this folder (files are not DICOM or are damaged).")
    if len(series) == 1:
        return [CaseInput(folder.name, str(folder), next(iter(series)))]
    logger.warning(f"{folder}: holds {len(series)} DICOM series; each becomes its own case.")
    return [CaseInput(f"{folder.name}_series{i}", str(folder), uid) for i, uid in enumerate(sorted(series), 1)]


def _folder_cases(folder: Path, exclude: Path | None, problems: list[tuple[str, str]]) -> list[CaseInput]:
    if exclude is not None and (exclude == folder.resolve() or exclude in folder.resolve().parents):
        exclude = None  # output folder = input folder: only the outputs' own names are skipped
    cases: list[CaseInput] = []
    ignored: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        root_path = Path(root)
        if exclude is not None and (root_path.resolve() == exclude or exclude in root_path.resolve().parents):
            continue
        dicom = False
        for name in sorted(files):
            p = root_path / name
            if _skipped(p, exclude):
                continue
            if _is_image_file(p):
                cases.append(CaseInput(_stem(p), str(p.resolve())))
            elif _is_dicom_file(p):
                dicom = True
            else:
                ignored.append(str(p))
        if dicom:
            try:
                cases += _dicom_cases(root_path)
            except DataError as e:  # one bad series folder must not hide the others
                problems.append((str(root_path), str(e).removeprefix(f"{root_path}: ")))
    if ignored:
        logger.info(f"{folder}: ignored {len(ignored)} file(s) that are not images, e.g. {ignored[0]}")
    return cases


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def safe_case_name(name: str) -> str:
    """
    A file-name-safe case name: only letters, digits, ``.``, ``_`` and ``-``; no leading dot, so an output name
    made from it can neither leave the output folder nor hide itself. ``"../../etc/x y"`` -> ``"etc_x_y"``.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    safe = re.sub(r"\.{2,}", ".", safe)[:150]
    return safe or "case"


def _unique_names(cases: list[CaseInput]) -> list[CaseInput]:
    """
    Disambiguate cases whose names collide: ``a.nii`` / ``a.nii.gz`` in one folder get their suffix
    (``a_nii``, ``a_nii_gz``), ``x/img.nii.gz`` / ``y/img.nii.gz`` their folder (``x_img``, ``y_img``), then a counter.
    """
    cases = [CaseInput(safe_case_name(c.name), c.path, c.series_uid) for c in cases]
    for attempt in range(2):
        groups: dict[str, list[CaseInput]] = {}
        for c in cases:
            groups.setdefault(c.name, []).append(c)
        renamed = []
        for c in cases:
            group = groups[c.name]
            p = Path(c.path)
            if len(group) == 1 or c.series_uid is not None:
                renamed.append(c)
                continue
            same_folder = sum(Path(o.path).parent == p.parent for o in group) > 1
            if same_folder if attempt == 0 else not same_folder:
                new = f"{c.name}_{p.name[len(_stem(p)) :].strip('.').replace('.', '_')}"
            else:
                new = f"{p.parent.name}_{c.name}"
            renamed.append(CaseInput(safe_case_name(new), c.path, c.series_uid))
        cases = renamed
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        seen[c.name] = seen.get(c.name, 0) + 1
        out.append(c if seen[c.name] == 1 else CaseInput(f"{c.name}_{seen[c.name]}", c.path, c.series_uid))
    return out


def _datalist_cases(path: Path, split: str) -> list[CaseInput]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read datalist {path}: {type(e).__name__}: {_one_line(e)}") from None
    items = content.get(split, []) if isinstance(content, Mapping) else content
    if not isinstance(items, list):
        raise InputError(f"{path}: section {split!r} is not a list of images.")
    cases = []
    for item in items:
        image = item.get("image") if isinstance(item, Mapping) else item
        if not isinstance(image, str):
            raise InputError(f"{path}: datalist entry without an image path: {item!r}.")
        p = Path(image).expanduser()
        p = p if p.is_absolute() else (path.resolve().parent / p)
        cases.append(CaseInput(_stem(p), str(p.resolve())))
    if not cases:
        raise InputError(f"{path}: no images in section {split!r} (use --split training for the training images).")
    return cases


def collect_inputs(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    split: str = "test",
    exclude: str | os.PathLike | None = None,
) -> tuple[list[CaseInput], list[tuple[str, str]]]:
    """
    The cases to run, in a stable order, from files, folders (searched recursively), glob patterns, MSD
    ``dataset.json`` files and DICOM series folders.

    Args:
        sources: one or more paths / patterns.
        split: the ``dataset.json`` section to read (``"test"``, or ``"training"`` for its images).
        exclude: a folder whose files are never inputs (the output folder).

    Returns:
        (cases, problems): the cases with unique safe names, and (source, one-line reason) for every source that
        gave nothing (missing path, empty folder, unsupported file type).

    Raises:
        InputError: one line when no source gives any case.

    Examples::

        cases, problems = collect_inputs(["scans/", "extra/*.nrrd", "dataset.json"], exclude="out")
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    skip = Path(exclude).resolve() if exclude is not None else None
    cases: list[CaseInput] = []
    problems: list[tuple[str, str]] = []
    for source in sources:
        text = str(source)
        paths: Iterable[Path]
        if any(ch in text for ch in "*?[") and not Path(text).exists():
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                problems.append((text, "the pattern matches no file"))
                continue
            # A pattern such as out/*.nii.gz also matches outputs of this tool: those are never inputs.
            paths = [Path(m) for m in matches if not _skipped(Path(m), skip)]
        else:
            paths = [Path(text).expanduser()]
        for path in paths:
            try:
                cases += _source_cases(path, split, skip, problems)
            except (DataError, InputError) as e:
                problems.append((str(path), str(e)))
    if not cases:
        detail = "; ".join(f"{s}: {r}" for s, r in problems) or "no input given"
        raise InputError(f"nothing to run: {detail}")
    # The same file given twice (a folder and a glob) runs once.
    unique = list({(c.path, c.series_uid): c for c in cases}.values())
    return _unique_names(unique), problems


def _source_cases(path: Path, split: str, exclude: Path | None, problems: list) -> list[CaseInput]:
    if not path.exists():
        raise InputError("no such file or folder")
    if path.is_dir():
        before = len(problems)
        cases = _folder_cases(path, exclude, problems)
        if not cases and len(problems) == before:
            raise InputError("no images in this folder (NIfTI, NRRD, MHA/MHD or DICOM)")
        return cases
    name = path.name.lower()
    if _is_image_file(path):
        return [CaseInput(_stem(path), str(path.resolve()))]
    if name.endswith(".json"):
        return _datalist_cases(path, split)
    if _is_dicom_file(path):  # one file of a series: that series
        series = _dicom_series(path.parent)
        return [c for c in _dicom_cases(path.parent) if path in series.get(c.series_uid, [])]
    raise InputError(
        f"unsupported file type {path.suffix or '(no suffix)'}; give NIfTI (.nii/.nii.gz), NRRD, MHA/MHD, a DICOM "
        f"series folder or a dataset.json"
    )


# ------------------------------------------------------------------------------------------------------- reading
def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied (cannot read it).")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes).")


def _read_nifti(path: Path) -> ImageVolume:
    try:
        img = nib.load(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {_one_line(e)}).") from None
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # truncated gzip stream, short data block
        raise DataError(f"{path}: truncated or corrupt image data ({type(e).__name__}: {_one_line(e)}).") from None
    shape = data.shape
    if data.ndim == 5 and shape[3] == 1:  # NIfTI vector images store components on the 5th axis
        data = data[:, :, :, 0, :]
    if data.ndim == 2 or data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise DataError(f"{path}: a {len(shape)}D image of shape {shape}; expected 2D, 3D or 3D + channels.")
    header = img.header.copy() if isinstance(img, nib.Nifti1Image) else None
    return ImageVolume(np.ascontiguousarray(data), np.asarray(img.affine, dtype=np.float64), str(path), header)


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_itk(path: Path) -> ImageVolume:
    import itk

    try:
        image = itk.imread(str(path))
    except Exception as e:
        raise DataError(f"{path}: ITK cannot read it ({type(e).__name__}: {_one_line(e)}).") from None
    array = np.asarray(itk.array_from_image(image), dtype=np.float32)
    ndim = image.GetImageDimension()
    components = image.GetNumberOfComponentsPerPixel()
    # ITK arrays are (z, y, x[, c]); NIfTI-style voxel order is (x, y, z).
    spatial = np.transpose(array, tuple(range(ndim))[::-1] + ((ndim,) if components > 1 else ()))
    data = np.moveaxis(spatial, -1, 0) if components > 1 else spatial[None]
    direction = np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
    lps = np.eye(4)
    lps[:ndim, :ndim] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    lps[:ndim, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return ImageVolume(np.ascontiguousarray(data), LPS_TO_RAS @ lps, str(path))


def _read_dicom(folder: Path, series_uid: str | None) -> ImageVolume:
    import pydicom

    series = _dicom_series(folder)
    if not series:
        raise DataError(f"{folder}: no readable DICOM image in this folder.")
    if series_uid is None:
        if len(series) > 1:
            raise DataError(f"{folder}: holds {len(series)} DICOM series; give one series per folder.")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise DataError(f"{folder}: series {series_uid} is no longer in this folder.")
    slices = []
    for f in series[series_uid]:
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:
            raise DataError(f"{f}: unreadable DICOM file ({type(e).__name__}: {_one_line(e)}).") from None
        if "PixelData" not in ds:
            continue
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{f}: multi-frame (enhanced) DICOM is not supported; export one file per slice.")
        slices.append((f, ds))
    if not slices:
        raise DataError(f"{folder}: series {series_uid} has no image data.")
    return _stack_dicom(folder, slices)


def _stack_dicom(folder: Path, slices: list) -> ImageVolume:
    tags = ("ImageOrientationPatient", "ImagePositionPatient")
    missing = [str(f) for f, ds in slices if not all(k in ds for k in tags)]
    if missing:
        raise DataError(f"{missing[0]}: no ImageOrientationPatient/ImagePositionPatient, so no patient geometry.")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in slices])
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        raise DataError(f"{folder}: the slices of the series have different orientations; cannot stack them.")
    row, col = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    order = np.argsort(positions @ normal)
    slices, positions = [slices[i] for i in order], positions[order]
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in slices}
    if len(shapes) > 1:
        raise DataError(f"{folder}: the slices have different sizes {sorted(shapes)}.")
    if len(slices) > 1:
        gaps = np.diff(positions @ normal)
        step = float(np.median(gaps))
        if step <= 1e-4:
            raise DataError(f"{folder}: several slices share one position (duplicates or several acquisitions).")
        if np.abs(gaps - step).max() > max(0.01 * step, 0.05):
            raise DataError(
                f"{folder}: uneven slice gaps ({gaps.min():.3g} to {gaps.max():.3g} mm, median {step:.3g} mm): missing "
                f"slices or a non-uniform series; cannot stack it as one volume."
            )
        # The first-to-last vector, not the normal: a tilted gantry shifts slices in-plane as well.
        slice_vec = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        thickness = float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
        slice_vec = normal * thickness
    first = slices[0][1]
    dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing (between rows), column spacing (between columns)
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = slice_vec
    lps[:3, 3] = positions[0]
    planes = []
    for f, ds in slices:
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as e:
            raise DataError(f"{f}: cannot decode the pixel data ({type(e).__name__}: {_one_line(e)}).") from None
        if pixels.ndim != 2:
            raise DataError(f"{f}: colour or multi-frame pixel data of shape {pixels.shape} is not supported.")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        planes.append(pixels.T * slope + intercept)  # (rows, columns) -> (x = column, y = row)
        del ds.PixelData  # decoded; a DICOM SEG needs the metadata only
    data = np.stack(planes, axis=-1)[None]
    return ImageVolume(np.ascontiguousarray(data), LPS_TO_RAS @ lps, str(folder), dicom_sources=[d for _, d in slices])


def read_volume(case: CaseInput) -> ImageVolume:
    """
    Read one case as stored (see :py:class:`ImageVolume`).

    Raises:
        DataError: one line naming the file: missing, unreadable, empty, truncated, not an image, an unstackable
            DICOM series.

    Examples::

        volume = read_volume(CaseInput("case", "scan.nii.gz"))
    """
    path = Path(case.path)
    _check_readable(path)
    if path.is_dir() or case.series_uid is not None:
        return _read_dicom(path if path.is_dir() else path.parent, case.series_uid)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    return _read_itk(path)


def check_volume(
    volume: ImageVolume, in_channels: int, target_spacing: Sequence[float] | None = None, channel: int | None = None
) -> ImageVolume:
    """
    Refuse what the network cannot use, with one line naming the file; add plausibility warnings.

    - the channel count must be ``in_channels`` (``channel`` picks one channel of a multi-channel image);
    - NaN/Inf voxels, an all-constant image, fewer than 2 axes longer than one voxel;
    - voxel spacing outside 0.01-100 mm, or a volume that resamples to fewer than 2 voxels along an axis.

    Returns:
        the (possibly channel-selected) volume.
    """
    name = volume.source
    c = volume.data.shape[0]
    if channel is not None:
        if not 0 <= channel < c:
            raise DataError(f"{name}: --channel {channel} but the image has {c} channel(s) (0..{c - 1}).")
        volume.data = volume.data[channel : channel + 1]
        c = 1
    if c != in_channels:
        hint = " (pick one with --channel N)" if in_channels == 1 else ""
        raise DataError(
            f"{name}: image has {c} channel(s) of shape {volume.spatial_shape}, the model wants {in_channels}{hint}."
        )
    if sum(s > 1 for s in volume.spatial_shape) < 2:
        raise DataError(f"{name}: image of shape {volume.spatial_shape} is not an image (fewer than 2 axes > 1 voxel).")
    finite = np.isfinite(volume.data)
    if not finite.all():
        n_nan = int(np.isnan(volume.data).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise DataError(f"{name}: image has {n_nan} NaN and {n_inf} infinite voxel(s) of {volume.data.size}.")
    lo, hi = float(volume.data.min()), float(volume.data.max())
    if lo == hi:
        raise DataError(f"{name}: every voxel has the value {lo:g}: nothing to segment.")
    spacing = volume.spacing
    if min(spacing) < MIN_SPACING_MM or max(spacing) > MAX_SPACING_MM:
        raise DataError(
            f"{name}: implausible voxel spacing {tuple(round(s, 6) for s in spacing)} mm (expected "
            f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm): check the header's spacing and units."
        )
    if target_spacing is not None:
        extent = np.array(volume.spatial_shape[:3]) * np.array(spacing[:3])
        for axis, (n, e) in enumerate(zip(volume.spatial_shape, extent)):
            t = min(float(v) for v in target_spacing)
            if n > 1 and e < 2 * t:
                raise DataError(
                    f"{name}: the image spans only {e:.3g} mm along axis {axis} ({n} voxels of {spacing[axis]:.3g} "
                    f"mm); at the model's {t:g} mm spacing that is under 2 voxels."
                )
    if max(spacing) / min(spacing) > 5:
        volume.warnings.append(f"anisotropic voxels {tuple(round(s, 3) for s in spacing)} mm")
    if min(volume.spatial_shape) == 1 or len(volume.spatial_shape) == 2:
        volume.warnings.append("single slice")
    return volume


# ------------------------------------------------------------------------------------------------------- writing
def output_paths(output_dir: str | os.PathLike, name: str, outputs: Sequence[str]) -> dict[str, Path]:
    """``{"seg": out/<name>_seg.nii.gz, ...}``; raises ``ValueError`` if a path would leave ``output_dir``."""
    paths = extra_paths(output_dir, name, [f"_{key}.nii.gz" for key in outputs])
    return dict(zip(outputs, paths.values()))


def extra_paths(output_dir: str | os.PathLike, name: str, suffixes: Sequence[str]) -> dict[str, Path]:
    """
    ``{suffix: out/<name><suffix>}`` for a case's files (e.g. ``"_seg.dcm"``); raises ``ValueError`` if a path would
    leave ``output_dir``.
    """
    root = Path(output_dir).resolve()
    paths = {suffix: root / f"{name}{suffix}" for suffix in suffixes}
    for p in paths.values():
        if p.parent != root or p.name.startswith("."):
            raise ValueError(f"unsafe case name {name!r}: its outputs would not be plain files in {root}.")
    return paths


def case_complete(output_dir: str | os.PathLike, name: str, outputs: Sequence[str], extra: Sequence[str] = ()) -> bool:
    """All requested outputs of a case exist (a case is renamed into place only once every file is written)."""
    paths = [*output_paths(output_dir, name, outputs).values(), *extra_paths(output_dir, name, extra).values()]
    return all(p.is_file() and p.stat().st_size > 0 for p in paths)


def _nifti(array: np.ndarray, volume: ImageVolume, dtype: type, description: str) -> nib.Nifti1Image:
    """(C, *spatial) on the input grid -> NIfTI with the input's affine (and header for NIfTI inputs)."""
    if tuple(array.shape[1:]) != volume.spatial_shape:
        raise ValueError(f"output shape {array.shape[1:]} differs from the input's {volume.spatial_shape}.")
    data = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    if array.shape[0] > 1 and len(volume.spatial_shape) == 2:
        data = data[:, :, None, :]  # channels go on NIfTI's 4th axis; a 2D input gets a unit 3rd axis
    data = np.ascontiguousarray(data.astype(dtype))
    if volume.header is not None:
        header = volume.header.copy()
        # affine=None keeps the header's qform/sform (and their codes) exactly; the shape comes from the data.
        img = nib.Nifti1Image(data, None, header)
        img.header.set_data_dtype(dtype)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"] = img.header["cal_max"] = 0
        img.header.set_intent("none")
    else:
        img = nib.Nifti1Image(data, volume.affine)
        img.header.set_qform(volume.affine, code=1)
        img.header.set_sform(volume.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_data_dtype(dtype)
    img.header["descrip"] = description[:79].encode()
    return img


def write_case(
    output_dir: str | os.PathLike,
    name: str,
    arrays: Mapping[str, tuple[np.ndarray, type]],
    volume: ImageVolume,
    extra: Mapping[str, Callable[[Path], None]] | None = None,
) -> dict[str, Path]:
    """
    Write a case's outputs as one unit: every file goes to a hidden temporary name in ``output_dir`` first; then the
    case's old files are removed and the temporaries renamed into place. A kill at any moment leaves either the
    complete case or an incomplete one (redone by the next run); temporaries of dead runs are removed by
    :py:func:`clean_stale_temps`.

    Args:
        output_dir: the output folder.
        name: the case name.
        arrays: ``{"seg": (array (C, *spatial), np.uint8), ...}`` on the input's voxel grid.
        volume: the input (affine, header).
        extra: more files of the case, ``{file name suffix: writer(path)}`` (e.g. ``{"_seg.dcm": ...}``), written to
            temporary names and renamed with the others.

    Returns:
        ``{"seg": path, ...}`` (extra files under their suffix).
    """
    finals = output_paths(output_dir, name, list(arrays))
    finals.update(extra_paths(output_dir, name, list(extra or {})))
    temps: dict[str, Path] = {}
    try:
        for key, (array, dtype) in arrays.items():
            temps[key] = temporary_name(finals[key])
            nib.save(_nifti(np.asarray(array), volume, dtype, f"eunets-infer {key}"), str(temps[key]))
        for suffix, writer in (extra or {}).items():
            temps[suffix] = temporary_name(finals[suffix])
            writer(temps[suffix])
        for tmp in temps.values():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        for p in finals.values():  # an old, complete case must not survive half-replaced
            p.unlink(missing_ok=True)
        for key, tmp in temps.items():
            os.replace(tmp, finals[key])
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return finals


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(output_dir: str | os.PathLike) -> int:
    """Remove temporaries left by killed runs (their process is gone); returns how many were removed."""
    removed = 0
    for p in Path(output_dir).glob(f".*{TMP_TAG}*"):
        m = re.search(re.escape(TMP_TAG) + r"(\d+)", p.name)
        if m and (int(m.group(1)) == os.getpid() or not _pid_alive(int(m.group(1)))):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and prove it writable, before any computation; :py:class:`InputError` if not."""
    root = Path(output_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test{TMP_TAG}{os.getpid()}.nii.gz"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(f"output folder {root} is not writable: {reason}.") from None
    return root.resolve()
