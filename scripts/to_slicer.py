"""
Convert a bundle's batch-inference outputs (NIfTI) into 3D Slicer files: ``<case>.seg.nrrd`` with the bundle's
segment names and colours, ``<case>_cam_<label>.nrrd`` and ``<case>_uncertainty.nrrd`` scalar volumes.

    python scripts/to_slicer.py --bundle bundles/eunet_hippocampus outputs/quickstart/inference

Every ``<case>_seg.nii.gz`` in the folder is converted; a bad case prints one line and the others go on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eunets_monai.inference.slicer import convert_case, labels_from_channel_def


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("pred_dir", type=Path, help="folder with <case>_seg.nii.gz (and _cam, _uncertainty)")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (labels from configs/metadata.json)")
    parser.add_argument("--out_dir", type=Path, default=None, help="where the .nrrd files go (default: pred_dir)")
    args = parser.parse_args(argv)
    meta_path = args.bundle / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
        labels = labels_from_channel_def(meta["network_data_format"]["outputs"]["pred"]["channel_def"])
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {meta_path}: cannot read the labels ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    cases = sorted(p.name[: -len("_seg.nii.gz")] for p in args.pred_dir.glob("*_seg.nii.gz"))
    if not cases:
        print(f"error: {args.pred_dir}: no <case>_seg.nii.gz files", file=sys.stderr)
        return 1
    failed = 0
    for case in cases:
        try:
            written = convert_case(args.pred_dir, case, labels, args.out_dir)
            print(f"{case}: " + ", ".join(p.name for p in written))
        except Exception as e:  # noqa: BLE001 - one line per bad case, the others go on
            failed += 1
            print(f"error: {case}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
