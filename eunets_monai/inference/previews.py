"""
Previews for ``eunets-infer --previews``: one PNG per case (axial, coronal and sagittal planes through the largest
segmented structure; image with the mask outlined, CAM, uncertainty; class names and colour bars) and an
``index.html`` gallery of them. Needs matplotlib.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from eunets_monai.inference.io import ImageVolume, atomic_write_text

__all__ = ["case_preview", "write_index", "preview_planes"]

OUTLINE_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa")


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(*spatial) in stored voxel order -> nearest RAS axis order, so the planes are axial/coronal/sagittal."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    return apply_orientation(array, transform)


def preview_planes(seg: np.ndarray) -> tuple[int, int, int, int]:
    """
    (x, y, z, label): the centre of the largest segmented structure (the label with the most voxels) in RAS voxel
    indices, or the volume's centre and label 0 when the mask is empty.
    """
    labels, counts = np.unique(seg[seg > 0], return_counts=True)
    if not len(labels):
        return (*(s // 2 for s in seg.shape), 0)
    label = int(labels[np.argmax(counts)])
    centre = np.argwhere(seg == label).mean(0).round().astype(int)
    return (*(int(c) for c in centre), label)


def _planes(volume: np.ndarray, x: int, y: int, z: int) -> list[np.ndarray]:
    # Displayed with rows = the second axis, so superior/anterior end up at the top with origin="lower".
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def case_preview(
    volume: ImageVolume,
    maps: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    class_names: Sequence[str],
    title: str = "",
) -> Path:
    """
    Draw one case's preview PNG.

    Args:
        volume: the input (C, *spatial) as read.
        maps: ``"seg"`` (1, *spatial), optional ``"cam"`` (K - 1, *spatial) and ``"uncertainty"`` (1, *spatial).
        path: the PNG to write (through a temporary name).
        class_names: label names, background first.
        title: the figure title (default: the input's file name).

    Examples::

        case_preview(volume, maps, "out/previews/case.png", ["background", "spleen"])
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    affine = volume.affine
    spatial = volume.data.shape[1:]
    if len(spatial) == 2:  # a 2D input: one axial plane
        volume = ImageVolume(volume.data[..., None], affine, volume.source)
        maps = {k: v[..., None] for k, v in maps.items()}
    image = _to_ras(volume.data[0], affine)
    seg = _to_ras(maps["seg"][0], affine)
    x, y, z, label = preview_planes(seg)
    columns = [("image + mask", None)]
    if "cam" in maps:
        cam_index = max(label - 1, 0)
        columns.append((f"CAM: {class_names[cam_index + 1]}", _to_ras(maps["cam"][cam_index], affine)))
    if "uncertainty" in maps:
        columns.append(("uncertainty", _to_ras(maps["uncertainty"][0], affine)))
    spacing = np.abs(np.linalg.norm(affine[:3, :3], axis=0))[np.argsort(io_orientation(affine)[:, 0])]
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]
    fig, axes = plt.subplots(3, len(columns), figsize=(3.2 * len(columns), 9.2), squeeze=False)
    lo, hi = np.percentile(image, [1, 99.5])
    for row, (img, lab, name, aspect) in enumerate(
        zip(_planes(image, x, y, z), _planes(seg, x, y, z), ("axial", "coronal", "sagittal"), aspects)
    ):
        for col, (col_name, data) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            if data is None:
                for value in range(1, len(class_names)):
                    if (lab == value).any():
                        colour = OUTLINE_COLOURS[(value - 1) % len(OUTLINE_COLOURS)]
                        ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=1.0, origin="lower")
            else:
                plane = _planes(data, x, y, z)[row]
                cmap = "inferno" if col_name.startswith("CAM") else "viridis"
                shown = ax.imshow(
                    plane, cmap=cmap, origin="lower", vmin=0, vmax=1, alpha=0.75, aspect=aspect, interpolation="nearest"
                )
                if row == 0:
                    fig.colorbar(shown, ax=axes[:, col], fraction=0.04, pad=0.02, shrink=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(col_name, fontsize=10)
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    handles = [
        Line2D([0], [0], color=OUTLINE_COLOURS[(v - 1) % len(OUTLINE_COLOURS)], label=class_names[v])
        for v in range(1, len(class_names))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title or Path(volume.source).name, fontsize=11)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def write_index(output_dir: str | os.PathLike, rows: Sequence[Mapping]) -> Path:
    """``index.html``: every case's preview (when drawn) with its status, volumes and error, in summary order."""
    root = Path(output_dir)
    cards = []
    for row in rows:
        name = html.escape(str(row.get("case") or row.get("input", "")))
        png = root / "previews" / f"{row.get('case')}.png"
        facts = [f"{k.removeprefix('volume_ml_')}: {v} ml" for k, v in row.items() if k.startswith("volume_ml_")]
        status = html.escape(str(row.get("status", "")))
        detail = html.escape(str(row.get("error") or ", ".join(facts)))
        picture = (
            f'<a href="previews/{png.name}"><img src="previews/{png.name}" alt="{name}"></a>' if png.is_file() else ""
        )
        cards.append(
            f'<figure class="{status}">{picture}<figcaption><b>{name}</b> [{status}] {detail}</figcaption></figure>'
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>eunets-infer previews</title><style>"
        "body{font-family:sans-serif;margin:1em}figure{display:inline-block;width:360px;margin:.5em;vertical-align:top}"
        "img{width:100%}figure.failed figcaption{color:#b00}</style></head><body><h1>eunets-infer previews</h1>"
        + "\n".join(cards)
        + "</body></html>\n"
    )
    index = root / "index.html"
    atomic_write_text(index, page)
    return index
