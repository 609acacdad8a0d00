"""
EU-Nets vs their plain baselines on MSD Task04 hippocampus, and the weights the hippocampus bundles ship.

Subcommands (logic in eunets_monai.evaluation.compare / .shipping):

  study   train + evaluate networks (plain and EU) with one recipe on a k-fold split; raw per-case JSON in
          OUT/raw, resumable (rerun the same command after an interruption); prints the table.
  table   rebuild the table (Markdown) and plots from OUT/raw without training.
  ablation  one architecture's EU recipe variants (one study folder each) against its plain runs: Dice, slow
          starts at step 100, paired EU - plain test; optional learning-curve figure.
  curves  learning curves (validation Dice per class, training Dice per head) of study folders side by side.
  reach   steps and minutes each run took to reach a validation mean Dice (with --stop-at-dice runs).
  withdraw  stop shipping a model that does not work (keeps its measured entry, shipped=false).
  models  table of the shipped models (bundles/_shared/hippocampus_models.json).
  cases   figure: held-back embedded cases with mask, prediction, CAM and uncertainty of a shipped model.
  ship    train a hippocampus bundle's model (EU variant, embedded sample cases excluded from training) and write
          bundles/<name>/models/model.pt + its entry in bundles/_shared/hippocampus_models.json.

CPU defaults: 2D axial slices, widths 16-128, 3 folds, 200 steps of 2 volumes x 8 slices, U-Net vs EU-Net.
The paper-like GPU setting: --full (3D, widths 32-512, 5 folds, 20k steps, all five architectures).

Examples:
  python scripts/compare_networks.py study --data-dir data/Task04_Hippocampus --out runs/study_2d
  python scripts/compare_networks.py study --full --device cuda --out runs/study_full
  python scripts/compare_networks.py table --out runs/study_2d --figures docs/figures
  python scripts/compare_networks.py ablation --plain runs/study_2d --variant head_lr_0.1=runs/abl_0.1
  python scripts/compare_networks.py cases eunet_hippocampus --png docs/figures/results_cases.png
  python scripts/compare_networks.py ship eunet_hippocampus --data-dir data/Task04_Hippocampus --dims 3 --max-iters 3000
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from eunets_monai.engine.precision import PRECISIONS
from eunets_monai.networks.blocks.mhex import HEAD_INITS

REPO = Path(__file__).resolve().parents[1]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace(",", " ").split())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="MSD Task04_Hippocampus folder (default: resolve_task_dir)")
    p.add_argument("--dims", type=int, choices=(2, 3), default=None, help="2 (axial slices) or 3")
    p.add_argument("--channels", type=_ints, default=None, help="encoder widths, e.g. '16,32,64,128'")
    p.add_argument("--folds", type=_ints, default=None, help="folds to run, e.g. '0' (default all)")
    p.add_argument("--n-folds", type=int, default=None)
    p.add_argument("--max-iters", type=int, default=None, help="optimiser steps per run")
    p.add_argument("--val-interval", type=int, default=None, help="steps between validations")
    p.add_argument("--batch-size", type=int, default=None, help="volumes per step")
    p.add_argument("--num-samples", type=int, default=None, help="patches/slices per volume per step")
    p.add_argument("--patch-size", type=_ints, default=None, help="training patch / inference ROI")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--early-stop", type=int, default=None, help="validations without gain before stopping")
    p.add_argument(
        "--anneal-steps", type=int, default=None, help="last N steps: cosine learning rate down to 0 (default 0: off)"
    )
    p.add_argument(
        "--stop-at-dice", type=float, default=None, help="end a run once its validation mean Dice reaches this"
    )
    p.add_argument("--loss", default=None, help="dicece | dice | ce | bcedice | focal")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--head-init", choices=HEAD_INITS, default=None, help="MHEX+ Conv1 initialisation (default identity)"
    )
    p.add_argument("--ds-weights", choices=("exp", "two", "same"), default=None, help="deep-supervision weights")
    p.add_argument("--ds-warmup", type=int, default=None, help="steps over which the heads' loss weights ramp 0 -> 1")
    p.add_argument(
        "--no-deep-supervision",
        dest="deep_supervision",
        action="store_false",
        default=None,
        help="EU-Nets: train on the final output only (heads kept, no loss on them)",
    )
    p.add_argument(
        "--decoder",
        choices=("residual", "plain"),
        default=None,
        help="diagnosis: force residual or plain decoder blocks in every run (default: EU residual, plain plain)",
    )
    p.add_argument(
        "--channels-last", action="store_true", default=None, help="train in the channels-last memory format"
    )
    p.add_argument("--head-lr", type=float, default=None, help="MHEX+ heads' learning rate, x --lr (default 1)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="autocast precision: fp32 (default), bf16, fp16 (GPU), auto (bf16 on a CPU with bf16 units, fp16 on GPU)",
    )
    p.add_argument("--device", default=None, help="cpu | cuda")
    p.add_argument("--max-minutes", type=float, default=None, help="stop and save state after this long")


def _config(args: argparse.Namespace, base):
    from eunets_monai.evaluation.compare import with_overrides

    return with_overrides(
        base,
        spatial_dims=args.dims,
        channels=args.channels,
        folds=args.folds,
        n_folds=args.n_folds,
        max_iters=args.max_iters,
        val_interval=args.val_interval,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        patch_size=args.patch_size,
        learning_rate=args.lr,
        early_stop=args.early_stop,
        anneal_steps=args.anneal_steps,
        stop_at_dice=args.stop_at_dice,
        loss=args.loss,
        seed=args.seed,
        head_init=args.head_init,
        ds_weight_mode=args.ds_weights,
        ds_warmup=args.ds_warmup,
        deep_supervision=args.deep_supervision,
        head_lr=args.head_lr,
        channels_last=args.channels_last,
        residual_decoder=None if args.decoder is None else args.decoder == "residual",
        precision=args.precision,
        device=args.device,
    )


def _log(msg: str) -> None:
    print(msg, flush=True)


def _data_dir(args: argparse.Namespace) -> Path:
    from eunets_monai.data import resolve_task_dir

    return resolve_task_dir("hippocampus", args.data_dir)


def cmd_study(args: argparse.Namespace) -> None:
    from eunets_monai.evaluation.compare import StudyConfig, format_table, load_results, run_study, summarize

    base = StudyConfig.full() if args.full else StudyConfig()
    if args.networks:
        base = StudyConfig(**{**base.__dict__, "networks": tuple(args.networks)})
    if args.variants:
        base = StudyConfig(**{**base.__dict__, "variants": tuple(args.variants)})
    cfg = _config(args, base)
    seconds = None if args.max_minutes is None else 60 * args.max_minutes
    run_study(
        cfg, _data_dir(args), args.out, log=_log, max_seconds=seconds, keep_weights=args.keep_weights, progress=True
    )
    print(format_table(summarize(load_results(args.out))))


def cmd_table(args: argparse.Namespace) -> None:
    from eunets_monai.evaluation.compare import format_table, load_results, summarize

    results = load_results(args.out)
    if not results:
        sys.exit(f"error: no finished runs in {Path(args.out) / 'raw'}; run the study first.")
    table = format_table(summarize(results))
    print(table)
    if args.figures:
        from eunets_monai.evaluation.plots import plot_folds, plot_paired

        for path in (plot_folds(results, args.figures, args.prefix), plot_paired(results, args.figures, args.prefix)):
            if path:
                print(f"wrote {path}")


def cmd_ablation(args: argparse.Namespace) -> None:
    from eunets_monai.evaluation.compare import ablation_rows, format_ablation_table, load_results

    def runs(out: str, mhex: bool) -> list[dict]:
        found = [r for r in load_results(out) if r["mhex"] == mhex and r["network"] == args.network]
        found = [r for r in found if r["spatial_dims"] == args.dims]
        if not found:
            sys.exit(f"error: no finished {'EU' if mhex else 'plain'} {args.network} {args.dims}D runs in {out}/raw.")
        return found

    if args.manifest:
        from eunets_monai.evaluation.compare import load_ablation

        plain, variants = load_ablation(args.manifest)
        print(format_ablation_table(ablation_rows(plain, variants, args.step), args.step))
        return
    if not (args.plain and args.variant):
        sys.exit("error: give --manifest FILE, or --plain DIR and --variant NAME=DIR ...")
    variants = {}
    for item in args.variant:
        name, sep, out = item.partition("=")
        if not sep:
            sys.exit(f"error: --variant takes NAME=DIR, got {item!r}.")
        variants[name] = runs(out, True)
    plain = runs(args.plain, False)
    print(format_ablation_table(ablation_rows(plain, variants, args.step), args.step))
    if args.curves:
        from eunets_monai.evaluation.plots import plot_curves

        path = plot_curves({"plain": plain, **variants}, args.curves)
        print(f"wrote {path}" if path else "no per-class learning curves in these runs: no figure")


def _labelled_runs(items: list[str]) -> dict[str, list[dict]]:
    """``LABEL=DIR[#eu|#plain]`` arguments -> label: the finished (EU or plain) runs in DIR/raw."""
    from eunets_monai.evaluation.compare import load_results

    runs = {}
    for item in items:
        label, sep, where = item.partition("=")
        out, _, variant = where.partition("#")
        found = [r for r in load_results(out) if not variant or r["mhex"] == (variant == "eu")]
        if not sep or variant not in ("", "eu", "plain") or not found:
            sys.exit(f"error: --run takes LABEL=DIR[#eu|#plain] with finished runs in DIR/raw, got {item!r}.")
        runs[label] = found
    return runs


def cmd_curves(args: argparse.Namespace) -> None:
    from eunets_monai.evaluation.plots import plot_curves

    path = plot_curves(_labelled_runs(args.run), args.png)
    print(f"wrote {path}" if path else "no per-class learning curves in these runs: no figure")


def cmd_reach(args: argparse.Namespace) -> None:
    from eunets_monai.evaluation.compare import format_reach_table

    print(format_reach_table(_labelled_runs(args.run), args.dice))


def cmd_ship(args: argparse.Namespace) -> None:
    from eunets_monai.evaluation.shipping import bundle_config, train_bundle_model

    cfg = _config(args, bundle_config(args.bundle))
    # The data folder differs per machine: the stored command names it by its MSD folder name only.
    argv = sys.argv[1:]
    shown = ["python", "scripts/compare_networks.py"]
    shown += ["Task04_Hippocampus" if i and argv[i - 1] == "--data-dir" else a for i, a in enumerate(argv)]
    seconds = None if args.max_minutes is None else 60 * args.max_minutes
    entry = train_bundle_model(
        args.bundle,
        cfg,
        _data_dir(args),
        Path(args.bundles_dir),
        shlex.join(shown),
        args.work_dir,
        _log,
        seconds,
        "finish" if args.finish_at_budget else "pause",
        progress=True,
    )
    if entry is None:
        print(f"{args.bundle}: time budget spent; rerun the same command to resume.")


def cmd_models(args: argparse.Namespace) -> None:
    import json

    from eunets_monai.bundles.variants import training_calls
    from eunets_monai.evaluation.shipping import format_models_table

    path = REPO / "bundles" / "_shared" / "hippocampus_models.json"
    if not path.is_file():
        sys.exit(f"error: {path} not found; ship a model first (subcommand ship).")
    models = json.loads(path.read_text())
    if not args.commands:
        print(format_models_table(models))
        return
    for bundle, entry in models.items():
        calls = training_calls(entry)
        state = "shipped" if entry.get("shipped", True) else "withdrawn"
        print(f"# {bundle} ({state}): {len(calls)} call(s) of one resumable run")
        print("\n".join(calls))


def cmd_withdraw(args: argparse.Namespace) -> None:
    from eunets_monai.evaluation.shipping import withdraw_bundle_model

    entry = withdraw_bundle_model(args.bundle, args.bundles_dir, args.reason)
    print(f"{args.bundle}: model.pt removed, entry kept with shipped=false (validation {entry['validation']})")


def cmd_cases(args: argparse.Namespace) -> None:
    import json

    import torch

    from eunets_monai.data import HIPPOCAMPUS_SAMPLE, msd_datalist
    from eunets_monai.evaluation.plots import plot_cases
    from eunets_monai.networks import get_network

    entry = json.loads((REPO / "bundles" / "_shared" / "hippocampus_models.json").read_text()).get(args.bundle)
    if entry is None:
        sys.exit(f"error: {args.bundle} has no entry in bundles/_shared/hippocampus_models.json; ship it first.")
    keys = ("spatial_dims", "in_channels", "out_channels", "channels")
    net = get_network(entry["network"], mhex=True, **{k: entry[k] for k in keys})
    ckpt = REPO / "bundles" / args.bundle / "models" / "model.pt"
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    cases = msd_datalist(HIPPOCAMPUS_SAMPLE, "test")[: args.n]  # held back: never trained on
    print(f"wrote {plot_cases(net, cases, args.png, entry['spatial_dims'], entry['roi_size'])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("study", help="train and evaluate networks on a k-fold split")
    _common(p)
    p.add_argument("--out", required=True, help="results folder (raw/, state/)")
    p.add_argument("--networks", nargs="*", default=None, help="architectures (default: unet; --full: all five)")
    p.add_argument("--variants", nargs="*", choices=("plain", "eu"), default=None, help="default: both")
    p.add_argument("--full", action="store_true", help="paper-like GPU setting")
    p.add_argument("--keep-weights", action="store_true", help="also write each run's best weights")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("table", help="rebuild table and plots from raw results")
    p.add_argument("--out", required=True)
    p.add_argument("--figures", default=None, help="folder for PNG plots")
    p.add_argument("--prefix", default="results", help="plot file-name prefix")
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("ablation", help="one architecture's EU recipe variants against its plain runs")
    p.add_argument("--plain", default=None, help="study folder with the plain runs")
    p.add_argument("--variant", nargs="+", default=None, help="NAME=DIR: a study folder with one variant's EU runs")
    p.add_argument(
        "--manifest", default=None, help="JSON naming the plain folder and the variants (docs/results/slow_start)"
    )
    p.add_argument("--network", default="unet")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2)
    p.add_argument("--step", type=int, default=100, help="step at which slow starts (val Dice < 0.4) are counted")
    p.add_argument("--curves", default=None, help="PNG of the learning curves (per class, per head)")
    p.set_defaults(func=cmd_ablation)
    p = sub.add_parser("curves", help="learning curves (per class, per head) of study folders side by side")
    p.add_argument(
        "--run",
        nargs="+",
        required=True,
        help="LABEL=DIR[#eu|#plain]: the finished (EU or plain) runs in DIR/raw, drawn under LABEL",
    )
    p.add_argument("--png", required=True, help="output PNG")
    p.set_defaults(func=cmd_curves)
    p = sub.add_parser("reach", help="steps and minutes each run took to reach a validation mean Dice")
    p.add_argument("--dice", type=float, required=True, help="the target validation mean Dice, e.g. 0.87")
    p.add_argument(
        "--run", nargs="+", required=True, help="LABEL=DIR[#eu|#plain]: the finished runs in DIR/raw under LABEL"
    )
    p.set_defaults(func=cmd_reach)
    p = sub.add_parser("ship", help="train a hippocampus bundle's shipped model")
    p.add_argument("bundle", help="eunet_hippocampus | eunetpp_hippocampus | ahf_eunet_hippocampus | ...")
    _common(p)
    p.add_argument("--work-dir", default=None, help="resumable training state (default .eunets_runs/)")
    p.add_argument("--bundles-dir", default=str(REPO / "bundles"), help="where models/ and _shared/ are written")
    p.add_argument("--finish-at-budget", action="store_true", help="--max-minutes ends the run (ships its best)")
    p.set_defaults(func=cmd_ship)
    p = sub.add_parser("models", help="table of the shipped hippocampus models")
    p.add_argument("--commands", action="store_true", help="print the command lines that trained them instead")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("withdraw", help="stop shipping a bundle's weights (keeps its measured entry)")
    p.add_argument("bundle")
    p.add_argument("--reason", required=True)
    p.add_argument("--bundles-dir", default=str(REPO / "bundles"))
    p.set_defaults(func=cmd_withdraw)
    p = sub.add_parser("cases", help="plot held-back embedded cases: mask, prediction, CAM, uncertainty")
    p.add_argument("bundle", help="a shipped hippocampus bundle, e.g. eunet_hippocampus")
    p.add_argument("--png", required=True, help="output PNG")
    p.add_argument("--n", type=int, default=3, help="number of cases")
    p.set_defaults(func=cmd_cases)
    args = parser.parse_args(argv)
    from eunets_monai.data import MSDDownloadError

    try:
        args.func(args)
    except (ValueError, OSError, MSDDownloadError) as e:  # bad flags, missing data, no download: one line
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
