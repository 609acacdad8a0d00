"""
float32 vs bfloat16, with and without the channels-last memory format, on the CPU, side by side in one run (the
logic behind ``scripts/benchmark_precision.py``):

- training steps/s of the 3D and the 2D EU-Net (Adam, the DiceCE deep-supervision loss, float32 master weights, the
  forward under ``torch.autocast`` and its outputs cast back to float32 before the loss), the settings taking turns
  round by round on identical copies of the network;
- inference s/case of a bundle's shipped checkpoint through ``eunets-infer``'s own predictor
  (:py:func:`~eunets_monai.inference.cli.build_predictor`, mask + CAM + uncertainty and mask only), the settings
  again taking turns, with the Dice of each setting's masks against the labels and their difference to the
  baseline's.

A setting (:py:data:`SETTINGS`) is a precision, ``"fp32"`` or ``"bf16"``, optionally with ``"+cl"``: the network
converted with ``net.to(memory_format=torch.channels_last)`` (``torch.channels_last_3d`` in 3D) and its input
batches converted the same way (:py:func:`parse_settings` also takes ``"+channels_last"``). The baseline is
``"fp32"`` when it is measured, else the first setting measured.

Medians over rounds are reported; ``ratios`` are each setting's throughput over the baseline's (> 1: faster).

Examples::

    report = {"machine": machine_info()}
    report["training"] = [training_benchmark(3, batch_size=2, shape=(40, 56, 40))]   # all four settings
    report["inference"] = inference_benchmark(
        "bundles/eunet_hippocampus", labelled_cases(HIPPOCAMPUS_SAMPLE), settings=("fp32", "bf16", "bf16+cl")
    )
    print(format_report(report))
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from eunets_monai.engine.losses import get_loss
from eunets_monai.engine.precision import autocast, autocast_dtype, cpu_has_bf16, to_channels_last
from eunets_monai.evaluation.compare import label_map_dice
from eunets_monai.inference.io import CaseInput, read_volume
from eunets_monai.networks import get_network
from eunets_monai.utils import cpu_model

__all__ = [
    "SETTINGS",
    "PRECISIONS_COMPARED",
    "INFERENCE_MODES",
    "parse_settings",
    "machine_info",
    "training_benchmark",
    "labelled_cases",
    "inference_benchmark",
    "mask_dice",
    "format_report",
]

# Every setting, in the order they are measured and reported ("+cl": channels-last memory format).
SETTINGS = ("fp32", "bf16", "fp32+cl", "bf16+cl")
PRECISIONS_COMPARED = ("fp32", "bf16")
INFERENCE_MODES = {"mask+cam+uncertainty": ("seg", "cam", "uncertainty"), "mask": ("seg",)}
_CL_SUFFIXES = ("+channels_last", "+cl")


def _canonical_setting(name: str) -> str:
    """``"bf16+channels_last"`` -> ``"bf16+cl"``; ValueError for a name that is not a setting."""
    text = str(name).strip().lower()
    for suffix in _CL_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)] + "+cl"
            break
    if text not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}: expected one of {', '.join(SETTINGS)} (+channels_last = +cl)")
    return text


def parse_settings(names: Sequence[str] | None = None) -> tuple[str, ...]:
    """
    The settings to measure, canonical (``"+channels_last"`` -> ``"+cl"``), without repeats, in
    :py:data:`SETTINGS` order (so ``"fp32"``, when asked for, comes first and is the baseline); all when ``None``.

    Raises:
        ValueError: an unknown name, or none at all.
    """
    if names is None:
        return SETTINGS
    if isinstance(names, str):
        names = [names]
    wanted = {_canonical_setting(n) for n in names}
    if not wanted:
        raise ValueError("no settings to measure")
    return tuple(s for s in SETTINGS if s in wanted)


def _precision(setting: str) -> str:
    return setting.split("+", 1)[0]


def _channels_last(setting: str) -> bool:
    return setting.endswith("+cl")


def _baseline(settings: Sequence[str]) -> str:
    return "fp32" if "fp32" in settings else settings[0]


def machine_info() -> dict:
    """CPU model and cores, torch threads and version, the CPU's vector ISA and whether it has bf16 units."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_has_bf16": cpu_has_bf16(),
    }


