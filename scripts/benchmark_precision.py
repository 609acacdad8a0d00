"""
float32 vs bfloat16, with and without the channels-last memory format, on this CPU, side by side in one run (a
benchmark, not a test): training steps/s of the 3D and 2D EU-Net, and eunets-infer's s/case with the Dice of each
setting on labelled hippocampus cases, same checkpoint.

- settings (--settings, default all): fp32, bf16, fp32+cl, bf16+cl; "+cl" (or "+channels_last"): the network
  converted with net.to(memory_format=torch.channels_last) (torch.channels_last_3d in 3D) and its input batches
  converted the same way. Ratios are against fp32 (against the first setting given when fp32 is left out).
- training: UNet EU (widths 16-128, MHEX+), Adam, DiceCE deep-supervision loss, float32 master weights, the forward
  under torch.autocast(bfloat16) in the bf16 settings and its outputs cast to float32 before the loss; 3D batch 2
  of 40x56x40 and 2D batch 16 of 40x56 slices.
- inference: the shipped checkpoint of --bundle through eunets-infer's predictor (mask + CAM + uncertainty, and mask
  only) on the embedded hippocampus sample (16 labelled cases, never trained on) or an MSD Task04 folder; a "+cl"
  predictor has its network converted and its sliding-window batches converted by a forward pre-hook.

The settings' rounds alternate (the order reversing every round); medians over --repeats rounds are printed. The
logic is in eunets_monai.evaluation.precision_benchmark.

Example::

    python scripts/benchmark_precision.py --threads 1 --repeats 5 --json
    python scripts/benchmark_precision.py --repeats 2 --train-steps 3 --cases 4     # a quick look
    python scripts/benchmark_precision.py --threads 1 --repeats 3 --train-steps 5 --skip-inference \\
        --settings fp32 bf16 bf16+cl                                                # training, three settings
    python scripts/benchmark_precision.py --data-dir /data/Task04_Hippocampus --cases 40 --skip-training
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from eunets_monai.data import HIPPOCAMPUS_SAMPLE
from eunets_monai.evaluation.precision_benchmark import (
    SETTINGS,
    format_report,
    inference_benchmark,
    labelled_cases,
    machine_info,
    parse_settings,
    training_benchmark,
)

REPO = Path(__file__).resolve().parents[1]


def _setting(name: str) -> str:
    try:
        return parse_settings([name])[0]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark_precision.py",
        description=__doc__.split("\n\n")[0],
        epilog="example" + __doc__.split("Example::")[1].rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument(
        "--settings",
        nargs="+",
        type=_setting,
        default=list(SETTINGS),
        metavar="SETTING",
        help=f"what to measure, any of {' '.join(SETTINGS)} (+cl = +channels_last; default all)",
    )
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds of the settings (default 5)")
    p.add_argument("--train-steps", type=int, default=10, help="timed training steps per round (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps per setting first (default 2)")
    p.add_argument("--bundle", default=str(REPO / "bundles" / "eunet_hippocampus"), help="bundle with models/model.pt")
    p.add_argument("--ckpt", default=None, help="checkpoint instead of BUNDLE/models/model.pt")
    p.add_argument(
        "--data-dir",
        default=None,
        help="MSD Task04_Hippocampus folder (default: the embedded labelled sample, 16 cases)",
    )
    p.add_argument("--cases", type=int, default=16, help="labelled cases for inference (default 16; 0: all)")
    p.add_argument("--skip-training", action="store_true", help="inference only")
    p.add_argument("--skip-inference", action="store_true", help="training only")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON object (last line)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = parse_settings(args.settings)
    warnings.filterwarnings("ignore")  # MONAI / pydicom import chatter would bury the table
    torch.set_num_threads(args.threads)
    command = " ".join(["python scripts/benchmark_precision.py", *(sys.argv[1:] if argv is None else argv)])
    report: dict = {"machine": machine_info(), "command": command}
    print(format_report(report), flush=True)
    if not args.skip_training:
        train = {"repeats": args.repeats, "steps": args.train_steps, "warmup": args.warmup, "settings": settings}
        report["training"] = [
            training_benchmark(3, 2, (40, 56, 40), **train),
            training_benchmark(2, 16, (40, 56), **train),
        ]
    if not args.skip_inference:
        data_dir = Path(args.data_dir) if args.data_dir else HIPPOCAMPUS_SAMPLE
        cases = labelled_cases(data_dir, args.cases or None)
        if not cases:
            raise SystemExit(f"no labelled cases in {data_dir}")
        report["inference"] = inference_benchmark(args.bundle, cases, args.repeats, ckpt=args.ckpt, settings=settings)
        if args.data_dir:
            report["inference"]["note"] = "MSD training cases: the shipped models trained on most of them"
    print("\n".join(format_report(report).splitlines()[1:]))  # the header line is printed already
    if args.data_dir and not args.skip_inference:
        print(f"note: {report['inference']['note']} (Dice optimistic; the differences between settings count)")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
