"""
Plots of a network-comparison study (matplotlib, written as PNG): Dice per fold per network, and EU vs plain per
validation case (paired). Both are built from the raw run dicts of
:py:func:`eunets_monai.evaluation.compare.load_results`.

Examples::

    results = load_results("runs/study_2d")
    plot_folds(results, "docs/figures", "results_2d")
    plot_paired(results, "docs/figures", "results_2d")
    plot_curves({"U-Net": plain_runs, "EU-Net": eu_runs}, "docs/figures/results_curves.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_folds", "plot_paired", "plot_cases", "plot_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _label(run: dict) -> str:
    return f"{run['display']} {run['spatial_dims']}D"


def plot_folds(results: Sequence[dict], out_dir: str | Path, prefix: str = "results") -> Path | None:
    """
    Mean Dice (over classes and the fold's cases) per fold, one column per network and dimensionality.

    Returns:
        the PNG path ``<out_dir>/<prefix>_dice_per_fold.png``, or None without results.
    """
    if not results:
        return None
    plt = _pyplot()
    labels = sorted({_label(r) for r in results}, key=lambda s: (s.split()[-1], s.replace("EU-", "").lower(), s))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(labels), 3.6))
    for i, label in enumerate(labels):
        runs = [r for r in results if _label(r) == label]
        vals = [float(np.mean(list(r["per_case"].values()))) for r in runs]
        ax.scatter([i] * len(vals), vals, color="tab:red" if runs[0]["mhex"] else "tab:blue", zorder=3)
        for r, v in zip(runs, vals):
            ax.annotate(f"f{r['fold']}", (i, v), textcoords="offset points", xytext=(6, -3), fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("validation mean Dice")
    ax.set_title("Dice per fold (blue: plain, red: EU)")
    ax.grid(axis="y", alpha=0.3)
    path = _save(fig, Path(out_dir) / f"{prefix}_dice_per_fold.png")
    plt.close(fig)
    return path


def plot_paired(results: Sequence[dict], out_dir: str | Path, prefix: str = "results") -> Path | None:
    """
    EU vs plain per validation case (mean Dice over classes), one panel per architecture and dimensionality that
    has both; points above the diagonal are cases where the EU-Net is better.

    Returns:
        the PNG path ``<out_dir>/<prefix>_eu_vs_plain.png``, or None when no pair exists.
    """
    pairs: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    for eu in (r for r in results if r["mhex"]):
        for plain in results:
            same = (plain["network"], plain["spatial_dims"], plain["fold"]) == (
                eu["network"],
                eu["spatial_dims"],
                eu["fold"],
            )
            if same and not plain["mhex"]:
                a, b = pairs.setdefault((eu["display"], eu["spatial_dims"]), ([], []))
                for case, dice in eu["per_case"].items():
                    if case in plain["per_case"]:
                        a.append(float(np.mean(plain["per_case"][case])))
                        b.append(float(np.mean(dice)))
    if not pairs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.4 * len(pairs), 3.4), squeeze=False)
    for ax, ((name, dims), (a, b)) in zip(axes[0], sorted(pairs.items())):
        lo = min(min(a), min(b), 0.5)
        ax.plot([lo, 1], [lo, 1], color="gray", lw=0.8)
        ax.scatter(a, b, s=10, alpha=0.7)
        better = int(np.sum(np.asarray(b) > np.asarray(a)))
        ax.set_title(f"{name} {dims}D: better on {better}/{len(a)}", fontsize=9)
        ax.set_xlabel("plain: case mean Dice")
        ax.set_ylabel("EU: case mean Dice")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1)
    path = _save(fig, Path(out_dir) / f"{prefix}_eu_vs_plain.png")
    plt.close(fig)
    return path


def plot_cases(
    net,
    cases: Sequence[dict],
    out_path: str | Path,
    spatial_dims: int = 3,
    roi_size: Sequence[int] | None = None,
    task: str = "hippocampus",
) -> Path:
    """
    One row per case, the axial slice with most foreground: image, ground truth, prediction, MHEX+ CAM of the
    first foreground class, the default uncertainty (``ExplainedPredictor``, softmax entropy).

    Args:
        net: an EU-Net (MHEX+ heads) with its weights loaded.
        cases: datalist items with image and label paths.
        out_path: the PNG to write.
        spatial_dims, roi_size: the network's dimensionality and inference ROI (task preset by default).
        task: the task preset of the preprocessing.

    Returns:
        ``out_path``.
    """
    from eunets_monai.data.presets import get_inferer, get_transforms
    from eunets_monai.inference.explained import DEFAULT_UNCERTAINTY, ExplainedPredictor

    predictor = ExplainedPredictor(net.eval(), cam="mhex", uncertainty=DEFAULT_UNCERTAINTY)
    sl = predictor.channel_slices
    inferer = get_inferer(task, spatial_dims=spatial_dims, roi_size=roi_size)
    transform = get_transforms(task, "val")
    plt = _pyplot()
    fig, axes = plt.subplots(len(cases), 5, figsize=(11, 2.6 * len(cases)), squeeze=False)
    titles = ["image", "ground truth", "prediction", "CAM (anterior)", "uncertainty"]
    for row, case in zip(axes, cases):
        item = transform(case)
        out = inferer(item["image"].unsqueeze(0), predictor)[0]
        label = item["label"][0].numpy()
        z = int(np.argmax((label > 0).sum(axis=(0, 1))))
        panels = [
            (item["image"][0, :, :, z].numpy(), "gray"),
            (label[:, :, z], "viridis"),
            (out[sl["logits"]].argmax(0)[:, :, z].numpy(), "viridis"),
            (out[sl["cam"]][1, :, :, z].numpy(), "magma"),
            (out[sl["uncertainty"]][0, :, :, z].numpy(), "inferno"),
        ]
        for ax, (img, cmap), title in zip(row, panels, titles):
            vmin, vmax = (0, 2) if cmap == "viridis" else (None, None)
            ax.imshow(np.rot90(img), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(title if ax is not row[0] else Path(str(case["image"])).name.split(".")[0], fontsize=8)
            ax.axis("off")
    path = _save(fig, Path(out_path))
    plt.close(fig)
    return path


def plot_curves(
    runs: dict[str, Sequence[dict]], path: str | Path, class_names: Sequence[str] = ("anterior", "posterior")
) -> Path | None:
    """
    Learning curves from the runs' histories: validation Dice per class against the step (top row; thin lines
    per fold, thick their mean) and, per class, the training-batch Dice of the final output and of every MHEX+ head
    (bottom row; mean over folds; solid: final output, dashed: heads from the shallowest).

    Args:
        runs: label -> runs (one per fold) with ``val_class_dice`` / ``train_head_dice`` in their history.
        path: the PNG to write.
        class_names: the foreground classes, in order.

    Returns:
        ``path``, or None when no run recorded per-class curves.
    """
    runs = {k: [r for r in v if r["history"] and "val_class_dice" in r["history"][0]] for k, v in runs.items()}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, len(class_names), figsize=(4.2 * len(class_names), 6.4), squeeze=False)
    for i, (label, group) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        steps = [h["step"] for h in group[0]["history"]]
        for c in range(len(class_names)):
            val = np.array([[h["val_class_dice"][c] for h in r["history"][: len(steps)]] for r in group])
            for curve in val:
                axes[0, c].plot(steps[: len(curve)], curve, color=color, alpha=0.3, lw=0.8)
            axes[0, c].plot(steps, val.mean(0), color=color, lw=2, label=label)
            heads = np.array([[h["train_head_dice"] for h in r["history"][: len(steps)]] for r in group])
            for level in range(heads.shape[2]):  # (runs, steps, levels, classes)
                style = "-" if level == 0 else (0, (4, 1 + level))
                name_level = label if level == 0 else None
                axes[1, c].plot(steps, heads[:, :, level, c].mean(0), color=color, ls=style, label=name_level)
    for c, name in enumerate(class_names):
        axes[0, c].set(xlabel="step", ylim=(0, 1))
        axes[0, c].set_title(f"{name}: validation Dice", fontsize=9)
        axes[1, c].set(xlabel="step", ylim=(0, 1))
        axes[1, c].set_title(f"{name}: training Dice (solid: final, dashed: heads)", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, Path(path))
    plt.close(fig)
    return path
