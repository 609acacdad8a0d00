"""The bundles' ``metadata.json``, ``docs/README.md``, ``LICENSE`` and ``logging.conf``."""

from __future__ import annotations

from pathlib import Path

from eunets_monai.bundles.variants import (
    BUNDLE_VERSION,
    CHANGELOG,
    MSD,
    PAPER,
    REQUIRED_PACKAGES,
    SCHEMA_URL,
    SUPPORTED_APPS,
    VERSIONS,
    Variant,
    training_calls,
)
from eunets_monai.data import presets
from eunets_monai.engine.optim import default_head_lr


def _a(word: str) -> str:
    return "an" if word[0] in "AEIO" else "a"


TASK_TEXT = {
    "spleen": {
        "title": "spleen CT segmentation",
        "data": "MSD Task09 Spleen (41 labelled CT volumes)",
        "data_source": "Medical Segmentation Decathlon Task09_Spleen, http://medicaldecathlon.com/ (CC-BY-SA 4.0)",
        "image_classes": "single channel CT, Hounsfield units windowed -57..164 to 0..1",
        "format": "hounsfield",
        "value_range": [0, 1],
        "recipe": "RAS, 1.5x1.5x2 mm, HU window -57..164 to 0..1, foreground crop, `num_samples` = 4 "
        "positive/negative-balanced patches per volume, flips/rotations/intensity jitter; labels cast to integers",
    },
    "hippocampus": {
        "title": "hippocampus MRI segmentation",
        "data": "MSD Task04 Hippocampus (260 mono-modal MRI, 208 labelled: anterior and posterior hippocampus)",
        "data_source": "Medical Segmentation Decathlon Task04_Hippocampus, http://medicaldecathlon.com/ (CC-BY-SA 4.0)",
        "image_classes": "single channel MRI, z-score normalised over non-zero voxels",
        "format": "magnitude",
        "value_range": [],
        "recipe": "RAS, 1 mm isotropic, z-score over non-zero voxels, `num_samples` = 4 positive/negative-balanced "
        "patches per volume, flips/intensity jitter; labels cast to integers",
    },
}


def _dims_text(v: Variant) -> str:
    patch = "x".join(str(s) for s in v.patch_size)
    if v.spatial_dims == 3:
        return f"3D ({patch} patches and sliding windows)"
    return f"2D (axial slices, {patch} windows; SliceInferer runs it over the whole volume)"


def _spatial_shape(v: Variant) -> list:
    # A 2D network still serves volumes: "*" slices, so MONAI Label (which counts these entries) shows 3 dimensions.
    # verify_net_in_out on a 2D bundle needs the 2D shape (see docs/README.md).
    return list(v.patch_size) if v.spatial_dims == 3 else [*v.patch_size, "*"]


def _val_dice(v: Variant) -> dict:
    """Measured validation Dice per class and mean (the study's "validation" entry), else {}."""
    validation = v.measured.get("validation") or {}
    dice = {k: validation[k] for k in ("anterior", "posterior", "mean") if k in validation}
    return dice or v.measured.get("val_dice", {})


def _shipped(v: Variant) -> bool:
    return bool(v.measured) and v.measured.get("shipped", True)


def _eval_metrics(v: Variant) -> dict:
    # metadata describes the weights the bundle ships: a withdrawn model's numbers stay in the docs only
    return {f"val_dice_{k}": float(val) for k, val in _val_dice(v).items()} if _shipped(v) else {}


