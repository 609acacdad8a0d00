"""
float32 vs bfloat16 on the CPU, side by side in one run (the logic behind ``scripts/benchmark_precision.py``):

- training steps/s of the 3D and the 2D EU-Net (Adam, the DiceCE deep-supervision loss, float32 master weights, the
  forward under ``torch.autocast`` and its outputs cast back to float32 before the loss), the two precisions taking
  turns round by round on identical copies of the network;
- inference s/case of a bundle's shipped checkpoint through ``eunets-infer``'s own predictor
  (:py:func:`~eunets_monai.inference.cli.build_predictor`, mask + CAM + uncertainty and mask only), the precisions
  again taking turns, with the Dice of each precision's masks against the labels and their difference.

Medians over rounds are reported; the ratio is bf16 / fp32 throughput (> 1: bfloat16 is faster).

Examples::

    report = {"machine": machine_info()}
    report["training"] = [training_benchmark(3, batch_size=2, shape=(40, 56, 40))]
    report["inference"] = inference_benchmark("bundles/eunet_hippocampus", labelled_cases(HIPPOCAMPUS_SAMPLE))
    print(format_report(report))
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from eunets_monai.engine.losses import get_loss
from eunets_monai.engine.precision import autocast, autocast_dtype, cpu_has_bf16
from eunets_monai.inference.io import CaseInput, read_volume
from eunets_monai.networks import get_network

__all__ = [
    "PRECISIONS_COMPARED",
    "INFERENCE_MODES",
    "machine_info",
    "training_benchmark",
    "labelled_cases",
    "inference_benchmark",
    "mask_dice",
    "format_report",
]

PRECISIONS_COMPARED = ("fp32", "bf16")
INFERENCE_MODES = {"mask+cam+uncertainty": ("seg", "cam", "uncertainty"), "mask": ("seg",)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model and cores, torch threads and version, the CPU's vector ISA and whether it has bf16 units."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_has_bf16": cpu_has_bf16(),
    }


def _alternate(repeats: int, run: Callable[[str], float]) -> dict[str, list[float]]:
    """``run(precision)`` for fp32 and bf16 in turns, ``repeats`` rounds, who goes first swapping every round."""
    values: dict[str, list[float]] = {p: [] for p in PRECISIONS_COMPARED}
    for r in range(repeats):
        for precision in PRECISIONS_COMPARED[:: 1 if r % 2 == 0 else -1]:
            values[precision].append(run(precision))
    return values


def _dtype(precision: str) -> torch.dtype | None:
    return autocast_dtype(precision, "cpu")


def training_benchmark(
    spatial_dims: int,
    batch_size: int,
    shape: Sequence[int],
    repeats: int = 5,
    steps: int = 10,
    warmup: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128),
    network: str = "unet",
    seed: int = 0,
) -> dict:
    """
    Training steps/s of an EU-Net in fp32 and bf16 (autocast forward, float32 master weights, no loss scaling).

    Each precision trains its own copy of the same initial network with its own Adam on one fixed synthetic batch
    (a step's cost does not depend on the voxel values); ``warmup`` untimed steps each first (oneDNN builds its
    kernels on the first calls), then ``repeats`` rounds of ``steps`` timed steps, the precisions alternating.

    Returns:
        ``{"network", "batch", "steps_per_s": {precision: median}, "rounds": {precision: [steps/s]}, "ratio",
        "loss": {precision: last loss}}``; ``ratio`` = bf16 / fp32 median steps/s.
    """
    torch.manual_seed(seed)
    net = get_network(network, spatial_dims=spatial_dims, in_channels=1, out_channels=3, channels=channels, mhex=True)
    nets = {p: copy.deepcopy(net).train() for p in PRECISIONS_COMPARED}
    optimisers = {p: torch.optim.Adam(nets[p].parameters(), lr=1e-3) for p in PRECISIONS_COMPARED}
    loss_fn = get_loss("dicece")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 1, *shape, generator=generator)
    y = torch.randint(0, 3, (batch_size, 1, *shape), generator=generator)
    last_loss: dict[str, float] = {}

    def step(precision: str) -> None:
        model, opt = nets[precision], optimisers[precision]
        with autocast(_dtype(precision), "cpu"):
            out = model(x)
        out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()  # fp32 loss
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_loss[precision] = float(loss)

    def timed(precision: str) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step(precision)
        return steps / (time.perf_counter() - start)

    for precision in PRECISIONS_COMPARED:
        for _ in range(warmup):
            step(precision)
    rounds = _alternate(repeats, timed)
    medians = {p: float(np.median(v)) for p, v in rounds.items()}
    return {
        "network": f"{network} EU {spatial_dims}D {list(channels)}",
        "batch": [batch_size, 1, *shape],
        "steps_per_s": medians,
        "rounds": rounds,
        "ratio": medians["bf16"] / medians["fp32"],
        "loss": last_loss,
    }


def labelled_cases(data_dir: str | os.PathLike, limit: int | None = None) -> list[tuple[CaseInput, Path]]:
    """
    (image, label) pairs of an MSD task folder: its ``dataset.json`` "training" section, then every ``imagesTs``
    image with a ``labelsTs`` file of the same name (the embedded sample keeps its held-back labels there).
    """
    from eunets_monai.data.datalists import msd_datalist

    root = Path(data_dir).expanduser().resolve()
    pairs = [(Path(d["image"]), Path(d["label"])) for d in msd_datalist(root, "training")]
    for image in sorted((root / "imagesTs").glob("*.nii.gz")):
        if (root / "labelsTs" / image.name).is_file():
            pairs.append((image, root / "labelsTs" / image.name))
    pairs.sort(key=lambda pair: pair[0].name)
    cases = [(CaseInput(image.name[: -len(".nii.gz")], str(image)), label) for image, label in pairs]
    return cases[:limit] if limit else cases


def mask_dice(pred: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes of two label maps (a class absent from both scores 1)."""
    scores = []
    for k in range(1, num_classes):
        p, g = pred == k, label == k
        denom = int(p.sum()) + int(g.sum())
        scores.append(2.0 * int((p & g).sum()) / denom if denom else 1.0)
    return float(np.mean(scores))


