"""
Train the weights the hippocampus bundles ship (``bundles/<name>/models/model.pt``) and record how they were made
in ``bundles/_shared/hippocampus_models.json`` (network setting, command, data licence, validation Dice).

The shipped models never see the cases embedded in ``eunets_monai/data/sample/hippocampus`` (they are excluded from
the training split), so the bundle tests can measure them on in-repo data they were not trained on; the reported
validation Dice is on the k-fold validation fold, which is also never trained on (it selects the best weights).

Examples::

    cfg = bundle_config("eunet_hippocampus", max_iters=3000)
    entry = train_bundle_model("eunet_hippocampus", cfg, "data/Task04_Hippocampus", "bundles", command="...")
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from eunets_monai.bundles.variants import training_calls
from eunets_monai.data.datalists import HIPPOCAMPUS_SAMPLE, msd_datalist
from eunets_monai.data.presets import get_task
from eunets_monai.evaluation.compare import (
    RunSpec,
    StudyConfig,
    _atomic_json,
    build_network,
    case_id,
    evaluate,
    machine_description,
    study_splits,
    train_run,
)
from eunets_monai.utils import atomic_torch_save

__all__ = [
    "BUNDLE_NETWORKS",
    "MODELS_JSON",
    "DATA_LICENCE",
    "embedded_case_ids",
    "bundle_config",
    "train_bundle_model",
    "format_models_table",
    "withdraw_bundle_model",
]

# Hippocampus bundle -> architecture (``eunets_monai.networks.NETWORKS``); every shipped model is the EU variant.
BUNDLE_NETWORKS: dict[str, str] = {
    "eunet_hippocampus": "unet",
    "eunetpp_hippocampus": "unetplusplus",
    "ahf_eunet_hippocampus": "ahf_unet",
    "eunet_transformer_hippocampus": "unet_transformer",
    "efen_eu_hippocampus": "efen",
}
MODELS_JSON = Path("bundles") / "_shared" / "hippocampus_models.json"
DATA_LICENCE = (
    "Trained on the Medical Segmentation Decathlon Task04_Hippocampus data (MRI, Vanderbilt University Medical "
    "Center), CC-BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). Attribution: M. Antonelli et al., "
    '"The Medical Segmentation Decathlon", Nature Communications 13, 4128 (2022), '
    "https://doi.org/10.1038/s41467-022-30695-9; A. L. Simpson et al., arXiv:1902.09063 (2019). The weights are "
    "material derived from that data: share them under the same licence with this attribution."
)


def embedded_case_ids(sample_dir: str | Path = HIPPOCAMPUS_SAMPLE) -> tuple[str, ...]:
    """Ids of every labelled case embedded in the package's hippocampus sample (its training and test lists)."""
    ids = [case_id(d) for section in ("training", "test") for d in msd_datalist(sample_dir, section)]
    return tuple(sorted(ids))


def bundle_config(bundle: str, **kwargs) -> StudyConfig:
    """
    The shipped-model recipe of a hippocampus bundle: its EU architecture, 5-fold split (fold 0 validates), the
    embedded sample excluded from training; other :py:class:`StudyConfig` fields from ``kwargs``.
    """
    if bundle not in BUNDLE_NETWORKS:
        raise ValueError(f"unknown hippocampus bundle {bundle!r}; choose one of {sorted(BUNDLE_NETWORKS)}.")
    base = dict(
        networks=(BUNDLE_NETWORKS[bundle],), variants=("eu",), n_folds=5, folds=(0,), exclude=embedded_case_ids()
    )
    return StudyConfig(**{**base, **kwargs})