def metadata(v: Variant) -> dict:
    """configs/metadata.json (MONAI bundle schema meta_schema_20240725)."""
    p = presets.get_task(v.task)
    t = TASK_TEXT[v.task]
    a = v.arch
    classes = ", ".join(f"{k} {name}" for k, name in p.channel_def.items())
    shape = _spatial_shape(v)
    return {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": CHANGELOG,
        **VERSIONS,
        "required_packages_version": REQUIRED_PACKAGES,
        "supported_apps": SUPPORTED_APPS,
        "name": f"{a.eu} {t['title']}",
        "task": f"{t['title'][0].upper()}{t['title'][1:]} with the explainable {a.eu} ({a.arch} + MHEX+ heads)",
        "description": (
            f"{a.eu}: {_a(a.arch)} {a.arch} with an MHEX+ head on every decoder stage (deep supervision, "
            f"equivalent-kernel CAMs, an uncertainty map), {_dims_text(v)}, widths "
            f"{list(v.channels)}. The plain baseline with --mhex false."
        ),
        "authors": "eunets-monai contributors",
        "copyright": "Copyright (c) eunets-monai contributors",
        "data_source": t["data_source"],
        "data_type": "nibabel",
        "image_classes": t["image_classes"],
        "label_classes": f"single channel class map: {classes}",
        "pred_classes": f"{p.out_channels} channels (logits): {classes}",
        "eval_metrics": _eval_metrics(v),
        "intended_use": "Research on explainable segmentation only; not for clinical use.",
        "references": [PAPER, a.reference, MSD],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": t["format"],
                    "modality": p.modality,
                    "num_channels": p.in_channels,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": t["value_range"],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": p.out_channels,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": dict(p.channel_def),
                }
            },
        },
    }


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def license_text(shared_dir: str | Path) -> str:
    """The bundle's LICENSE: a header on the data licence, then the Apache-2.0 text from ``shared_dir``."""
    apache = (Path(shared_dir) / "APACHE-2.0.txt").read_text()
    header = (
        "Copyright (c) eunets-monai contributors.\n\n"
        "The configuration files and documents of this bundle are licensed under the Apache License, Version 2.0\n"
        "(below). The data it is trained and evaluated on is NOT covered by this licence: the Medical Segmentation\n"
        "Decathlon data (Task09_Spleen, Task04_Hippocampus, ...) is licensed CC-BY-SA 4.0; attribute\n"
        f"{MSD}, and share alike.\n\n"
    )
    return header + apache


def _measured(v: Variant) -> str:
    m = v.measured
    dice = _val_dice(v)
    if not dice:
        if v.task == "spleen":
            return (
                "Not yet measured: the spleen bundles are the configurations to train on Task09 (no weights "
                "shipped; the development machines do not have the spleen images).\n"
            )
        return (
            "Not yet measured. The network study writes the trained setting and its "
            "validation Dice to `bundles/_shared/hippocampus_models.json`; `python scripts/generate_bundles.py` "
            "then puts them here and in `configs/metadata.json`.\n"
        )
    rows = ["| class | validation Dice |", "| --- | --- |"]
    rows += [f"| {k} | {float(val):.3f} |" for k, val in dice.items()]
    lines = []
    if not _shipped(v):
        lines += [f"**No weights shipped**: {m.get('withdrawn_because', 'withdrawn')}. What that run measured:", ""]
    lines += ["\n".join(rows), ""]
    facts = {**m, "fold": (m.get("validation") or {}).get("fold", m.get("fold"))}
    for key, what in (
        ("fold", "validation fold (5-fold split, seed 0)"),
        ("n_val", "validation cases"),
        ("steps", "training steps"),
        ("machine", "machine"),
        ("date", "date"),
    ):
        if facts.get(key) is not None:
            lines.append(f"- {what}: {facts[key]}")
    if "split" in m:
        lines.append(f"- split: {m['split']}")
    lines.append("- full record and the study: `bundles/_shared/hippocampus_models.json`, `docs/RESULTS.md`")
    calls = training_calls(m)
    if calls:
        lines += ["", "Produced by:" if len(calls) == 1 else f"Produced by {len(calls)} calls of one resumable run:"]
        lines += ["", "```bash", *calls, "```"]
    return "\n".join(lines) + "\n"


def _weights(v: Variant) -> str:
    if v.task == "spleen":
        return "No weights are shipped: train on Task09 (below); `models/model.pt` is the best checkpoint."
    if _shipped(v):
        return (
            "`models/model.pt` holds the trained weights (a state dict; loads with `weights_only=True`), trained on "
            "MSD Task04 (CC-BY-SA 4.0, attribution below): inference works without training."
        )
    return "No weights are shipped yet: train (below) to create `models/model.pt`."


def _attention_doc(v: Variant) -> str:
    """Overrides-table row and note on the skip attention (only for the networks that have it)."""
    if "attention" not in v.arch.network_kwargs:
        return ""
    return """| the papers' global skip attention in 3D as well (quadratic in the voxels) | `--attention global` |

Skip attention (`--attention`, default `auto`): the papers work in 2D, where every skip position attends to every
other (`global`), and `auto` keeps that in 2D. In 3D `auto` means `reduced`, a departure from the papers: the keys and
values of each skip's cross-attention are average-pooled onto at most 8x8x8 cells (PVT v2's linear spatial-reduction
attention, Wang et al. 2022), so every voxel still attends over the whole patch at a cost linear in the voxels
(`eunets_monai.networks.blocks.attention.SkipCrossAttention`; side-by-side timings: `scripts/benchmark_networks.py`).
"""


