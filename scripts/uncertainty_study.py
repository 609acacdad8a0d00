"""
Uncertainty study on real MSD Task04 hippocampus MRI: which map finds a model's errors (softmax entropy, temperature
scaling, the MHEX+ heads' disagreement, the collaboration gradient exact / sketch / summed, MC dropout, TTA, deep
ensemble) and which per-case score finds failed scans. Writes docs/uncertainty.md and docs/figures/.
Logic: eunets_monai/evaluation/uncertainty_study.py.

Example (about 25 minutes on one busy CPU thread; models are cached under runs/uncertainty_study/)::

    OMP_NUM_THREADS=1 python scripts/uncertainty_study.py --data-dir /data/Task04_Hippocampus

Smoke run (tiny models, seconds; the in-package 16-case sample when --data-dir is not given and no MSD copy exists)::

    python scripts/uncertainty_study.py --quick --docs-dir /tmp/docs --cache-dir /tmp/cache
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from eunets_monai.data import HIPPOCAMPUS_SAMPLE, resolve_task_dir
from eunets_monai.evaluation.uncertainty_study import FULL, QUICK, rewrite_report, run_study

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="example: python scripts/uncertainty_study.py --data-dir /data/Task04_Hippocampus",
    )
    p.add_argument("--quick", action="store_true", help="tiny models, 3 training / 2 validation cases per fold")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MSD Task04_Hippocampus folder (default: $EUNETS_DATA / the cache; --quick: the in-package sample)",
    )
    p.add_argument("--docs-dir", type=Path, default=REPO / "docs", help="where uncertainty.md and figures/ go")
    p.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "uncertainty_study", help="trained models")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="cross-validation folds to run (default 0 1)")
    p.add_argument("--val-cases", type=int, default=None, help="evaluate only the first N validation volumes per fold")
    p.add_argument("--members", type=int, default=None, help="ensemble members (models) per fold")
    p.add_argument("--iterations", type=int, default=None, help="training steps per model")
    p.add_argument("--sketch-probes", type=int, default=None, help="k of the whole-volume sketch maps")
    p.add_argument("--exact-pixels", type=int, default=None, help="voxels per volume for the exact map")
    p.add_argument("--from-results", type=Path, default=None, help="only rewrite uncertainty.md from a results.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_results is not None:
        return rewrite_report(args.from_results, args.docs_dir)
    cfg = QUICK if args.quick else FULL
    overrides = {
        "folds": tuple(args.folds) if args.folds else None,
        "val_cases": args.val_cases,
        "members": args.members,
        "iterations": args.iterations,
        "sketch_probes": args.sketch_probes,
        "exact_pixels": args.exact_pixels,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.data_dir is None and args.quick:
        data_dir = HIPPOCAMPUS_SAMPLE
    else:
        data_dir = resolve_task_dir("hippocampus", args.data_dir)
    flags = (" --quick" if args.quick else "") + "".join(
        f" --{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in overrides.items()
        if v is not None
    )
    return run_study(cfg, data_dir, args.docs_dir, args.cache_dir, flags=flags)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"uncertainty_study: {e}")
