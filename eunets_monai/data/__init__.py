"""MSD datalists, splits and MONAI transform presets per task."""

from __future__ import annotations

from eunets_monai.data.checks import (
    CheckedLoadImaged,
    CheckFinited,
    CheckShaped,
    DataError,
    RoundLabelsd,
    error_summary,
    source_name,
)
from eunets_monai.data.datalists import (
    DATA_ENV,
    HIPPOCAMPUS_SAMPLE,
    MSD_TASKS,
    MSDDownloadError,
    default_data_root,
    download_msd,
    holdout_split,
    kfold_split,
    msd_datalist,
    msd_task_name,
    resolve_task_dir,
)
from eunets_monai.data.presets import (
    STAGES,
    TASKS,
    TaskPreset,
    get_inferer,
    get_invertd,
    get_postprocessing,
    get_task,
    get_transforms,
)

__all__ = [
    "MSD_TASKS",
    "MSDDownloadError",
    "msd_task_name",
    "msd_datalist",
    "download_msd",
    "DATA_ENV",
    "HIPPOCAMPUS_SAMPLE",
    "default_data_root",
    "resolve_task_dir",
    "kfold_split",
    "holdout_split",
    "TaskPreset",
    "TASKS",
    "STAGES",
    "get_task",
    "get_transforms",
    "get_inferer",
    "get_invertd",
    "get_postprocessing",
    "DataError",
    "CheckedLoadImaged",
    "CheckShaped",
    "CheckFinited",
    "RoundLabelsd",
    "source_name",
    "error_summary",
]
