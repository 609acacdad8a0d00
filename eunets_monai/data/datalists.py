"""
Medical Segmentation Decathlon (MSD) datalists, the MSD download path, and the data splits of the papers:
5-fold cross-validation (paper 000, sec. 4.2) and an 80/10/10 hold-out split (paper 003).

A datalist is MONAI's usual list of dicts, e.g. ``[{"image": "/abs/img.nii.gz", "label": "/abs/lbl.nii.gz"}, ...]``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from monai.apps import DecathlonDataset
from monai.apps.utils import download_url, extractall
from monai.data import load_decathlon_datalist

__all__ = [
    "MSD_TASKS",
    "MSDDownloadError",
    "DATA_ENV",
    "HIPPOCAMPUS_SAMPLE",
    "default_data_root",
    "resolve_task_dir",
    "msd_task_name",
    "msd_datalist",
    "download_msd",
    "kfold_split",
    "holdout_split",
]

# Our short task names -> MSD folder/archive names.
MSD_TASKS: dict[str, str] = {
    "spleen": "Task09_Spleen",
    "heart": "Task02_Heart",
    "hippocampus": "Task04_Hippocampus",
}

MSD_HOME = "http://medicaldecathlon.com/"

# Where users keep (or let us download) MSD task folders: $EUNETS_DATA, else a per-user cache folder.
DATA_ENV = "EUNETS_DATA"

# The real MSD Task04 subset shipped in the package (CC-BY-SA 4.0): the offline default of the quick paths.
HIPPOCAMPUS_SAMPLE = Path(__file__).resolve().parent / "sample" / "hippocampus"


class MSDDownloadError(RuntimeError):
    """The MSD archive could not be downloaded or extracted (e.g. no network); the message says where to put it."""


def msd_task_name(task: str) -> str:
    """
    Map a short task name ("spleen", "heart", "hippocampus") or an MSD name ("Task09_Spleen") to the MSD name.

    Examples::

        msd_task_name("spleen")  # -> "Task09_Spleen"
    """
    if task in MSD_TASKS:
        return MSD_TASKS[task]
    if task in DecathlonDataset.resource:
        return task
    known = sorted(MSD_TASKS) + sorted(DecathlonDataset.resource)
    raise ValueError(f"unknown MSD task {task!r}; expected one of {known}.")


def _how_to_get(data_dir: Path) -> str:
    name = data_dir.name if data_dir.name.startswith("Task") else "TaskXX_Name"
    return (
        f"download {name}.tar from {MSD_HOME} and extract it so that {data_dir}/dataset.json exists "
        f"(or call eunets_monai.data.datalists.download_msd('{name}', '{data_dir.parent}'))"
    )


def msd_datalist(data_dir: str | Path, section: str = "training") -> list[dict]:
    """
    Read an MSD ``dataset.json`` into a datalist with absolute paths, checking that every listed file exists.

    Args:
        data_dir: the MSD task folder, e.g. ``/data/Task09_Spleen`` (holding ``dataset.json``, ``imagesTr/``...).
        section: ``"training"`` (image + label) or ``"test"`` (image only), as in ``dataset.json``.

    Returns:
        list of dicts with absolute ``"image"`` (and ``"label"``) paths, in ``dataset.json`` order.

    Raises:
        FileNotFoundError: one line naming the missing folder/file and how to get the data.
        ValueError: ``dataset.json`` is not valid JSON, or the section is missing or empty.

    Examples::

        train_files = msd_datalist("/data/Task04_Hippocampus")
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MSD data folder not found: {data_dir}; {_how_to_get(data_dir)}.")
    json_path = data_dir / "dataset.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"MSD dataset.json not found: {json_path}; {_how_to_get(data_dir)}.")
    try:
        json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path}: not a valid JSON file ({e}).") from None
    try:
        datalist = load_decathlon_datalist(json_path, is_segmentation=True, data_list_key=section, base_dir=data_dir)
    except ValueError as e:  # MONAI raises ValueError for a missing section key
        raise ValueError(f"{json_path}: no usable {section!r} section ({e}).") from None
    if not datalist:
        raise ValueError(f"{json_path}: the {section!r} section is empty.")
    for item in datalist:
        for key in ("image", "label"):
            if key in item and not Path(item[key]).is_file():
                raise FileNotFoundError(
                    f"{key} file listed in {json_path} not found: {item[key]}; the MSD folder is incomplete, "
                    f"{_how_to_get(data_dir)}."
                )
    return datalist


