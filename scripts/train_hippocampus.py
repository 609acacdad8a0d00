"""
Measure each hippocampus bundle's validation Dice on the real MSD Task04 hippocampus data
(../shared/data/Task04_Hippocampus), fixed 5-fold split (fold 0, seed 0: 166 training / 42 validation cases),
through the bundle's own train.json.
Runs are short on purpose (2 CPU cores shared with other work): the paper's 2D setting, small widths and a few
hundred slices per epoch. Writes bundles/_shared/hippocampus_results.json (a log of these short runs; the bundles'
docs and metadata take their Dice from the study's bundles/_shared/hippocampus_models.json only).

    python scripts/train_hippocampus.py [--bundle eunet_hippocampus ...] [--epochs 6] [--epoch_length 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "Task04_Hippocampus"
RESULTS = REPO / "bundles" / "_shared" / "hippocampus_results.json"
sys.path.insert(0, str(REPO / "scripts"))
from generate_bundles import VARIANTS  # noqa: E402

SETTING = "Task04_hippocampus_2D_fold0"


def command(bundle: str, epochs: int, epoch_length: int, workdir: Path | None = None) -> list[str]:
    """The bundle command that is measured (``workdir`` holds checkpoints and logs)."""
    work = workdir or Path("/tmp/eunets_hippocampus") / bundle
    overrides = {
        "dataset_dir": "../shared/data/Task04_Hippocampus",
        "channels": "[16, 32, 64, 128]",
        "max_epochs": epochs,
        "train#trainer#epoch_length": epoch_length,
        "val_interval": max(1, epochs // 2),
        "learning_rate": 0.005,
        "batch_size": 2,
        "num_samples": 16,
        "num_workers": 0,
        "seed": 0,
        "fold": 0,
        "resume": False,
        "ckpt_dir": work / "models",
        "output_dir": work / "eval",
    }
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{bundle}/configs/train.json"]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", nargs="*", default=[v.name for v in VARIANTS if v.task == "hippocampus"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--epoch_length", type=int, default=10, help="iterations (2 volumes x 16 slices) per epoch")
    args = parser.parse_args()
    if not (DATA / "dataset.json").is_file():
        sys.exit(f"error: {DATA.resolve()}/dataset.json not found; put MSD Task04_Hippocampus there.")
    from eunets_monai.data.datalists import kfold_split, msd_datalist

    train_cases, val_cases = kfold_split(msd_datalist(DATA), n_folds=5, fold=0, seed=0)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for bundle in args.bundle:
        variant = next(v for v in VARIANTS if v.name == bundle)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = command(bundle, args.epochs, args.epoch_length, Path(tmp))
            print(f"$ {shlex.join(cmd)}", flush=True)
            start = time.time()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            seconds = time.time() - start
        log = proc.stdout + proc.stderr
        if proc.returncode:
            print(log[-3000:])
            sys.exit(f"error: training {bundle} failed (exit code {proc.returncode}).")
        dices = [float(x) for x in re.findall(r"Metrics -- val_mean_dice: ([0-9.]+)", log)]
        n_train = len(re.findall(r"Epoch: 1/\d+, Iter:", log))
        shown = command(bundle, args.epochs, args.epoch_length)
        display = shlex.join(["python", *shown[1:]])
        results[bundle] = {
            "command": f"python scripts/train_hippocampus.py --bundle {bundle} --epochs {args.epochs} "
            f"--epoch_length {args.epoch_length}   # runs: {display}",
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, shared with other jobs",
            "runs": [
                {
                    "setting": SETTING,
                    "network": f"{variant.arch.eu} {variant.spatial_dims}D, channels 16-128",
                    "epochs": f"{args.epochs} x {n_train} it",
                    "n_train": len(train_cases),
                    "n_val": len(val_cases),
                    "val_mean_dice": max(dices),
                    "val_dice_per_epoch_checked": dices,
                    "seconds": seconds,
                }
            ],
        }
        print(f"{bundle}: best val mean Dice {max(dices):.3f} ({dices}) in {seconds:.0f} s", flush=True)
        RESULTS.write_text(json.dumps(results, indent=4) + "\n")


if __name__ == "__main__":
    main()
