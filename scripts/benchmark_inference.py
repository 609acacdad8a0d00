"""
Benchmark of ``eunets-infer``'s engine (a benchmark, not a test): seconds per case and voxels/s for mask only vs
mask + CAM vs mask + CAM + uncertainty, side by side in one run.

- Embedded hippocampus cases: each mode runs ``eunets-infer``'s loop (``run_cases``, with its background writer)
  over the same cases; the modes take turns for ``--repeats`` rounds and the median of the per-round ratios is
  reported.
- A CT-sized synthetic volume (512x512x300 by default): one subprocess per mode, stitching on the CPU, peak RSS.

Goals from issue #9: mask+CAM <= 1.05x mask only, mask+CAM+uncertainty <= 2.0x, peak RSS <= 8 GiB for the CT-sized
volume, per-case overhead (reading, transforms, writing) small beside the network.

Example::

    OMP_NUM_THREADS=2 python scripts/benchmark_inference.py --channels 16 32 64 128 256 --json
    python scripts/benchmark_inference.py --channels 8 16 32 --ct-shape 256 256 150   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eunets_monai.data import HIPPOCAMPUS_SAMPLE
from eunets_monai.data.presets import get_inferer, get_transforms
from eunets_monai.inference.io import CaseInput, ImageVolume, read_volume, write_case
from eunets_monai.inference.runner import VolumePredictor, run_cases
from eunets_monai.networks.nets.unet import UNet

CLASSES = ("background", "anterior", "posterior")
MODES = {"mask": ("seg",), "mask+cam": ("seg", "cam"), "mask+cam+uncertainty": ("seg", "cam", "uncertainty")}


def build_predictor(task: str, outputs, channels, roi, sw_batch_size: int, device: str, stitch: str) -> VolumePredictor:
    torch.manual_seed(0)  # random weights: the timing does not depend on what the network learned
    k = 2 if task == "spleen" else 3
    net = UNet(3, 1, k, channels=tuple(channels), mhex=True)
    inferer = get_inferer(
        task, roi_size=roi, sw_batch_size=sw_batch_size, overlap=0.25, mode="gaussian", sw_device=device, device=stitch
    )
    return VolumePredictor(net, get_transforms(task, "infer"), inferer, outputs, device)


class TimedPredictor:
    """Wraps a predictor's network-grid step to split network time from reading, transforms and writing."""

    def __init__(self, predictor: VolumePredictor) -> None:
        self.predictor, self.network_seconds = predictor, 0.0
        inner = predictor.predict_network_grid

        def timed(image):
            start = time.perf_counter()
            out = inner(image)
            self.network_seconds += time.perf_counter() - start
            return out

        predictor.predict_network_grid = timed


def hippocampus(args) -> dict:
    """Each mode runs ``run_cases`` (the loop ``eunets-infer`` runs) over the same cases, ``--repeats`` times, the
    order of the modes rotated every repeat; ratios are taken within a repeat, then their median is reported."""
    cases = [CaseInput(p.name[:-7], str(p)) for p in sorted((HIPPOCAMPUS_SAMPLE / "imagesTs").glob("*.nii.gz"))]
    cases += [CaseInput(p.name[:-7], str(p)) for p in sorted((HIPPOCAMPUS_SAMPLE / "imagesTr").glob("*.nii.gz"))]
    cases = cases[: args.cases]
    timed = {
        m: TimedPredictor(build_predictor("hippocampus", o, args.channels, None, args.sw_batch_size, "cpu", "cpu"))
        for m, o in MODES.items()
    }
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    voxels = sum(int(np.prod(read_volume(c).spatial_shape)) for c in cases)
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("warm", *MODES):
            (Path(tmp) / sub).mkdir()
        for m in MODES:  # warm-up (first-call allocations, lazy imports), not timed
            run_cases(cases[:1], timed[m].predictor, Path(tmp) / "warm", CLASSES, overwrite=True, progress=False)
            timed[m].network_seconds = 0.0
        modes = list(MODES)
        for r in range(args.repeats):
            for m in modes[r % len(modes) :] + modes[: r % len(modes)]:
                start = time.perf_counter()
                rows = run_cases(cases, timed[m].predictor, Path(tmp) / m, CLASSES, overwrite=True, progress=False)
                seconds[m].append(time.perf_counter() - start)
                if any(row["status"] != "ok" for row in rows):
                    raise SystemExit(f"{m}: a case failed: {[row['error'] for row in rows if row['error']]}")
    rows = {
        m: {
            "seconds_per_case": float(np.median(seconds[m])) / len(cases),
            "voxels_per_second": voxels / float(np.median(seconds[m])),
            "network_fraction": timed[m].network_seconds / sum(seconds[m]),
        }
        for m in MODES
    }
    ratios = {
        m: [s / base for s, base in zip(seconds[m], seconds["mask"])] for m in ("mask+cam", "mask+cam+uncertainty")
    }
    return {"cases": len(cases), "repeats": args.repeats, "modes": rows, "ratios_per_repeat": ratios}