def _alternate(repeats: int, run: Callable[[str], float], settings: Sequence[str]) -> dict[str, list[float]]:
    """``run(setting)`` for every setting in turns, ``repeats`` rounds, the order reversing every round."""
    values: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(repeats):
        for setting in settings[:: 1 if r % 2 == 0 else -1]:
            values[setting].append(run(setting))
    return values


def _dtype(setting: str) -> torch.dtype | None:
    return autocast_dtype(_precision(setting), "cpu")


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
    settings: Sequence[str] | None = None,
) -> dict:
    """
    Training steps/s of an EU-Net in each of ``settings`` (default: all of :py:data:`SETTINGS`): fp32 or bf16
    (autocast forward, float32 master weights, no loss scaling), each optionally channels-last (the network's copy
    and the batch converted with :py:func:`to_channels_last`).

    Each setting trains its own copy of the same initial network with its own Adam on one fixed synthetic batch
    (a step's cost does not depend on the voxel values); ``warmup`` untimed steps each first (oneDNN builds its
    kernels on the first calls), then ``repeats`` rounds of ``steps`` timed steps, the settings alternating.

    Returns:
        ``{"network", "batch", "settings", "baseline", "steps_per_s": {setting: median}, "rounds": {setting:
        [steps/s]}, "ratios": {setting: median / baseline's median}, "loss": {setting: last loss}}``.
    """
    settings = parse_settings(settings)
    torch.manual_seed(seed)
    net = get_network(network, spatial_dims=spatial_dims, in_channels=1, out_channels=3, channels=channels, mhex=True)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 1, *shape, generator=generator)
    y = torch.randint(0, 3, (batch_size, 1, *shape), generator=generator)
    nets, inputs = {}, {}
    for s in settings:
        nets[s] = copy.deepcopy(net).train()
        inputs[s] = x
        if _channels_last(s):
            nets[s] = to_channels_last(nets[s], spatial_dims)
            inputs[s] = to_channels_last(x, spatial_dims)
    optimisers = {s: torch.optim.Adam(nets[s].parameters(), lr=1e-3) for s in settings}
    loss_fn = get_loss("dicece")
    last_loss: dict[str, float] = {}

    def step(setting: str) -> None:
        model, opt = nets[setting], optimisers[setting]
        with autocast(_dtype(setting), "cpu"):
            out = model(inputs[setting])
        out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()  # fp32 loss
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last_loss[setting] = float(loss.detach())

    def timed(setting: str) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step(setting)
        return steps / (time.perf_counter() - start)

    for setting in settings:
        for _ in range(warmup):
            step(setting)
    rounds = _alternate(repeats, timed, settings)
    medians = {s: float(np.median(v)) for s, v in rounds.items()}
    baseline = _baseline(settings)
    return {
        "network": f"{network} EU {spatial_dims}D {list(channels)}",
        "batch": [batch_size, 1, *shape],
        "settings": list(settings),
        "baseline": baseline,
        "steps_per_s": medians,
        "rounds": rounds,
        "ratios": {s: medians[s] / medians[baseline] for s in settings},
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
    return float(np.mean(label_map_dice(pred, label, num_classes)))


def _channels_last_predictor(predictor, spatial_dims: int):
    """
    ``predictor`` (a :py:class:`~eunets_monai.inference.runner.VolumePredictor`) running channels-last: its network
    converted in place, and a forward pre-hook on the module its inferer calls converting every window batch.
    """
    to_channels_last(predictor.network, spatial_dims)

    def windows_channels_last(_module, args):
        x, *rest = args
        if isinstance(x, torch.Tensor) and x.dim() in (4, 5):
            x = to_channels_last(x, x.dim() - 2)
        return (x, *rest)

    predictor.model.register_forward_pre_hook(windows_channels_last)
    return predictor


def inference_benchmark(
    bundle: str | os.PathLike,
    cases: Sequence[tuple[CaseInput, Path]],
    repeats: int = 5,
    modes: dict[str, Sequence[str]] | None = None,
    ckpt: str | os.PathLike | None = None,
    settings: Sequence[str] | None = None,
) -> dict:
    """
    Seconds per case in each of ``settings`` (default: all of :py:data:`SETTINGS`) with the same checkpoint, through
    ``eunets-infer``'s predictor (its default window, overlap and blending; checks, preprocessing, sliding window,
    inversion to the input grid), and the Dice of each setting's masks against the labels. A ``"+cl"`` setting's
    predictor has its network converted to channels-last and its window batches converted by a forward pre-hook
    (the predictor itself is unchanged).

    The scans are read once beforehand: the time is the predictor's, reading and writing files excluded (they cost
    the same in every setting). One warm-up case per predictor is not timed; then ``repeats`` rounds over every
    case, the settings alternating.

    Returns:
        ``{"bundle", "cases", "settings", "baseline", "modes": {mode: {"outputs", "seconds_per_case": {setting:
        median}, "rounds", "ratios", "dice": {setting: mean}, "dice_per_case", "abs_delta_dice",
        "max_case_abs_delta_dice", "voxels_differing", "voxels"}}}``; ``ratios`` = baseline's s/case / the setting's
        (> 1: faster); the ``abs_delta_dice``, ``max_case_abs_delta_dice`` and ``voxels_differing`` dicts compare
        each other setting's masks with the baseline's.
    """
    import nibabel as nib

    from eunets_monai.inference.cli import build_parser, build_predictor, load_bundle, load_weights

    settings = parse_settings(settings)
    baseline = _baseline(settings)
    others = [s for s in settings if s != baseline]
    parts = load_bundle(bundle)
    load_weights(parts["network"], ckpt or parts["root"] / "models" / "model.pt", parts["root"])
    num_classes = len(parts["class_names"])
    volumes = [read_volume(case) for case, _ in cases]
    labels = [np.rint(np.asarray(nib.load(str(path)).dataobj)).astype(np.int64) for _, path in cases]
    result: dict = {
        "bundle": str(parts["root"]),
        "cases": [c.name for c, _ in cases],
        "settings": list(settings),
        "baseline": baseline,
        "modes": {},
    }
    for mode, outputs in (modes or INFERENCE_MODES).items():
        predictors = {}
        for setting in settings:
            argv = [str(parts["root"]), "-", "-o", "-", "--device", "cpu", "--precision", _precision(setting)]
            args = build_parser().parse_args([*argv, "--quiet"])  # eunets-infer's defaults for everything else
            predictors[setting] = build_predictor(args, parts, copy.deepcopy(parts["network"]), outputs)
            if _channels_last(setting):
                _channels_last_predictor(predictors[setting], int(parts["spatial_dims"]))
            predictors[setting](volumes[0])  # warm-up, not timed
        masks: dict[str, list[np.ndarray]] = {}

        def one_round(setting: str, masks=masks, predictors=predictors) -> float:
            start = time.perf_counter()
            segs = [predictors[setting](volume)["seg"][0] for volume in volumes]
            seconds = (time.perf_counter() - start) / len(volumes)
            masks.setdefault(setting, segs)
            return seconds

        rounds = _alternate(repeats, one_round, settings)
        medians = {s: float(np.median(v)) for s, v in rounds.items()}
        per_case = {s: [mask_dice(m, lab, num_classes) for m, lab in zip(masks[s], labels)] for s in settings}
        dice = {s: float(np.mean(v)) for s, v in per_case.items()}
        result["modes"][mode] = {
            "outputs": list(outputs),
            "seconds_per_case": medians,
            "rounds": rounds,
            "ratios": {s: medians[baseline] / medians[s] for s in settings},
            "dice": dice,
            "dice_per_case": per_case,
            "abs_delta_dice": {s: abs(dice[s] - dice[baseline]) for s in others},
            "max_case_abs_delta_dice": {
                s: max(abs(a - b) for a, b in zip(per_case[s], per_case[baseline])) for s in others
            },
            "voxels_differing": {
                s: sum(int((a != b).sum()) for a, b in zip(masks[s], masks[baseline])) for s in others
            },
            "voxels": int(sum(m.size for m in masks[baseline])),
        }
    return result


def _training_lines(training: Sequence[dict]) -> list[str]:
    first = training[0]
    settings, baseline = first["settings"], first["baseline"]
    others = [s for s in settings if s != baseline]
    widths = {s: max(8, len(s) + 1) for s in settings}
    ratio_heads = {s: f"{s}/{baseline}" for s in others}
    lines = [
        "",
        f"training steps/s (median of {len(first['rounds'][baseline])} rounds; Adam, dicece, fp32 master; "
        f"+cl: channels-last memory format), and each setting's steps/s over {baseline}'s",
        f"{'network':30s} {'batch':>14s}"
        + "".join(f" {s:>{widths[s]}s}" for s in settings)
        + " |"
        + "".join(f" {ratio_heads[s]:>{len(ratio_heads[s])}s}" for s in others),
    ]
    for t in training:
        s, r = t["steps_per_s"], t["ratios"]
        batch = "x".join(map(str, t["batch"]))
        lines.append(
            f"{t['network']:30s} {batch:>14s}"
            + "".join(f" {s[k]:{widths[k]}.3f}" for k in settings)
            + " |"
            + "".join(f" {f'{r[k]:.2f}x':>{len(ratio_heads[k])}s}" for k in others)
        )
    return lines


def _inference_lines(inf: dict) -> list[str]:
    settings, baseline = inf["settings"], inf["baseline"]
    mode0 = next(iter(inf["modes"].values()))
    sw = max(8, *(len(s) for s in settings))
    lines = [
        "",
        f"inference s/case ({Path(inf['bundle']).name}, shipped checkpoint, {len(inf['cases'])} labelled cases, "
        f"median of {len(mode0['rounds'][baseline])} rounds; reading/writing files excluded; speed-up, |dDice| "
        f"and voxels differing vs {baseline})",
        f"{'mode':22s} {'setting':{sw}s} {'s/case':>7s} {'speed-up':>9s} {'Dice':>8s} {'|dDice|':>8s} "
        f"{'max case':>9s} {'voxels differing':>17s}",
    ]
    for mode, r in inf["modes"].items():
        for i, setting in enumerate(settings):
            head = f"{mode if i == 0 else '':22s} {setting:{sw}s} {r['seconds_per_case'][setting]:7.3f} "
            head += f"{r['ratios'][setting]:8.2f}x {r['dice'][setting]:8.4f}"
            if setting == baseline:
                lines.append(f"{head} {'-':>8s} {'-':>9s} {'-':>17s}")
                continue
            differing = r["voxels_differing"][setting]
            lines.append(
                f"{head} {r['abs_delta_dice'][setting]:8.5f} {r['max_case_abs_delta_dice'][setting]:9.5f} "
                f"{differing:>7d} ({differing / r['voxels']:.4%})"
            )
    return lines


def format_report(report: dict) -> str:
    """The human-readable tables of a report holding ``machine`` and any of ``training`` / ``inference``."""
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['cpu_count']} cores, {m['cpu_capability']}), {m['threads']} torch thread(s), "
        f"torch {m['torch']}, cpu_has_bf16={m['cpu_has_bf16']}",
    ]
    if not m["cpu_has_bf16"]:
        lines.append("  note: no native bfloat16 on this CPU: bf16 is emulated here, expect it to be slower")
    if report.get("training"):
        lines += _training_lines(report["training"])
    if report.get("inference"):
        lines += _inference_lines(report["inference"])
    return "\n".join(lines)