@contextmanager
def _socket_timeout(seconds: float | None):
    # urllib's urlretrieve (used by MONAI's download_url) takes no timeout: bound it so an offline machine fails fast.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def download_msd(task: str, root_dir: str | Path, progress: bool = True, timeout: float | None = 60.0) -> Path:
    """
    Return the MSD task folder under ``root_dir``, downloading and extracting the archive MONAI's
    ``DecathlonDataset`` uses (same URL and md5) when it is not there yet.

    The archive is downloaded by MONAI's ``download_url`` (to a temporary file, md5-checked) and extracted into a
    temporary folder that is renamed into place only when complete, so no half-extracted task folder is left.

    Args:
        task: short name ("spleen", "heart", "hippocampus") or MSD name ("Task09_Spleen", ...).
        root_dir: folder that holds (or will hold) the MSD task folders.
        progress: show a download progress bar.
        timeout: socket timeout in seconds for the download.

    Returns:
        the task folder, e.g. ``root_dir / "Task09_Spleen"`` (holding ``dataset.json``).

    Raises:
        MSDDownloadError: one line saying where to put the data when the download or extraction fails.

    Examples::

        data_dir = download_msd("spleen", "/data")  # -> /data/Task09_Spleen
    """
    name = msd_task_name(task)
    root = Path(root_dir).expanduser().resolve()
    task_dir = root / name
    if (task_dir / "dataset.json").is_file():
        return task_dir
    url, md5 = DecathlonDataset.resource[name], DecathlonDataset.md5[name]
    tar_path = root / f"{name}.tar"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(timeout):
            download_url(url=url, filepath=tar_path, hash_val=md5, hash_type="md5", progress=progress)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.") as tmp:
            extractall(tar_path, output_dir=tmp, file_type="tar", has_base=True)  # md5 checked by download_url
            if not (Path(tmp) / name / "dataset.json").is_file():
                raise RuntimeError(f"archive {tar_path} has no {name}/dataset.json")
            if task_dir.exists():  # an incomplete folder without dataset.json: replace it
                shutil.rmtree(task_dir)
            (Path(tmp) / name).rename(task_dir)
    except Exception as e:  # network, hash or archive errors all end the same way for the user
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise MSDDownloadError(
            f"cannot download MSD {name} from {url} ({reason}); download it by hand from {MSD_HOME} "
            f"and extract it so that {task_dir / 'dataset.json'} exists."
        ) from None
    return task_dir