def readme(v: Variant) -> str:
    b = f"bundles/{v.name}"
    a = v.arch
    p = presets.get_task(v.task)
    t = TASK_TEXT[v.task]
    classes = ", ".join(f"{k} {name}" for k, name in p.channel_def.items())
    data_dir = f"/data/{p.msd_task}"
    verify_shape = (
        ""
        if v.spatial_dims == 3
        else (f' \\\n    --_meta_#network_data_format#inputs#image#spatial_shape "{list(v.patch_size)}"')
    )
    return f"""# {a.eu} {t["title"]} ({v.name})

A MONAI bundle of the explainable **{a.eu}**: {_a(a.arch)} {a.arch} (`{a.target}`) with an MHEX+ head on every
decoder stage. The heads give deep supervision in training and, at inference, equivalent-kernel class activation
maps (CAMs) and an uncertainty map next to the segmentation: softmax entropy by default, the validated best
single-pass map in `docs/uncertainty.md`; `--uncertainty heads_mi` (the heads' disagreement) or `collaboration`
(the paper's collaboration gradient, sketch estimate) on request. The network comes from the installed
`eunets_monai` package; the bundle holds configuration only.

- task: `{v.task}`, classes {classes} (`configs/metadata.json`, `channel_def`)
- network: {_dims_text(v)}, widths `{list(v.channels)}`
- {_weights(v)}

This file, like all bundles, is generated from one template (`eunets_monai/bundles/`, written out by
`scripts/generate_bundles.py`); edit the template, not the bundle (`tests/bundles/test_bundles_in_sync.py` fails
when they differ). Every setting of the bundle is in its configs (task, dimensions, widths, classes, transforms): it
runs as it is in MONAI Label and with `monai.bundle run`, no command-line overrides needed.

## Data

{t["data"]}, http://medicaldecathlon.com/, licence **CC-BY-SA 4.0** (attribution: {MSD}; share alike).
Download `{p.msd_task}.tar`, extract it, and point the bundle at it with `--dataset_dir {data_dir}` (default
`/workspace/data/{p.msd_task}`, as in MONAI's model zoo). The data is checked where the datalist is built: when
`dataset.json` is missing the run stops with a one-line error naming the path; MONAI Label, which supplies
`train#dataset#data` itself, never needs `dataset_dir`.
`eunets_monai.data.datalists.download_msd("{v.task}", "/data")` downloads it with MONAI's MSD download code.

## Transforms (in the configs)

`train#preprocessing`, `validate#preprocessing` and `preprocessing` (inference) list their MONAI transforms, so you
change them where MONAI users expect: {t["recipe"]}. They are generated from the task preset
(`eunets_monai.data.presets`), and `tests/bundles/test_monailabel_contract.py` checks that both give the same data.
The project's checked readers (`eunets_monai.data.checks`) replace `LoadImaged` so a bad file gives one line naming it.
`postprocessing` (inference) is what MONAI Label applies after the inferer: softmax, `Invertd` back to the input
image's grid, argmax to a uint8 class map.

## Training recipe (`configs/train.json`)

- MONAI `SupervisedTrainer` / `SupervisedEvaluator` with ignite handlers, all in the config.
- Split: 5-fold cross-validation with a fixed seed (`--fold 0..4`, `--n_folds`, `--seed`);
  the 80/10/10 hold-out split: `--split "$datalists.holdout_split(@datalist)[:2]"`.
- Loss: deep supervision over the final output and every MHEX+ head (`eunets_monai.engine.losses.get_loss`):
  weights 1, 0.5, 0.25, ... (halved per head from the shallowest, floored at 1/16; `--deep_supervision_weights
  two` = 1, 0.5, 0.5, ...; `same` = all 1). Loss choice `--loss_name dicece` (default) | `dice` | `ce` |
  `bcedice` (BCE + Dice with smoothing 1, paper 003 eqs. 10-11) | `focal`.
- Adam (lr `--learning_rate 0.001`), the MHEX+ heads at `--head_lr` = {default_head_lr(v.spatial_dims)} times that
  rate (2D networks: 0.01, since at the full rate Adam turns each head's identity-started Conv1 into a random
  projection within a few hundred steps and the 2D EU-Nets learnt their second class late; 3D networks: the full rate,
  which measured better in 3D; `docs/RESULTS.md`, "The slow start"); `ReduceLROnPlateau` (factor 0.5,
  patience 5) and early stopping (patience 10) on the validation mean Dice (foreground classes); at most 50 epochs
  (`--max_epochs`), validation every epoch.
- Mixed precision `--precision auto` (default): bfloat16 on CPUs with bf16 units (AVX512-BF16/AMX), float16 with
  MONAI's AMP on a GPU, float32 elsewhere; `fp32` turns it off, `bf16` / `fp16` force one. Weights, optimiser and
  losses stay float32. 2D bundles train in the channels-last memory format (`--channels_last`; faster on CPUs).
  Device cuda if available, else cpu.
- Checkpoints in `models/`: `model.pt` (best validation mean Dice, weights only) and `checkpoint_epoch=N.pt` (the
  last epoch: model, optimizer, scheduler, trainer state). Every run starts afresh unless `--resume true`, which
  continues from the last checkpoint (model, optimizer, LR scheduler, epoch and the best-model record; the
  early-stopping counter starts again).
- TensorBoard logs in `eval/` (`tensorboard --logdir {b}/eval`); MLflow tracking with MONAI's switch
  `--tracking mlflow`.

## Overrides that keep the bundle consistent

| what | override |
| --- | --- |
| plain {a.arch} baseline (no MHEX+ heads) | `--mhex false` |
| network width | `--channels "[32, 64, 128, 256, 512]"` (depth = number of widths) |
| patch / window size | `--patch_size "{list(v.patch_size)}"` |
| where outputs go | `--ckpt_dir DIR --output_dir DIR` |
{_attention_doc(v)}
Another task or dimensionality changes the transforms, classes and metadata: that is another bundle (add it to
`eunets_monai/bundles/variants.py`), not an override.

## Commands

`bundle_root` is `.` as in MONAI's model zoo: run from the bundle folder, or pass `--bundle_root {b}`.

```bash
# train (one GPU or CPU)
python -m monai.bundle run --config_file {b}/configs/train.json --bundle_root {b} --dataset_dir {data_dir}
# several GPUs (DDP, DistributedSampler; gloo on CPUs)
torchrun --nproc_per_node=2 -m monai.bundle run --bundle_root {b} \\
    --config_file "['{b}/configs/train.json', '{b}/configs/multi_gpu_train.json']" --dataset_dir {data_dir}
# evaluate the best checkpoint on the validation fold (per-case Dice in eval/)
python -m monai.bundle run --config_file "['{b}/configs/train.json', '{b}/configs/evaluate.json']" \\
    --bundle_root {b} --dataset_dir {data_dir}
# batch inference: <case>_seg.nii.gz, <case>_cam.nii.gz (K channels), <case>_uncertainty.nii.gz per input image,
# on the input's grid; --input_dir takes a folder of NIfTI files or a JSON datalist
python -m monai.bundle run --config_file {b}/configs/inference.json --bundle_root {b} \\
    --input_dir /data/images --output_dir /data/out
# checks
python -m monai.bundle verify_metadata --meta_file {b}/configs/metadata.json \\
    --filepath bundles/_shared/meta_schema_20240725.json
python -m monai.bundle verify_net_in_out network_def --meta_file {b}/configs/metadata.json \\
    --config_file {b}/configs/inference.json{verify_shape}
```

`bundles/_shared/meta_schema_20240725.json` is MONAI's bundle metadata schema (from the MONAI-extra-test-data
0.8.1 release), shipped so `verify_metadata` runs offline.

## MONAI Label and 3D Slicer

The bundle is served unchanged by MONAI Label's `monaibundle` app (tested: MONAI Label 0.8.5, MONAI 1.5.2):
see `docs/monai_label.md` and `docs/slicer.md` in the eunets-monai repository.

## Measured results

{_measured(v)}
## Licence

Bundle configuration and documents: Apache-2.0 (`LICENSE`). Data: MSD, CC-BY-SA 4.0 ({MSD}).
"""