def ct_child(args) -> None:
    """One mode on the CT-sized volume in this process; prints one JSON line (seconds, peak RSS)."""
    rng = np.random.default_rng(0)
    shape = tuple(args.ct_shape)
    data = rng.normal(40.0, 200.0, size=shape).astype(np.float32)  # synthetic HU: timing only
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    predictor = build_predictor(
        "spleen", MODES[args.child_mode], args.channels, None, args.sw_batch_size, args.device, "cpu"
    )
    timed = TimedPredictor(predictor)
    with tempfile.TemporaryDirectory() as tmp:
        volume = ImageVolume(data[None], affine, "synthetic_ct")
        start = time.perf_counter()
        maps = predictor(volume)
        arrays = {k: (maps[k], np.uint8 if k == "seg" else np.float32) for k in maps}
        write_case(tmp, "ct", arrays, ImageVolume(data[None], affine, "synthetic_ct"))
        seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"seconds": seconds, "network_seconds": timed.network_seconds, "peak_rss_gib": peak_kib / 2**20}
    print(json.dumps(result))


def ct(args) -> dict:
    rows = {}
    for m in MODES:
        cmd = [sys.executable, __file__, "--child-mode", m, "--ct-shape", *map(str, args.ct_shape)]
        cmd += ["--channels", *map(str, args.channels), "--sw-batch-size", str(args.sw_batch_size)]
        cmd += ["--device", args.device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"CT-sized run ({m}) failed: {done.stderr.strip().splitlines()[-1:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["voxels_per_second"] = float(np.prod(args.ct_shape)) / row["seconds"]
        rows[m] = row
    return {"shape": list(args.ct_shape), "modes": rows}


def ratios(modes: dict, key: str) -> dict:
    base = modes["mask"][key]
    return {m: modes[m][key] / base for m in ("mask+cam", "mask+cam+uncertainty")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Example::")[1])
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="U-Net widths")
    p.add_argument("--cases", type=int, default=16, help="hippocampus cases (16 = every embedded case)")
    p.add_argument("--repeats", type=int, default=5, help="passes over the hippocampus cases per mode")
    p.add_argument("--ct-shape", type=int, nargs=3, default=[512, 512, 300], help="CT-sized volume (0 0 0: skip)")
    p.add_argument("--sw-batch-size", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="network device")
    p.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    p.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_mode:
        ct_child(args)
        return
    report = {"channels": args.channels, "device": args.device, "threads": torch.get_num_threads()}
    report["hippocampus"] = h = hippocampus(args)
    print(f"hippocampus ({h['cases']} cases, widths {args.channels}, {report['threads']} threads, {args.device})")
    print(f"{'mode':24s} {'s/case':>8s} {'voxels/s':>10s} {'network share':>14s}")
    for m, r in h["modes"].items():
        print(f"{m:24s} {r['seconds_per_case']:8.3f} {r['voxels_per_second']:10.0f} {r['network_fraction']:14.0%}")
    h["ratio_seconds"] = {m: float(np.median(r)) for m, r in h["ratios_per_repeat"].items()}
    print(f"ratios to mask only, median of {args.repeats} repeats [min, max]:")
    for m, r in h["ratios_per_repeat"].items():
        print(f"  {m:22s} {np.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]")
    if all(args.ct_shape):
        report["ct"] = c = ct(args)
        print(f"CT-sized {tuple(args.ct_shape)} synthetic volume, stitching on the CPU")
        print(f"{'mode':24s} {'seconds':>8s} {'voxels/s':>10s} {'peak RSS GiB':>13s}")
        for m, r in c["modes"].items():
            print(f"{m:24s} {r['seconds']:8.1f} {r['voxels_per_second']:10.0f} {r['peak_rss_gib']:13.2f}")
        c["ratio_seconds"] = ratios(c["modes"], "seconds")
        print("ratios to mask only:", {k: round(v, 3) for k, v in c["ratio_seconds"].items()})
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