def default_data_root() -> Path:
    """
    The folder that holds the MSD task folders when no ``--data-dir`` is given: ``$EUNETS_DATA`` if set, else
    ``$XDG_CACHE_HOME/eunets_monai`` (``~/.cache/eunets_monai``), which :func:`download_msd` fills on first use.

    Examples::

        root = default_data_root()  # e.g. /home/me/.cache/eunets_monai
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return (cache / "eunets_monai").resolve()


def resolve_task_dir(task: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """
    The MSD task folder a script or bundle should read, from what the user has.

    - ``data_dir`` given: that folder if it holds ``dataset.json``, else ``data_dir / <MSD name>`` if that does
      (so both ``/data/Task04_Hippocampus`` and ``/data`` work).
    - ``data_dir`` not given: ``default_data_root() / <MSD name>``, downloaded there by :func:`download_msd` (with a
      progress bar) on first use when ``download`` is true.

    Args:
        task: short name ("spleen", "heart", "hippocampus") or MSD name ("Task09_Spleen", ...).
        data_dir: a task folder or a folder of task folders; ``None`` for the default root.
        download: fetch the MSD archive into the default root when it is missing there.

    Returns:
        the task folder, holding ``dataset.json``.

    Raises:
        FileNotFoundError: one line naming where the data was looked for and how to get it.
        MSDDownloadError: the download was needed and failed.

    Examples::

        task_dir = resolve_task_dir("hippocampus", "/data")  # -> /data/Task04_Hippocampus
    """
    name = msd_task_name(task)
    if data_dir is not None:
        given = Path(data_dir).expanduser().resolve()
        for candidate in (given, given / name):
            if (candidate / "dataset.json").is_file():
                return candidate
        raise FileNotFoundError(f"no MSD dataset.json in {given} or {given / name}; {_how_to_get(given / name)}.")
    root = default_data_root()
    if (root / name / "dataset.json").is_file() or not download:
        if not (root / name / "dataset.json").is_file():
            raise FileNotFoundError(
                f"MSD data not found: {root / name}; pass --data-dir, set ${DATA_ENV}, or {_how_to_get(root / name)}."
            )
        return root / name
    return download_msd(name, root)


def _check_datalist(datalist: Sequence, n_min: int, what: str) -> None:
    if len(datalist) < n_min:
        raise ValueError(f"{what} needs at least {n_min} cases, got {len(datalist)}.")


def kfold_split(datalist: Sequence[dict], n_folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[list, list]:
    """
    K-fold cross-validation split (paper 000, sec. 4.2: five folds): the cases are shuffled once with ``seed``
    and cut into ``n_folds`` near-equal folds; fold ``fold`` validates, the others train.

    Over ``fold = 0 .. n_folds - 1`` the validation sets are disjoint and cover the datalist; a given
    ``(len(datalist), n_folds, seed)`` always gives the same folds. Both lists keep the datalist order.

    Args:
        datalist: the cases (any items, e.g. dicts from :py:func:`msd_datalist`).
        n_folds: number of folds, >= 2.
        fold: the validation fold, in ``[0, n_folds)``.
        seed: shuffling seed.

    Returns:
        ``(train, val)`` lists.

    Examples::

        train, val = kfold_split(msd_datalist(data_dir), n_folds=5, fold=2, seed=0)
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}.")
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in [0, {n_folds}), got {fold}.")
    _check_datalist(datalist, n_folds, f"{n_folds}-fold cross-validation")
    order = np.random.default_rng(seed).permutation(len(datalist))
    val_idx = set(np.array_split(order, n_folds)[fold].tolist())
    train = [d for i, d in enumerate(datalist) if i not in val_idx]
    val = [d for i, d in enumerate(datalist) if i in val_idx]
    return train, val


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    # Largest-remainder rounding: the counts sum to n and each is within one of n * fraction.
    exact = np.asarray(fractions, dtype=float) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def holdout_split(
    datalist: Sequence[dict], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[list, list, list]:
    """
    Train/validation/test hold-out split (paper 003: 80/10/10), shuffled once with ``seed``.

    The three parts are disjoint and cover the datalist; sizes are ``fractions * len(datalist)`` rounded so they
    sum to ``len(datalist)``; every part with a non-zero fraction gets at least one case. Each part keeps the
    datalist order.

    Args:
        datalist: the cases.
        fractions: (train, val, test) fractions, non-negative, summing to 1.
        seed: shuffling seed.

    Returns:
        ``(train, val, test)`` lists.

    Examples::

        train, val, test = holdout_split(msd_datalist(data_dir), (0.8, 0.1, 0.1), seed=0)
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}.")
    _check_datalist(datalist, sum(f > 0 for f in fractions), f"a {fractions} split")
    counts = _split_counts(len(datalist), fractions)
    # Give an empty part with a non-zero fraction one case from the largest part.
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    order = np.random.default_rng(seed).permutation(len(datalist))
    bounds = np.cumsum([0, *counts])
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        keep = set(order[lo:hi].tolist())
        parts.append([d for i, d in enumerate(datalist) if i in keep])
    return parts[0], parts[1], parts[2]