def inference_benchmark(
    bundle: str | os.PathLike,
    cases: Sequence[tuple[CaseInput, Path]],
    repeats: int = 5,
    modes: dict[str, Sequence[str]] | None = None,
    ckpt: str | os.PathLike | None = None,
) -> dict:
    """
    Seconds per case in fp32 and bf16 with the same checkpoint, through ``eunets-infer``'s predictor (its default
    window, overlap and blending; checks, preprocessing, sliding window, inversion to the input grid), and the Dice
    of each precision's masks against the labels.

    The scans are read once beforehand: the time is the predictor's, reading and writing files excluded (they cost
    the same in both precisions). One warm-up case per predictor is not timed; then ``repeats`` rounds over every
    case, the precisions alternating.

    Returns:
        ``{"bundle", "cases", "modes": {mode: {"seconds_per_case": {precision: median}, "rounds", "ratio",
        "dice": {precision: mean}, "dice_per_case", "abs_delta_dice", "max_case_abs_delta_dice",
        "voxels_differing"}}}``; ``ratio`` = fp32 / bf16 s/case (> 1: bfloat16 is faster).
    """
    import nibabel as nib

    from eunets_monai.inference.cli import build_parser, build_predictor, load_bundle, load_weights

    parts = load_bundle(bundle)
    load_weights(parts["network"], ckpt or parts["root"] / "models" / "model.pt", parts["root"])
    num_classes = len(parts["class_names"])
    volumes = [read_volume(case) for case, _ in cases]
    labels = [np.rint(np.asarray(nib.load(str(path)).dataobj)).astype(np.int64) for _, path in cases]
    result: dict = {"bundle": str(parts["root"]), "cases": [c.name for c, _ in cases], "modes": {}}
    for mode, outputs in (modes or INFERENCE_MODES).items():
        predictors = {}
        for precision in PRECISIONS_COMPARED:
            argv = [str(parts["root"]), "-", "-o", "-", "--device", "cpu", "--precision", precision, "--quiet"]
            args = build_parser().parse_args(argv)  # eunets-infer's defaults for everything else
            predictors[precision] = build_predictor(args, parts, copy.deepcopy(parts["network"]), outputs)
            predictors[precision](volumes[0])  # warm-up, not timed
        masks: dict[str, list[np.ndarray]] = {}

        def one_round(precision: str, masks=masks, predictors=predictors) -> float:
            start = time.perf_counter()
            segs = [predictors[precision](volume)["seg"][0] for volume in volumes]
            seconds = (time.perf_counter() - start) / len(volumes)
            masks.setdefault(precision, segs)
            return seconds

        rounds = _alternate(repeats, one_round)
        medians = {p: float(np.median(v)) for p, v in rounds.items()}
        per_case = {p: [mask_dice(m, lab, num_classes) for m, lab in zip(masks[p], labels)] for p in masks}
        dice = {p: float(np.mean(v)) for p, v in per_case.items()}
        differing = sum(int((a != b).sum()) for a, b in zip(masks["fp32"], masks["bf16"]))
        result["modes"][mode] = {
            "outputs": list(outputs),
            "seconds_per_case": medians,
            "rounds": rounds,
            "ratio": medians["fp32"] / medians["bf16"],
            "dice": dice,
            "dice_per_case": per_case,
            "abs_delta_dice": abs(dice["bf16"] - dice["fp32"]),
            "max_case_abs_delta_dice": max(abs(a - b) for a, b in zip(per_case["bf16"], per_case["fp32"])),
            "voxels_differing": differing,
            "voxels": int(sum(m.size for m in masks["fp32"])),
        }
    return result