def _summary(per_case: dict[str, list[float]], classes: list[str]) -> dict:
    arr = np.asarray(list(per_case.values()), dtype=float)
    if arr.size == 0:
        return {"n_cases": 0}
    out = {c: round(float(arr[:, i].mean()), 4) for i, c in enumerate(classes)}
    out["mean"] = round(float(arr.mean()), 4)
    out["n_cases"] = int(arr.shape[0])
    return out


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` for a read-modify-write of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def train_bundle_model(
    bundle: str,
    cfg: StudyConfig,
    data_dir: str | Path,
    bundles_dir: str | Path,
    command: str,
    work_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    max_seconds: float | None = None,
    on_timeout: str = "pause",
    progress: bool = False,
) -> dict | None:
    """
    Train (or resume) a bundle's shipped model and write ``<bundles_dir>/<bundle>/models/model.pt`` (the best
    validation weights as a bare float32 state dict) and the bundle's entry in
    ``<bundles_dir>/_shared/hippocampus_models.json``.

    Args:
        bundle: a key of :py:data:`BUNDLE_NETWORKS`.
        cfg: the recipe (see :py:func:`bundle_config`); its first fold is the validation fold.
        data_dir: MSD Task04_Hippocampus folder.
        bundles_dir: the repository's ``bundles/`` folder.
        command: the command line that reproduces this run (stored in the JSON).
        work_dir: resumable state (default ``<bundles_dir>/../.eunets_runs``).
        log: progress messages.
        max_seconds: training-time budget (see ``on_timeout``).
        on_timeout: "pause": when ``max_seconds`` is spent the state is saved and None returned (call again);
            "finish": the run ends there and its best weights are shipped.
        progress: a progress bar over the training steps.

    Returns:
        the JSON entry written, or None when stopped by ``max_seconds``.
    """
    fold = cfg.fold_list()[0]
    spec = RunSpec(BUNDLE_NETWORKS[bundle], True, fold)
    train, val = study_splits(msd_datalist(data_dir), cfg, fold)
    work = Path(work_dir) if work_dir else Path(bundles_dir).resolve().parent / ".eunets_runs"
    path = Path(bundles_dir) / "_shared" / MODELS_JSON.name
    state_file = work / f"{bundle}_{spec.name(cfg.spatial_dims)}.pt"
    # A resumed run was made by every call since its start: keep the earlier calls' command lines.
    earlier = []
    if state_file.is_file() and path.is_file():
        earlier = training_calls(json.loads(path.read_text()).get(bundle, {}))
    res = train_run(spec, cfg, train, val, state_file, log, max_seconds, on_timeout, progress)
    if not res["finished"]:
        return None
    state = {k: v.float() if v.is_floating_point() else v for k, v in res.pop("best_state").items()}
    model_path = Path(bundles_dir) / bundle / "models" / "model.pt"
    atomic_torch_save(state, model_path)

    # Dice of the shipped weights on the embedded cases (never trained on) through the same evaluation.
    net = build_network(spec.network, True, cfg).to(cfg.device)
    net.load_state_dict(torch.load(model_path, map_location=cfg.device, weights_only=True))
    embedded = [*msd_datalist(HIPPOCAMPUS_SAMPLE, "training"), *msd_datalist(HIPPOCAMPUS_SAMPLE, "test")]
    embedded_dice = evaluate(net, embedded, cfg)

    classes = [name for key, name in sorted(get_task(cfg.task).channel_def.items()) if key != "0"]
    entry = {
        "network": spec.network,
        "display": spec.display,
        "mhex": True,
        "spatial_dims": cfg.spatial_dims,
        "in_channels": get_task(cfg.task).in_channels,
        "out_channels": get_task(cfg.task).out_channels,
        "channels": list(cfg.channels),
        "patch_size": list(cfg.patch_size or get_task(cfg.task).patch_size[: cfg.spatial_dims]),
        "roi_size": list(cfg.patch_size or get_task(cfg.task).patch_size[: cfg.spatial_dims]),
        "preprocessing": f"eunets_monai.data.get_transforms('{cfg.task}', ...) presets",
        "params": res["params"],
        "model_bytes": model_path.stat().st_size,
        "command": command,
        "commands": [*earlier, command],
        "recipe": cfg.recipe() | {"exclude": "the 16 embedded sample cases (eunets_monai/data/sample/hippocampus)"},
        "split": f"{cfg.n_folds}-fold k-fold split of the 208 labelled cases (seed {cfg.seed}), fold {fold} "
        f"validates; the embedded sample cases are removed from the training folds",
        "n_train": res["n_train"],
        "n_val": res["n_val"],
        "validation": {"fold": fold, **_summary(res["per_case"], classes)},
        "embedded_sample": {"cases": sorted(embedded_dice), **_summary(embedded_dice, classes)},
        "val_per_case": res["per_case"],
        "history": res["history"],
        "best_step": res["best_step"],
        "steps": res["steps"],
        "train_seconds": round(res["seconds"], 1),
        "machine": machine_description(cfg.device),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data_licence": DATA_LICENCE,
        "shipped": True,
    }
    with _locked(path):  # several bundles may be trained at once: no entry may overwrite another's
        table = json.loads(path.read_text()) if path.is_file() else {}
        table[bundle] = entry
        _atomic_json(dict(sorted(table.items())), path)
    log(f"{bundle}: validation fold {fold} mean Dice {entry['validation'].get('mean')}, wrote {model_path}")
    return entry


def format_models_table(models: dict[str, dict]) -> str:
    """
    A Markdown table of ``hippocampus_models.json``: per shipped bundle the network setting, validation-fold Dice
    per class and mean, Dice on the embedded (never trained on) cases, training steps and time.
    """
    head = [
        "bundle",
        "network",
        "dims",
        "channels",
        "params (M)",
        "model.pt (MB)",
        "val fold",
        "val Dice anterior",
        "val Dice posterior",
        "val Dice mean",
        "embedded cases: mean Dice",
        "steps (best)",
        "train time (min)",
        "shipped",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in sorted(models.items()):
        v, emb = e["validation"], e["embedded_sample"]
        cells = [
            f"`{name}`",
            e["display"],
            f"{e['spatial_dims']}D",
            "-".join(map(str, e["channels"])),
            f"{e['params'] / 1e6:.3f}",
            f"{e['model_bytes'] / 1e6:.1f}",
            f"{v['fold']} ({v['n_cases']} cases)",
            f"{v['anterior']:.3f}",
            f"{v['posterior']:.3f}",
            f"**{v['mean']:.3f}**",
            f"{emb['mean']:.3f} ({emb['n_cases']})",
            f"{e['steps']} ({e['best_step']})",
            f"{e['train_seconds'] / 60:.0f}",
            "yes" if e.get("shipped", True) else "no (withdrawn)",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def withdraw_bundle_model(bundle: str, bundles_dir: str | Path, reason: str) -> dict:
    """
    Stop shipping a bundle's trained weights (delete ``models/model.pt``) while keeping its entry in
    ``hippocampus_models.json``, with ``"shipped": False`` and ``reason``: its measurements stay on record, and the
    bundle still has its network setting and the command that trains it.

    Returns:
        the updated entry.
    """
    path = Path(bundles_dir) / "_shared" / MODELS_JSON.name
    with _locked(path):
        table = json.loads(path.read_text()) if path.is_file() else {}
        if bundle not in table:
            raise ValueError(f"{bundle!r} has no entry in {path}; nothing to withdraw.")
        (Path(bundles_dir) / bundle / "models" / "model.pt").unlink(missing_ok=True)
        table[bundle].update(shipped=False, withdrawn_because=reason)
        _atomic_json(table, path)
    return table[bundle]
