"""
Cost of explanations and uncertainty at inference, side by side in one run on the same real hippocampus volumes
through MONAI's ``SlidingWindowInferer`` (issue 3, "Performance"):

- mask only (the network's logits)                               baseline
- mask + MHEX+ CAM (``ExplainedPredictor(cam=True, uncertainty=None)``)     goal <= 1.05x
- mask + CAM + uncertainty: softmax entropy (the bundles' default), the heads' mutual information and the
  collaboration gradient's sketch estimator (16 probes)                              goal <= 2x
- mask + CAM + collaboration gradient, exact                       (on small crops only: per-pixel gradients)
- deep ensemble of 5 members, MC dropout with T = 10, flip TTA (8) (``SampledPredictor``)

Repetitions are interleaved (A B C ... per volume, round after round) and medians reported, since these machines
are noisy: "x mask" is the ratio of the median times per pass over all volumes, "paired x" the median over
(round, volume) of each call's time over the mask-only call just before it, the steadier of the two under drifting
load; the goals are judged on it. The
networks are randomly initialised (seeded): the cost does not depend on the weights. The exact mode costs
2 (L - 1) batched vector-Jacobian products per voxel, far too much for whole volumes on a CPU, so it is timed on
``--exact-crop`` crops of the same volumes against mask-only inference on those crops.

Run (CPU here; on a GPU the same command uses it)::

    python scripts/benchmark_explain.py --json

With ``--json`` the last line is one JSON object with every median and ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.inferers import SlidingWindowInferer

from eunets_monai.data.datalists import HIPPOCAMPUS_SAMPLE, kfold_split, msd_datalist
from eunets_monai.data.presets import get_task, get_transforms
from eunets_monai.inference.explained import ExplainedPredictor
from eunets_monai.networks.nets.unet import EUNet
from eunets_monai.uncertainty.baselines import SampledPredictor

GOALS = {"mask+cam": 1.05, "mask+cam+entropy": 2.0, "mask+cam+heads_mi": 2.0, "mask+cam+sketch16": 2.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir",
        type=Path,
        default=HIPPOCAMPUS_SAMPLE,
        help="MSD Task04_Hippocampus folder (default: the embedded real subset; the cost does not depend on the cases)",
    )
    p.add_argument("--volumes", type=int, default=2, help="validation volumes (fold 0 of 5) to run on")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per variant")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="EU-Net widths")
    p.add_argument("--members", type=int, default=5, help="deep-ensemble size")
    p.add_argument("--mc-samples", type=int, default=10, help="MC dropout T")
    p.add_argument("--sw-batch-size", type=int, default=4)
    p.add_argument("--exact-crop", type=int, default=8, help="edge of the cubic crops timed in exact mode (0: skip)")
    p.add_argument("--exact-reps", type=int, default=2, help="interleaved repetitions for the exact mode")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    return p.parse_args(argv)


def load_volumes(data_dir: Path, n: int, device: torch.device) -> list[torch.Tensor]:
    """The first ``n`` validation volumes of fold 0 (5 folds, seed 0), preprocessed, as (1, 1, X, Y, Z)."""
    _, val = kfold_split(msd_datalist(data_dir), n_folds=5, fold=0, seed=0)
    tf = get_transforms("hippocampus", "infer")
    vols = []
    for item in val[:n]:
        try:
            vols.append(tf({"image": item["image"]})["image"].as_tensor()[None].to(device))
        except Exception as e:  # noqa: BLE001 - report the bad volume in one line and keep the others
            print(f"skipping {item['image']}: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
    if not vols:
        raise RuntimeError(f"no readable validation volume in {data_dir}.")
    return vols


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(fn: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, device: torch.device) -> float:
    """Seconds to run ``fn`` on one volume."""
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(volume)
    sync(device)
    return time.perf_counter() - t0


def interleaved(variants: dict[str, Callable], volumes: list, reps: int, device: torch.device) -> dict[str, list]:
    """
    One warm-up call of each variant, then ``reps`` rounds over the volumes, every variant on the same volume
    back to back (A B C ... per volume), so each variant's time can be paired with the baseline's taken moments
    apart. Returns per variant the list of (round, volume) timings, in the same order for every variant.
    """
    for fn in variants.values():
        run_one(fn, volumes[0], device)
    times: dict[str, list] = {k: [] for k in variants}
    for _ in range(reps):
        for v in volumes:
            for name, fn in variants.items():
                times[name].append(run_one(fn, v, device))
    return times


def summarise(times: dict[str, list], n_volumes: int, base: str = "mask") -> tuple[dict, dict, dict]:
    """Median time per pass over all volumes, its ratio to ``base``, and the median of the paired per-volume ratios."""
    per_round = {k: [sum(t[i : i + n_volumes]) for i in range(0, len(t), n_volumes)] for k, t in times.items()}
    med = {k: statistics.median(v) for k, v in per_round.items()}
    ratio = {k: med[k] / med[base] for k in med}
    paired = {k: statistics.median(a / b for a, b in zip(t, times[base])) for k, t in times.items()}
    return med, ratio, paired


def centre_crops(volumes: list[torch.Tensor], edge: int) -> list[torch.Tensor]:
    out = []
    for v in volumes:
        starts = [max((s - edge) // 2, 0) for s in v.shape[2:]]
        out.append(v[(..., *(slice(a, a + edge) for a in starts))].contiguous())
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    channels = tuple(args.channels)
    k = get_task("hippocampus").out_channels
    net = EUNet(3, 1, k, channels=channels).to(device).eval()
    members = [EUNet(3, 1, k, channels=channels).to(device).eval() for _ in range(args.members)]
    dropout_net = EUNet(3, 1, k, channels=channels, dropout=0.1).to(device).eval()
    volumes = load_volumes(args.data_dir, args.volumes, device)
    roi = get_task("hippocampus").roi_size
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=args.sw_batch_size, overlap=0.25)

    def via(predictor: torch.nn.Module) -> Callable:
        return lambda v: inferer(v, predictor)

    variants = {
        "mask": via(net),
        "mask+cam": via(ExplainedPredictor(net, cam=True, uncertainty=None)),
        "mask+cam+entropy": via(ExplainedPredictor(net, cam=True, uncertainty="entropy")),
        "mask+cam+heads_mi": via(ExplainedPredictor(net, cam=True, uncertainty="heads_mi")),
        "mask+cam+sketch16": via(ExplainedPredictor(net, cam=True, uncertainty="collaboration", num_probes=16)),
        f"ensemble{args.members}": via(SampledPredictor("ensemble", members)),
        f"mc_dropout{args.mc_samples}": via(SampledPredictor("mc_dropout", dropout_net, num_samples=args.mc_samples)),
        "tta8": via(SampledPredictor("tta", net)),
    }
    print(
        f"{len(volumes)} volumes {[tuple(v.shape[2:]) for v in volumes]}, EU-Net channels {channels}, roi {roi}, "
        f"device {device}, {torch.get_num_threads()} threads, {args.reps} interleaved reps",
        flush=True,
    )
    times = interleaved(variants, volumes, args.reps, device)
    med, ratios, paired = summarise(times, len(volumes))

    exact: dict = {}
    if args.exact_crop > 0:
        crops = centre_crops(volumes, args.exact_crop)
        crop_inferer = SlidingWindowInferer(roi_size=(args.exact_crop,) * 3, sw_batch_size=args.sw_batch_size)
        ev = {
            "mask": lambda v: crop_inferer(v, net),
            "mask+cam+sketch16": lambda v: crop_inferer(
                v, ExplainedPredictor(net, uncertainty="collaboration", num_probes=16)
            ),
            "mask+cam+exact": lambda v: crop_inferer(v, ExplainedPredictor(net, uncertainty="collaboration_exact")),
        }
        et = interleaved(ev, crops, args.exact_reps, device)
        emed, eratio, epaired = summarise(et, len(crops))
        exact = {"crop": [args.exact_crop] * 3, "median_s": emed, "ratio_vs_mask": eratio, "paired_ratio": epaired}

    print(f"\n{'variant':22s} {'median s':>10s} {'x mask':>8s} {'paired x':>9s}  goal (on the paired ratio)")
    for name in med:
        goal = GOALS.get(name)
        verdict = "" if goal is None else f"<= {goal}x {'met' if paired[name] <= goal else 'NOT met'}"
        print(f"{name:22s} {med[name]:10.3f} {ratios[name]:8.2f} {paired[name]:9.2f}  {verdict}")
    if exact:
        print(f"\nexact collaboration gradient on {args.exact_crop}^3 centre crops ({args.exact_reps} reps):")
        for name, m in exact["median_s"].items():
            print(f"{name:22s} {m:10.3f} {exact['ratio_vs_mask'][name]:8.1f} {exact['paired_ratio'][name]:9.1f}")
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "volumes": [list(v.shape[2:]) for v in volumes],
        "channels": list(channels),
        "roi": list(roi),
        "reps": args.reps,
        "median_s": med,
        "ratio_vs_mask": ratios,
        "paired_ratio": paired,
        "goals": {n: {"paired_ratio": paired[n], "goal": g, "met": paired[n] <= g} for n, g in GOALS.items()},
        "times_s": times,
        "exact": exact,
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"benchmark_explain: {e}")
