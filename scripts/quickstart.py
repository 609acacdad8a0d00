"""
The README's main job, offline, on the embedded MSD Task04 hippocampus subset (real MRI, CC-BY-SA 4.0):

1. the product: ``eunets-infer`` with the weights the ``eunet_hippocampus`` bundle ships (no training), on the 4
   held-back cases: per case the mask, the equivalent-kernel CAMs and the uncertainty map as NIfTI on the input's
   grid, a summary and preview PNGs; prints the held-back Dice;
2. training: the same bundle's ``train.json`` briefly from scratch on the 12 training cases, then its
   ``inference.json`` on the held-back cases with the new checkpoint; prints their Dice again.

    python scripts/quickstart.py [--output_dir outputs/quickstart] [--epochs 30] [--skip-training]

Every step is a plain command (printed before it runs), so it can be repeated or changed by hand.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import eunets_monai

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(eunets_monai.__file__).resolve().parent / "data" / "sample" / "hippocampus"
# Small enough for a few minutes on 2 CPU cores: one whole-volume patch per case and step.
QUICK = {"num_samples": 1, "num_workers": 0}


def bundle_cmd(config: str | list[str], **overrides) -> list[str]:
    """``python -m monai.bundle run`` with ``--key value`` overrides."""
    config_arg = config if isinstance(config, str) else repr(config)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run(cmd: list[str], what: str) -> None:
    print(f"\n=== {what}\n$ {shlex.join(cmd)}\n", flush=True)
    start = time.time()
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode:
        sys.exit(f"error: {what} failed (exit code {result.returncode}); see the log above.")
    print(f"=== {what}: done in {time.time() - start:.0f} s", flush=True)


def held_back_dice(pred_dir: Path) -> list[tuple[str, float, bool]]:
    """(case, mean foreground Dice, geometry equal to the input) for every held-back case."""
    import nibabel as nib
    import numpy as np

    rows = []
    for label_path in sorted((SAMPLE / "labelsTs").glob("*.nii.gz")):
        case = label_path.name[: -len(".nii.gz")]
        seg_path = pred_dir / f"{case}_seg.nii.gz"
        if not seg_path.is_file():
            rows.append((case, float("nan"), False))
            continue
        image, seg = nib.load(SAMPLE / "imagesTs" / label_path.name), nib.load(seg_path)
        pred, label = np.asarray(seg.dataobj), np.rint(np.asarray(nib.load(label_path).dataobj)).astype(int)
        dices = []
        for k in (1, 2):
            denom = (pred == k).sum() + (label == k).sum()
            dices.append(2.0 * ((pred == k) & (label == k)).sum() / denom if denom else 1.0)
        aligned = seg.shape == image.shape and np.allclose(seg.affine, image.affine, atol=1e-4)
        rows.append((case, float(np.mean(dices)), aligned))
    return rows


def report(title: str, pred_dir: Path) -> None:
    print(f"\n{title}\nheld-back case      mean Dice (anterior, posterior)   aligned with input")
    rows = held_back_dice(pred_dir)
    for case, dice, aligned in rows:
        print(f"{case:18s}  {dice:.3f}                             {aligned}")
    if not rows or not all(aligned for _, _, aligned in rows):
        sys.exit(f"error: some outputs in {pred_dir} are missing or not aligned with their inputs.")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/quickstart.py --epochs 30",
    )
    parser.add_argument("--output_dir", default="outputs/quickstart", help="where checkpoints, logs and NIfTIs go")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (5 iterations of 2 volumes each)")
    parser.add_argument("--bundle", default="eunet_hippocampus", help="bundle folder under bundles/")
    parser.add_argument("--skip-training", action="store_true", help="only step 1 (the shipped model)")
    args = parser.parse_args()
    out = Path(args.output_dir).resolve()
    bundle = REPO / "bundles" / args.bundle
    configs = bundle / "configs"
    start = time.time()
    print(f"eunets-monai quickstart: bundle {args.bundle}, data {SAMPLE} (MSD Task04 subset, CC-BY-SA 4.0)")
    shipped = out / "shipped"
    if not (bundle / "models" / "model.pt").is_file():
        sys.exit(f"error: {bundle / 'models' / 'model.pt'} not found: this bundle ships no weights.")
    run(
        [sys.executable, "-m", "eunets_monai.infer", str(bundle), str(SAMPLE / "imagesTs"), "--output", str(shipped)]
        + ["--previews", "--overwrite"],
        "1/3 eunets-infer with the shipped weights on the 4 held-back cases (mask, CAM, uncertainty, previews)",
    )
    report("shipped model:", shipped)
    if args.skip_training:
        print(f"\ndone in {time.time() - start:.0f} s. Outputs: {shipped} (previews: {shipped / 'index.html'})")
        return
    run(
        bundle_cmd(
            str(configs / "train.json"),
            **QUICK,
            bundle_root=bundle,
            dataset_dir=SAMPLE,
            max_epochs=args.epochs,
            val_interval=5,
            learning_rate=0.003,
            resume=False,
            ckpt_dir=out / "models",
            output_dir=out / "logs",
        ),
        f"2/3 train {args.bundle} from scratch ({args.epochs} epochs, 12 hippocampus cases, 5-fold split fold 0)",
    )
    pred_dir = out / "inference"
    run(
        bundle_cmd(
            str(configs / "inference.json"),
            bundle_root=bundle,
            input_dir=SAMPLE / "imagesTs",
            ckpt_path=out / "models" / "model.pt",
            output_dir=pred_dir,
        ),
        "3/3 the bundle's inference.json with the new checkpoint on the 4 held-back cases",
    )
    report(f"after {args.epochs} short epochs of training (far less than the shipped model's):", pred_dir)
    print(
        f"\ndone in {time.time() - start:.0f} s. Outputs (NIfTI: *_seg = mask, *_cam = CAM per class, "
        f"*_uncertainty = uncertainty in [0, 1]):\n  shipped model: {shipped} (summary.csv, previews/index.html)\n"
        f"  trained here: {pred_dir}\ncheckpoints: {out / 'models'}, TensorBoard logs: {out / 'logs'}"
    )


if __name__ == "__main__":
    main()
