"""
``eunets-infer``: batch inference of a bundle over scans (NIfTI, NRRD/MHA, DICOM series folders, MSD ``dataset.json``),
writing ``<case>_seg.nii.gz`` (uint8 labels), ``<case>_cam.nii.gz`` (float32, one channel per foreground class) and
``<case>_uncertainty.nii.gz`` (float32 in [0, 1]) on each input's own voxel grid, plus ``summary.json`` /
``summary.csv``. Resumable: complete cases are skipped unless ``--overwrite``.

Under ``torchrun --nproc_per_node N`` the cases are split across ranks; rank 0 merges the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "load_bundle", "load_weights", "build_predictor"]

logger = logging.getLogger("eunets_monai.infer")

EXAMPLE = """examples (the first on the embedded hippocampus sample, after python scripts/quickstart.py):
  eunets-infer bundles/eunet_spleen eunets_monai/data/sample/hippocampus/imagesTs --output out/ \
      --ckpt outputs/quickstart/models/model.pt --set task=hippocampus --set spatial_dims=2 \
      --set "channels=[16,32,64,128]" --previews
  eunets-infer BUNDLE scans/ dicom_series/ extra/*.nrrd --output out/ --outputs seg,cam --previews
  eunets-infer BUNDLE dicom_series/ --output out/ --dicom-seg       # + <series>_seg.dcm for PACS / OHIF / Slicer
  eunets-infer BUNDLE scans/ --output out/ --precision fp32          # float32 throughout (default auto: bf16 on
                                                                    # CPUs with bf16 units, fp16 on CUDA)
  torchrun --nproc_per_node 2 -m eunets_monai.infer BUNDLE data/dataset.json --output out/

Each case gives <case>_seg.nii.gz, <case>_cam.nii.gz, <case>_uncertainty.nii.gz (as --outputs asks), aligned voxel
for voxel with its input (and, with --dicom-seg, <series>_seg.dcm for DICOM inputs); summary.json / summary.csv list
every case. The exit code is 1 when any case failed."""


# eunets_monai.engine.precision.PRECISIONS, spelled out so that --help imports no torch (a test keeps them equal)
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


class CliError(RuntimeError):
    """Stops the run before any case: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``eunets-infer``."""
    p = argparse.ArgumentParser(
        prog="eunets-infer",
        description="Segment scans with an EU-Nets bundle: mask, CAM and uncertainty per case, aligned with the input.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="bundle folder (configs/inference.json, models/model.pt)")
    p.add_argument(
        "inputs",
        nargs="+",
        help="NIfTI/NRRD/MHA files, folders (searched recursively), glob patterns, DICOM series folders or an MSD "
        "dataset.json",
    )
    p.add_argument("-o", "--output", required=True, help="output folder (created; checked writable before any work)")
    p.add_argument("--ckpt", help="checkpoint to load instead of BUNDLE/models/model.pt")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the bundle's inference.json, as the bundle was trained (repeatable; VALUE is JSON or "
        "text), e.g. --set spatial_dims=2 --set task=hippocampus --set channels=[16,32,64,128]",
    )
    p.add_argument(
        "--outputs",
        default=None,
        help="comma-separated subset of seg,cam,uncertainty (default: all the network supports)",
    )
    p.add_argument("--split", default="test", help="dataset.json section to run: test (default) or training")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs already exist")
    p.add_argument("--channel", type=int, default=None, help="use this channel of multi-channel / 4D inputs")
    p.add_argument("--device", default=None, help="where the network runs: cuda, cuda:1, cpu (default: GPU if any)")
    p.add_argument(
        "--stitch-device",
        default=None,
        help="where the stitched volume is kept (default: --device); 'cpu' lets a 512x512x300 CT fit a small GPU",
    )
    p.add_argument("--roi", type=int, nargs="+", default=None, help="sliding-window size (default: the bundle's)")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap fraction (default 0.25)")
    p.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument(
        "--blend", default="gaussian", choices=("gaussian", "constant"), help="window blending (default gaussian)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_CHOICES,
        help="the network's compute dtype (default auto): auto = bfloat16 on CPUs with bf16 units (AVX512-BF16/AMX), "
        "float16 on CUDA, float32 elsewhere; fp32, bf16 or fp16 (CUDA only) force one. Stitching, softmax and CAM "
        "scaling stay float32",
    )
    p.add_argument(
        "--amp",
        action="store_const",
        const="auto",
        dest="precision",
        help="deprecated alias of --precision auto",
    )
    p.add_argument("--previews", action="store_true", help="one PNG per case and an index.html gallery")
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="DICOM series inputs also get <case>_seg.dcm, a DICOM Segmentation referencing the series "
        "(needs highdicom: pip install 'eunets-monai[dicom]')",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars; errors and the final line only")
    return p


def _parse_outputs(text: str | None, network) -> tuple[str, ...]:
    from eunets_monai.inference.io import OUTPUT_SUFFIXES

    heads = getattr(network, "heads", None)
    n_heads = 0 if heads is None else len(heads)
    if text is None:
        return ("seg",) + (("cam",) if n_heads else ()) + (("uncertainty",) if n_heads >= 2 else ())
    outputs = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [o for o in outputs if o not in OUTPUT_SUFFIXES]
    if bad or not outputs:
        raise CliError(f"--outputs {text!r}: choose from {','.join(OUTPUT_SUFFIXES)}.")
    if "cam" in outputs and not n_heads:
        raise CliError("--outputs cam: the bundle's network has no MHEX+ heads, so no equivalent-kernel CAM.")
    if "uncertainty" in outputs and n_heads < 2:
        raise CliError(f"--outputs uncertainty: needs >= 2 MHEX+ heads, the bundle's network has {n_heads}.")
    return outputs


def _overrides(pairs: Sequence[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set spatial_dims=2.")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def load_bundle(bundle: str | os.PathLike, overrides: Mapping | None = None) -> dict:
    """
    The parts of a bundle's ``configs/inference.json`` inference needs: ``network`` (on the CPU), ``preprocessing``,
    ``preset`` (task), ``spatial_dims``, ``patch_size`` and ``class_names``; ``overrides`` replace config keys
    (as ``monai.bundle run --key value`` does).

    Raises:
        CliError: one line when the folder is not a bundle or its config does not parse.
    """
    from monai.bundle import ConfigParser

    from eunets_monai.data.presets import get_task

    root = Path(bundle).expanduser()
    config = root / "configs" / "inference.json"
    if not config.is_file():
        raise CliError(f"{root} is not a bundle folder: {config} not found.")
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
        parser["bundle_root"] = str(root.resolve())
        for key, value in (overrides or {}).items():
            parser[key] = value
        parts = {
            key: parser.get_parsed_content(key)
            for key in ("network_def", "preprocessing", "task", "spatial_dims", "patch_size")
        }
        parts["preset"] = get_task(parts.pop("task"))
    except Exception as e:
        reason = " ".join(str(e).split())[:300]
        raise CliError(f"cannot build the bundle's network/preprocessing from {config}: {reason}") from None
    parts["network"] = parts.pop("network_def")
    parts["class_names"] = [parts["preset"].channel_def[str(i)] for i in range(parts["network"].out_channels)]
    parts["root"] = root
    return parts


def load_weights(network, path: str | os.PathLike, bundle: str | os.PathLike = "") -> None:
    """
    Load a checkpoint with ``torch.load(weights_only=True)`` (a bare state dict or one under ``"model"``).

    Raises:
        CliError: one line when the file is missing, not a checkpoint, or its shapes do not match the network (the
            first mismatching tensor's shape in both).
    """
    import torch

    ckpt = Path(path).expanduser()
    if not ckpt.is_file():
        raise CliError(f"checkpoint not found: {ckpt} (train the bundle first, or pass --ckpt FILE).")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = " ".join(str(e).split())[:200]
        raise CliError(f"cannot load checkpoint {ckpt}: {type(e).__name__}: {reason}") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise CliError(f"checkpoint {ckpt} holds a {type(state).__name__}, not a state dict.")
    own = network.state_dict()
    where = f"the network of bundle {bundle}" if bundle else "the network"
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise CliError(
            f"checkpoint {ckpt} does not match {where}: {k} is {tuple(state[k].shape)} in the checkpoint, "
            f"{tuple(own[k].shape)} in the network ({len(shapes)} tensor(s) differ; other channels/task?)."
        )
    if missing or unexpected:
        detail = f"{len(missing)} missing (e.g. {missing[0]})" if missing else f"{len(unexpected)} unexpected"
        extra = f", {len(unexpected)} unexpected (e.g. {unexpected[0]})" if missing and unexpected else ""
        raise CliError(f"checkpoint {ckpt} does not match {where}: {detail}{extra} tensor(s).")
    network.load_state_dict(state)


def _quiet_libraries() -> None:
    # MONAI/ITK/torch warnings would bury the one-line errors; the summary keeps what matters.
    warnings.filterwarnings("ignore")
    for name in ("monai", "torch", "nibabel", "pydicom", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import itk

        itk.ProcessObject.SetGlobalWarningDisplay(False)
    except Exception:  # itk is optional at run time (NRRD/MHA only)
        pass


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(quiet: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("eunets_monai.infer", "eunets_monai.inference.io"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.propagate = False
        log.setLevel(logging.ERROR if quiet else logging.INFO)


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun (process group initialised), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _device(args, rank: int):
    import torch

    if args.device:
        return torch.device(args.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def run(args: argparse.Namespace) -> int:
    """Run the command for parsed ``args``; returns the exit code (0 all ok, 1 a case failed, 2 nothing could run)."""
    from eunets_monai.inference.io import InputError, check_writable, clean_stale_temps, collect_inputs

    rank, world = _distributed()
    precision = _precision(args.precision, _device(args, rank))  # a bad combination stops before any work
    output = check_writable(args.output)  # before any computation
    removed = clean_stale_temps(output)
    if removed:
        logger.info(f"removed {removed} temporary file(s) left by an interrupted run in {output}")
    bundle = load_bundle(args.bundle, _overrides(args.set))
    network = bundle["network"]
    load_weights(network, args.ckpt or bundle["root"] / "models" / "model.pt", bundle["root"])
    outputs = _parse_outputs(args.outputs, network)
    if args.previews:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--previews needs matplotlib: pip install matplotlib") from None
    if args.dicom_seg:
        from eunets_monai.inference.dicom_seg import dicom_seg_available

        if not dicom_seg_available():
            raise CliError("--dicom-seg needs highdicom: pip install 'eunets-monai[dicom]' (or pip install highdicom)")
    try:
        cases, problems = collect_inputs(args.inputs, split=args.split, exclude=output)
    except InputError as e:
        raise CliError(str(e)) from None
    for source, reason in problems:
        logger.error(f"{source}: {reason}")
    predictor = build_predictor(args, bundle, network, outputs, rank)
    mine = cases[rank::world]
    if rank == 0:
        logger.info(f"{len(cases)} case(s) -> {output} ({', '.join(outputs)}; {precision}; {world} process(es))")
    from eunets_monai.inference.runner import read_previous_summary, run_cases, write_summary

    previous = read_previous_summary(output)
    on_case = None
    if args.previews:
        on_case = _preview_hook(output, bundle["class_names"])

    rows = run_cases(
        mine,
        predictor,
        output,
        bundle["class_names"],
        args.overwrite,
        not args.quiet and rank == 0,
        previous,
        on_case,
        dicom_seg=args.dicom_seg,
        algorithm=f"eunets-monai {bundle['root'].name}",
    )
    rows = _gather(rows, rank, world, output)
    if rank != 0:
        return 1 if any(r["status"] == "failed" for r in rows) else 0
    rows += [{"case": "", "input": s, "status": "failed", "error": r} for s, r in problems]
    write_summary(output, rows)
    if args.previews:
        from eunets_monai.inference.previews import write_index

        write_index(output, rows)
    failed = sum(r["status"] == "failed" for r in rows)
    done = sum(r["status"] == "ok" for r in rows)
    skipped = sum(r["status"] == "skipped" for r in rows)
    print(
        f"eunets-infer: {done} written, {skipped} skipped (already complete), {failed} failed; summary in "
        f"{output / 'summary.csv'}",
        file=sys.stderr,
    )
    return 1 if failed else 0


def build_predictor(args: argparse.Namespace, bundle: Mapping, network, outputs: Sequence[str], rank: int = 0):
    """
    The :py:class:`~eunets_monai.inference.runner.VolumePredictor` ``eunets-infer`` runs for parsed ``args``: the
    bundle's inferer with the window, device and ``--precision`` options, ``network`` with its weights loaded.

    Raises:
        CliError: one line for a setting the bundle's network or the device cannot take.

    Examples::

        args = build_parser().parse_args(["bundles/eunet_hippocampus", "scans/", "-o", "out", "--precision", "bf16"])
        bundle = load_bundle(args.bundle)
        load_weights(bundle["network"], bundle["root"] / "models" / "model.pt")
        predictor = build_predictor(args, bundle, bundle["network"], ("seg", "cam"))
    """
    from eunets_monai.data.presets import get_inferer
    from eunets_monai.inference.runner import VolumePredictor

    device = _device(args, rank)
    stitch = args.stitch_device or device
    try:
        inferer = get_inferer(
            bundle["preset"],
            spatial_dims=bundle["spatial_dims"],
            roi_size=args.roi or bundle["patch_size"],
            sw_batch_size=args.sw_batch_size,
            overlap=args.overlap,
            mode=args.blend,
            sw_device=device,
            device=stitch,
        )
        return VolumePredictor(
            network,
            bundle["preprocessing"],
            inferer,
            outputs,
            device,
            precision=args.precision,
            channel=args.channel,
            progress=0 if args.quiet else 64,
        )
    except ValueError as e:
        raise CliError(str(e)) from None


def _precision(precision: str, device) -> str:
    """The dtype name ``--precision`` gives on ``device`` ("fp32", "bf16", "fp16"), or one CliError line."""
    from eunets_monai.engine.precision import autocast_dtype, precision_name

    try:
        return precision_name(autocast_dtype(precision, device))
    except ValueError as e:
        raise CliError(f"--precision {precision} on {device}: {e}") from None


def _preview_hook(output: Path, class_names: Sequence[str]):
    from eunets_monai.inference.previews import case_preview

    def on_case(case, volume, maps) -> str | None:
        try:
            case_preview(volume, maps, output / "previews" / f"{case.name}.png", class_names, case.name)
        except Exception as e:  # a preview is a convenience: its failure never fails the case
            logger.error(f"{case.path}: preview not drawn: {type(e).__name__}: {e}")
            return f"preview not drawn ({type(e).__name__})"
        return None

    return on_case


def _gather(rows: list[dict], rank: int, world: int, output: Path) -> list[dict]:
    """Rank 0 collects every rank's rows (through files in the output folder, so no tensor plumbing)."""
    if world == 1:
        return rows
    import torch.distributed as dist

    from eunets_monai.inference.io import atomic_write_text

    part = output / f".summary-rank{rank}.json"
    atomic_write_text(part, json.dumps(rows))
    dist.barrier()
    if rank != 0:
        dist.barrier()
        return rows
    merged: list[dict] = []
    for r in range(world):
        path = output / f".summary-rank{r}.json"
        merged += json.loads(path.read_text())
        path.unlink()
    dist.barrier()
    return sorted(merged, key=lambda row: row["case"])


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``eunets-infer``."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    _setup_logging(args.quiet)
    try:
        code = run(args)
    except CliError as e:
        print(f"eunets-infer: error: {e}", file=sys.stderr)
        code = 2
    except Exception as e:
        from eunets_monai.inference.io import InputError

        if not isinstance(e, InputError):
            raise
        print(f"eunets-infer: error: {e}", file=sys.stderr)
        code = 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