def format_report(report: dict) -> str:
    """The human-readable table of a report holding ``machine`` and any of ``training`` / ``inference``."""
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['cpu_count']} cores, {m['cpu_capability']}), {m['threads']} torch thread(s), "
        f"torch {m['torch']}, cpu_has_bf16={m['cpu_has_bf16']}",
    ]
    if not m["cpu_has_bf16"]:
        lines.append("  note: no native bfloat16 on this CPU: bf16 is emulated here, expect it to be slower")
    if report.get("training"):
        first = report["training"][0]
        lines += ["", f"training steps/s (median of {len(first['rounds']['fp32'])} rounds; Adam, dicece, fp32 master)"]
        lines.append(f"{'network':34s} {'batch':>20s} {'fp32':>8s} {'bf16':>8s} {'bf16/fp32':>10s}")
        for t in report["training"]:
            s = t["steps_per_s"]
            batch = "x".join(map(str, t["batch"]))
            lines.append(f"{t['network']:34s} {batch:>20s} {s['fp32']:8.3f} {s['bf16']:8.3f} {t['ratio']:9.2f}x")
    if report.get("inference"):
        inf = report["inference"]
        mode0 = next(iter(inf["modes"].values()))
        lines += [
            "",
            f"inference s/case ({Path(inf['bundle']).name}, shipped checkpoint, {len(inf['cases'])} labelled cases, "
            f"median of {len(mode0['rounds']['fp32'])} rounds; reading/writing files excluded)",
            f"{'mode':22s} {'fp32':>7s} {'bf16':>7s} {'speed-up':>9s} {'Dice fp32':>10s} {'Dice bf16':>10s} "
            f"{'|dDice|':>8s} {'max case':>9s} {'voxels differing':>17s}",
        ]
        for mode, r in inf["modes"].items():
            s, d = r["seconds_per_case"], r["dice"]
            share = r["voxels_differing"] / r["voxels"]
            lines.append(
                f"{mode:22s} {s['fp32']:7.3f} {s['bf16']:7.3f} {r['ratio']:8.2f}x {d['fp32']:10.4f} {d['bf16']:10.4f} "
                f"{r['abs_delta_dice']:8.5f} {r['max_case_abs_delta_dice']:9.5f} "
                f"{r['voxels_differing']:>7d} ({share:.4%})"
            )
    return "\n".join(lines)
