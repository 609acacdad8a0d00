"""
CI real-data step: train the eunet_hippocampus bundle briefly (its own 3D setting, fresh weights) on a full MSD
Task04 hippocampus folder through ``python -m monai.bundle run``, then require a validation mean Dice well above
chance on fold 0 of 5 (42 cases never trained on). Run from the repository root::

    python .ci/real_data.py --data-dir /data/Task04_Hippocampus
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time

FLOOR = 0.3  # chance is about 0.0 for these small structures; a working pipeline is well above it after 400 steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MSD Task04_Hippocampus folder")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "bundle_root": "bundles/eunet_hippocampus",
            "dataset_dir": args.data_dir,
            "max_epochs": args.epochs,
            "train#trainer#epoch_length": 10,
            "val_interval": args.epochs,
            "learning_rate": 0.003,
            "num_samples": 1,
            "num_workers": 0,
            "seed": 0,
            "fold": 0,
            "ckpt_dir": f"{tmp}/models",
            "output_dir": f"{tmp}/eval",
        }
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "bundles/eunet_hippocampus/configs/train.json",
        ]
        for key, value in overrides.items():
            cmd += [f"--{key}", str(value)]
        print("+", " ".join(cmd), flush=True)
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        print(log[-4000:])
        sys.exit(f"error: bundle training failed with exit code {proc.returncode}")
    dices = [float(x) for x in re.findall(r"val_mean_dice: ([0-9.]+)", log)]
    if not dices:
        print(log[-4000:])
        sys.exit("error: no val_mean_dice in the training log")
    print(f"validation mean Dice {dices[-1]:.3f} after {args.epochs} x 10 iterations ({time.time() - start:.0f} s)")
    if dices[-1] < FLOOR:
        sys.exit(f"error: validation mean Dice {dices[-1]:.3f} below the floor {FLOOR}")


if __name__ == "__main__":
    main()
