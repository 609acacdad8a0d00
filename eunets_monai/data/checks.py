"""
Small MONAI-style dictionary transforms that stop a bad case early with a one-line error naming its file:
unreadable/truncated files, wrong dimensions, image/label shape mismatch, NaN/Inf intensities, and label maps that
are not integer class indices (some MSD labels are stored as float32: they are rounded here, then cast later).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform

__all__ = [
    "DataError",
    "CheckedLoadImaged",
    "CheckShaped",
    "CheckFinited",
    "RoundLabelsd",
    "source_name",
    "error_summary",
]


class DataError(ValueError):
    """A case's file is unreadable or its content is invalid; the message is one line naming the file."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def source_name(data: object, key: Hashable = "") -> str:
    """
    The file a (loaded) array came from: the ``filename_or_obj`` of a MetaTensor, else the value itself when it is
    a path, else ``"<key>"``.
    """
    if isinstance(data, MetaTensor):
        name = data.meta.get("filename_or_obj")
        if name:
            return str(name)
    if isinstance(data, str):
        return data
    return f"<{key}>"


def error_summary(exc: BaseException) -> str:
    """
    One line for an exception raised through MONAI's ``Compose`` (which wraps every transform error in
    ``RuntimeError("applying transform ...")``): the deepest :py:class:`DataError` message, else the innermost cause.

    Examples::

        try:
            data = transforms(case)
        except Exception as e:
            logger.error(error_summary(e))
    """
    chain: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        chain.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    for e in reversed(chain):
        if isinstance(e, DataError):
            return _one_line(e)
    return _one_line(f"{type(chain[-1]).__name__}: {chain[-1]}")


class CheckedLoadImaged(LoadImaged):
    """
    MONAI's ``LoadImaged`` (same arguments) whose reading errors become one :py:class:`DataError` line naming the
    file, e.g. for a truncated ``.nii.gz`` (MONAI's own message lists every reader it tried, over many lines).

    Examples::

        CheckedLoadImaged(keys=["image", "label"], ensure_channel_first=True)
    """

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except Exception as e:
            name, cause = self._failing_file(data, reader, e)
            reason = _one_line(cause).split(" - ")[0][:300]
            raise DataError(f"cannot read {name}: {type(cause).__name__}: {reason}") from e

    def _failing_file(self, data, reader, error: Exception) -> tuple[str, Exception]:
        # Error path only: read the files one by one to name the bad one.
        if not isinstance(data, Mapping):
            return str(data), error
        for key in self.key_iterator(dict(data)):
            try:
                self._loader(data[key], reader)
            except Exception as e:
                return str(data[key]), e
        return " / ".join(str(data[k]) for k in self.key_iterator(dict(data))), error


class CheckShaped(MapTransform):
    """
    Check that each array is channel-first with ``spatial_dims`` spatial axes (and ``channels`` channels where
    given), and that all keys share one spatial shape (image and label of a case must match voxel for voxel).

    Args:
        keys: keys to check, e.g. ``["image", "label"]``.
        spatial_dims: expected number of spatial axes.
        channels: expected channel count per key (a dict key -> count, or one int for all), None to skip.
        allow_missing_keys: skip absent keys (e.g. "label" at inference).

    Examples::

        CheckShaped(keys=["image", "label"], spatial_dims=3, channels={"image": 1, "label": 1})
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int = 3,
        channels: int | Mapping[Hashable, int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.channels = channels

    def _expected_channels(self, key: Hashable) -> int | None:
        if isinstance(self.channels, Mapping):
            return self.channels.get(key)
        return self.channels

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        shapes: dict[Hashable, tuple[int, ...]] = {}
        for key in self.key_iterator(d):
            x, name = d[key], source_name(d[key], key)
            if x.ndim != self.spatial_dims + 1:
                raise DataError(
                    f"{name}: expected a channel-first {self.spatial_dims}D {key} with {self.spatial_dims + 1} axes "
                    f"(C, *spatial), got shape {tuple(x.shape)}."
                )
            expected = self._expected_channels(key)
            if expected is not None and x.shape[0] != expected:
                raise DataError(f"{name}: expected {expected} channel(s) for {key}, got {x.shape[0]}.")
            shapes[key] = tuple(x.shape[1:])
        if len(set(shapes.values())) > 1:
            desc = ", ".join(f"{source_name(d[k], k)} {s}" for k, s in shapes.items())
            raise DataError(f"spatial shapes differ between {' and '.join(map(str, shapes))}: {desc}.")
        return d


class CheckFinited(MapTransform):
    """
    Raise a :py:class:`DataError` naming the file when an array holds NaN or +-Inf (normalisation would spread them
    over the whole volume and training would silently diverge).

    Examples::

        CheckFinited(keys="image")
    """

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            if x.is_floating_point():
                bad = ~torch.isfinite(x)
                if bool(bad.any()):
                    n_nan = int(torch.isnan(x).sum())
                    raise DataError(
                        f"{source_name(d[key], key)}: {key} has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite "
                        f"voxel(s) of {x.numel()}."
                    )
        return d


class RoundLabelsd(MapTransform):
    """
    Round label maps stored as floats to exact class indices, rejecting values that are not near-integers or not
    in ``[0, num_classes)`` (a label file of another task, or an image passed as label). The dtype is kept; cast
    to an integer type after resampling (e.g. ``CastToTyped``).

    Args:
        keys: label keys.
        num_classes: number of classes K (labels in 0..K-1); None skips the range check.
        atol: largest accepted distance to the nearest integer.

    Examples::

        RoundLabelsd(keys="label", num_classes=3)
    """

    def __init__(
        self, keys: KeysCollection, num_classes: int | None = None, atol: float = 1e-3, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.atol = atol

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x, name = d[key], source_name(d[key], key)
            if not x.is_floating_point():
                r = x
            else:
                if not bool(torch.isfinite(torch.as_tensor(x)).all()):
                    raise DataError(f"{name}: {key} has NaN/Inf values; a label map must hold class indices.")
                r = torch.round(x)
                err = float((torch.as_tensor(x) - torch.as_tensor(r)).abs().max()) if x.numel() else 0.0
                if err > self.atol:
                    raise DataError(
                        f"{name}: {key} values are not class indices (a value is {err:.3g} away from an integer)."
                    )
            if self.num_classes is not None and r.numel():
                lo, hi = int(r.min()), int(r.max())
                if lo < 0 or hi >= self.num_classes:
                    raise DataError(
                        f"{name}: {key} values span {lo}..{hi}, outside 0..{self.num_classes - 1} for "
                        f"{self.num_classes} classes (wrong task preset or not a label map?)."
                    )
            d[key] = r
        return d
