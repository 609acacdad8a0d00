"""
Write every EU-Net MONAI bundle under ``bundles/`` from the one template in this file (the single source of truth
for their shared configuration), or check that the committed bundles match it.

    python scripts/generate_bundles.py          # (re)write bundles/<name>/...
    python scripts/generate_bundles.py --check  # exit 1 and list the files that differ

Each bundle gets ``configs/{train,evaluate,multi_gpu_train,inference,metadata}.json``, ``configs/logging.conf``,
``docs/README.md`` and ``LICENSE``; only the network (``network_def#_target_``) and the texts differ between them.
Measured validation Dice values come from ``bundles/_shared/hippocampus_results.json``, written by
``scripts/train_hippocampus.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SHARED = BUNDLES / "_shared"
RESULTS_FILE = SHARED / "hippocampus_results.json"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = "0.1.0"
CHANGELOG = {"0.1.0": "first release: EU variant (MHEX+ heads) and plain baseline, 3D and 2D, any MSD task"}
# Versions the bundles were generated and tested with (metadata.json).
VERSIONS = {"monai_version": "1.6.1", "pytorch_version": "2.13.0", "numpy_version": "2.4.6"}
REQUIRED_PACKAGES = {"eunets-monai": "0.1.0", "nibabel": "5.3.2", "pytorch-ignite": "0.5.5", "tensorboard": "2.21.0"}

PAPER = (
    "Sun, Lio: Explainable U-Nets (EU-Nets) with MHEX+ heads, equivalent-kernel CAMs and collaboration-gradient "
    "uncertainty (see the eunets-monai README)"
)
MSD = "Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 13, 4128 (2022)"


@dataclass(frozen=True)
class Variant:
    """One bundle: an EU-Net architecture."""

    name: str  # bundle folder
    target: str  # network class, importable from the installed eunets_monai
    arch: str  # plain architecture name
    eu: str  # EU name
    reference: str
    network_args: tuple[tuple[str, object], ...] = ()  # extra network_def keys, each also a top-level override


# Skip attention of the attention networks: "auto" = the papers' global attention in 2D, the linear-cost "reduced"
# (keys/values pooled onto 8^3 cells) in 3D, where global attention over a 96^3 patch's 48^3 skip is unaffordable.
ATTENTION_ARGS = (("attention", "auto"),)

VARIANTS: tuple[Variant, ...] = (
    Variant(
        "eunet_spleen",
        "eunets_monai.networks.nets.unet.UNet",
        "U-Net",
        "EU-Net",
        "Ronneberger et al., U-Net, MICCAI 2015",
    ),
    Variant(
        "eunetpp_spleen",
        "eunets_monai.networks.nets.unetplusplus.UNetPlusPlus",
        "U-Net++",
        "EU-Net++",
        "Zhou et al., UNet++, DLMIA 2018",
    ),
    Variant(
        "ahf_eunet_spleen",
        "eunets_monai.networks.nets.ahf_unet.AHFUNet",
        "AHF-U-Net",
        "AHF-EU-Net",
        "AHF-U-Net (attention + hybrid fusion U-Net), see the eunets-monai papers folder",
    ),
    Variant(
        "eunet_transformer_spleen",
        "eunets_monai.networks.nets.unet_transformer.UNetTransformer",
        "U-Net Transformer",
        "EU-Net Transformer",
        "Petit et al., U-Net Transformer, MLMI 2021",
        ATTENTION_ARGS,
    ),
    Variant(
        "efen_eu_spleen",
        "eunets_monai.networks.nets.efen.EFEN",
        "EFEN",
        "EFEN-EU",
        "EFEN (edge-feature enhancement network), see the eunets-monai papers folder",
        ATTENTION_ARGS,
    ),
)

# ---------------------------------------------------------------------------------------------------------------
# Shared configuration: every bundle's JSON is this template with its own network target.
# ---------------------------------------------------------------------------------------------------------------

# The bundle folder, found from the config file MONAI was asked to run (ConfigWorkflow.config_root_path is the
# folder of the first --config_file): bundles run from any working directory. Override with --bundle_root DIR.
BUNDLE_ROOT_EXPR = (
    "$next((str(f.frame.f_locals['self'].config_root_path.resolve().parent) for f in __import__('inspect').stack(0)"
    " if isinstance(f.frame.f_locals.get('self'), monai.bundle.ConfigWorkflow)), os.getcwd())"
)

IMPORTS = [
    "$import glob",
    "$import os",
    "$import sys",
    "$import ignite",
    "$import eunets_monai.data.datalists as datalists",
    "$import eunets_monai.data.presets as presets",
]

# Stops at once with one line (SystemExit is not wrapped by MONAI's config parser) when the data is not there.
CHECK_DATA_EXPR = (
    "$None if os.path.isfile(os.path.join(@dataset_dir, 'dataset.json')) else sys.exit('error: MSD data not found: '"
    " + os.path.join(os.path.abspath(@dataset_dir), 'dataset.json') + ' does not exist; download '"
    " + datalists.msd_task_name(@task) + '.tar from http://medicaldecathlon.com/ and extract it"
    " there, or pass --dataset_dir DIR (and --task NAME for another MSD task).')"
)

# The last checkpoint CheckpointSaver keeps (n_saved=1): checkpoint_epoch=<N>.pt; resumed from when --resume true.
LAST_CKPT_EXPR = (
    "$max(glob.glob(os.path.join(@ckpt_dir, 'checkpoint_epoch=*.pt')), default=None,"
    " key=lambda p: int(p.rsplit('=', 1)[1][:-3]))"
)


# Validation, resuming (CheckpointLoader at STARTED) and the last checkpoint (CheckpointSaver after validation).
TRAIN_RUN = [
    "$@train#validation.attach(@train#trainer)",
    "$@train#checkpoint_loader is None or @train#checkpoint_loader.attach(@train#trainer)",
    "$@train#checkpoint_saver is None or @train#checkpoint_saver.attach(@train#trainer)",
    "$@train#trainer.run()",
]


def common_params(v: Variant) -> dict:
    """Keys shared by train.json and inference.json (the ones users override most)."""
    return {
        "imports": IMPORTS,
        "bundle_root": BUNDLE_ROOT_EXPR,
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "task": "spleen",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "spatial_dims": 3,
        "patch_size": None,
        "channels": [16, 32, 64, 128, 256],
        "mhex": True,
        **dict(v.network_args),
        "preset": "$presets.get_task(@task)",
        "in_channels": "$@preset.in_channels",
        "out_channels": "$@preset.out_channels",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": v.target,
            "spatial_dims": "@spatial_dims",
            "in_channels": "@in_channels",
            "out_channels": "@out_channels",
            "channels": "@channels",
            "mhex": "@mhex",
            **{key: f"@{key}" for key, _ in v.network_args},
        },
        "network": "$@network_def.to(@device)",
    }


def train_config(v: Variant) -> dict:
    """configs/train.json: SupervisedTrainer + SupervisedEvaluator, runs on its own."""
    cfg = common_params(v)
    cfg.update(
        {
            "seed": 0,
            "n_folds": 5,
            "fold": 0,
            "max_epochs": 50,
            "val_interval": 1,
            "batch_size": 2,
            "num_samples": 4,
            "num_workers": 4,
            "cache_rate": 1.0,
            "learning_rate": 0.001,
            "lr_patience": 5,
            "early_stop_patience": 10,
            "loss_name": "dicece",
            "deep_supervision_weights": "exp",
            "resume": True,
            "amp": "$torch.cuda.is_available()",
            "check_data": CHECK_DATA_EXPR,
            "datalist": "$datalists.msd_datalist(@dataset_dir)",
            "split": "$datalists.kfold_split(@datalist, n_folds=@n_folds, fold=@fold, seed=@seed)",
            "last_ckpt": LAST_CKPT_EXPR,
            "loss": {
                "_target_": "eunets_monai.engine.losses.get_loss",
                "name": "@loss_name",
                "deep_supervision": True,
                "weight_mode": "@deep_supervision_weights",
            },
            "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": "@learning_rate"},
            "lr_scheduler": {
                "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                "optimizer": "@optimizer",
                "mode": "max",
                "factor": 0.5,
                "patience": "@lr_patience",
            },
            "train": {
                "preprocessing": (
                    "$presets.get_transforms(@task, 'train', spatial_dims=@spatial_dims,"
                    " patch_size=@patch_size, num_samples=@num_samples)"
                ),
                "dataset": {
                    "_target_": "CacheDataset",
                    "data": "$@split[0]",
                    "transform": "@train#preprocessing",
                    "cache_rate": "@cache_rate",
                    "num_workers": "@num_workers",
                    "progress": False,
                },
                "dataloader": {
                    "_target_": "DataLoader",
                    "dataset": "@train#dataset",
                    "batch_size": "@batch_size",
                    "shuffle": True,
                    "num_workers": "@num_workers",
                },
                "inferer": {"_target_": "SimpleInferer"},
                "postprocessing": "$presets.get_postprocessing(@task, 'train')",
                "handlers": [
                    {
                        "_target_": "StatsHandler",
                        "tag_name": "train_loss",
                        "output_transform": "$monai.handlers.from_engine(['loss'], first=True)",
                    },
                    {
                        "_target_": "TensorBoardStatsHandler",
                        "log_dir": "@output_dir",
                        "tag_name": "train_loss",
                        "output_transform": "$monai.handlers.from_engine(['loss'], first=True)",
                    },
                ],
                "key_metric": {
                    "train_mean_dice": {
                        "_target_": "MeanDice",
                        "include_background": False,
                        "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                    }
                },
                # Attached to the trainer once it exists (the validator's early stopping and these checkpoints hold
                # the trainer, so they cannot be among its own handlers: MONAI configs reject circular references).
                "validation": {
                    "_target_": "ValidationHandler",
                    "validator": "@validate#evaluator",
                    "epoch_level": True,
                    "interval": "@val_interval",
                },
                "checkpoint_loader": {
                    "_target_": "CheckpointLoader",
                    "_disabled_": "$not (@resume and @last_ckpt)",
                    "load_path": "@last_ckpt",
                    "load_dict": "@train#checkpoint_state",
                    "map_location": "@device",
                },
                "checkpoint_saver": {
                    "_target_": "CheckpointSaver",
                    "save_dir": "@ckpt_dir",
                    "save_dict": "@train#checkpoint_state",
                    "save_interval": 1,
                    "n_saved": 1,
                    "epoch_level": True,
                },
                "checkpoint_state": {
                    "model": "@network",
                    "optimizer": "@optimizer",
                    "lr_scheduler": "@lr_scheduler",
                    "trainer": "@train#trainer",
                    # the best-model saver's record of the best score, so a resumed run keeps the best model.pt
                    "best_model_record": "$@validate#handlers#4._key_metric_checkpoint",
                },
                "trainer": {
                    "_target_": "SupervisedTrainer",
                    "max_epochs": "@max_epochs",
                    "device": "@device",
                    "train_data_loader": "@train#dataloader",
                    "network": "@network",
                    "loss_function": "@loss",
                    "optimizer": "@optimizer",
                    "inferer": "@train#inferer",
                    "postprocessing": "@train#postprocessing",
                    "key_train_metric": "@train#key_metric",
                    "train_handlers": "@train#handlers",
                    "amp": "@amp",
                },
            },
            "validate": {
                "preprocessing": "$presets.get_transforms(@task, 'val', spatial_dims=@spatial_dims)",
                "dataset": {
                    "_target_": "CacheDataset",
                    "data": "$@split[1]",
                    "transform": "@validate#preprocessing",
                    "cache_rate": "@cache_rate",
                    "num_workers": "@num_workers",
                    "progress": False,
                },
                "dataloader": {
                    "_target_": "DataLoader",
                    "dataset": "@validate#dataset",
                    "batch_size": 1,
                    "shuffle": False,
                    "num_workers": "@num_workers",
                },
                "inferer": ("$presets.get_inferer(@task, spatial_dims=@spatial_dims, roi_size=@patch_size)"),
                "postprocessing": "$presets.get_postprocessing(@task, 'val')",
                "handlers": [
                    {
                        "_target_": "LrScheduleHandler",
                        "lr_scheduler": "@lr_scheduler",
                        "print_lr": True,
                        "epoch_level": True,
                        "step_transform": "$lambda engine: engine.state.metrics['val_mean_dice']",
                    },
                    {
                        "_target_": "EarlyStopHandler",
                        "patience": "@early_stop_patience",
                        "score_function": "$lambda engine: engine.state.metrics['val_mean_dice']",
                        "trainer": "@train#trainer",
                        "epoch_level": True,
                    },
                    {"_target_": "StatsHandler", "iteration_log": False},
                    {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "iteration_log": False},
                    {
                        "_target_": "CheckpointSaver",
                        "save_dir": "@ckpt_dir",
                        "save_dict": {"model": "@network"},
                        "save_key_metric": True,
                        "key_metric_filename": "model.pt",
                    },
                ],
                "key_metric": {
                    "val_mean_dice": {
                        "_target_": "MeanDice",
                        "include_background": False,
                        "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                    }
                },
                "evaluator": {
                    "_target_": "SupervisedEvaluator",
                    "device": "@device",
                    "val_data_loader": "@validate#dataloader",
                    "network": "@network",
                    "inferer": "@validate#inferer",
                    "postprocessing": "@validate#postprocessing",
                    "key_val_metric": "@validate#key_metric",
                    "val_handlers": "@validate#handlers",
                    "amp": "@amp",
                },
            },
            "initialize": [
                "@check_data",
                "$monai.utils.set_determinism(seed=@seed)",
                "$os.makedirs(@ckpt_dir, exist_ok=True)",
            ],
            "run": TRAIN_RUN,
            "finalize": [],
        }
    )
    return cfg


# Handlers that only rank 0 runs under DDP (logs, TensorBoard, checkpoints); the LR schedule, early stopping,
# validation and resuming run on every rank so that all ranks stay in step.
RANK0_ONLY = "(monai.handlers.StatsHandler, monai.handlers.TensorBoardStatsHandler, monai.handlers.CheckpointSaver)"


def multi_gpu_config() -> dict:
    """configs/multi_gpu_train.json: merged over train.json, run by torchrun (NCCL on GPUs, gloo on CPUs)."""
    return {
        "device": (
            "$torch.device('cuda:' + os.environ['LOCAL_RANK']) if torch.cuda.is_available() else torch.device('cpu')"
        ),
        "network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": "$@network_def.to(@device)",
            "device_ids": "$[@device] if torch.cuda.is_available() else None",
        },
        "train#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@train#dataset",
            "even_divisible": True,
            "shuffle": True,
        },
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": (
            f"$[h for h in @train#handlers if not isinstance(h, {RANK0_ONLY})] if dist.get_rank() > 0"
            " else @train#handlers"
        ),
        "validate#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@validate#dataset",
            "even_divisible": False,
            "shuffle": False,
        },
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": (
            f"$[h for h in @validate#handlers if not isinstance(h, {RANK0_ONLY})] if dist.get_rank() > 0"
            " else @validate#handlers"
        ),
        "initialize": [
            "$import torch.distributed as dist",
            "@check_data",
            "$dist.is_initialized() or dist.init_process_group("
            "backend='nccl' if torch.cuda.is_available() else 'gloo')",
            "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
            "$monai.utils.set_determinism(seed=@seed)",
            "$os.makedirs(@ckpt_dir, exist_ok=True)",
        ],
        "train#checkpoint_saver#_disabled_": "$dist.get_rank() > 0",
        "run": TRAIN_RUN,
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


def evaluate_config() -> dict:
    """configs/evaluate.json: merged over train.json; the best model on the validation fold, per-case metrics."""
    return {
        "validate#handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@ckpt_dir + '/model.pt'",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {"_target_": "StatsHandler", "iteration_log": False},
            {
                "_target_": "MetricsSaver",
                "save_dir": "@output_dir",
                "metrics": ["val_mean_dice"],
                "metric_details": ["val_mean_dice"],
                "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
                "summary_ops": "*",
            },
        ],
        "initialize": ["@check_data", "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@validate#evaluator.run()"],
        "finalize": [],
    }


def inference_config(v: Variant) -> dict:
    """configs/inference.json: batch inference (mask, CAM, uncertainty NIfTIs) over a folder or datalist."""
    cfg = common_params(v)
    cfg.update(
        {
            "input_dir": "$@dataset_dir + '/imagesTs'",
            "output_dir": "$@bundle_root + '/eval/inference'",
            "ckpt_path": "$@ckpt_dir + '/model.pt'",
            "cam": True,
            "uncertainty": "fast",
            "sw_batch_size": 4,
            "overlap": 0.25,
            "preprocessing": "$presets.get_transforms(@task, 'infer', spatial_dims=@spatial_dims)",
            "inferer": (
                "$presets.get_inferer(@task, spatial_dims=@spatial_dims, roi_size=@patch_size,"
                " sw_batch_size=@sw_batch_size, overlap=@overlap)"
            ),
            "runner": {
                "_target_": "eunets_monai.inference.batch.BatchInference",
                "network": "@network",
                "preprocessing": "@preprocessing",
                "inferer": "@inferer",
                "output_dir": "@output_dir",
                "ckpt_path": "@ckpt_path",
                "cam": "@cam",
                "uncertainty": "@uncertainty",
                "device": "@device",
                "exit_on_error": True,
            },
            "initialize": ["$monai.utils.set_determinism(seed=0)"],
            "run": ["$@runner(@input_dir)"],
            "finalize": [],
        }
    )
    return cfg


def _a(word: str) -> str:
    return "an" if word[0] in "AEIO" else "a"


def metadata(v: Variant, results: dict) -> dict:
    """configs/metadata.json (MONAI bundle schema meta_schema_20240725)."""
    measured = results.get(v.name, {})
    eval_metrics = {
        f"{run['setting']}_val_mean_dice": run["val_mean_dice"] for run in measured.get("runs", []) if "setting" in run
    }
    return {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": CHANGELOG,
        **VERSIONS,
        "required_packages_version": REQUIRED_PACKAGES,
        "supported_apps": {},
        "name": f"{v.eu} spleen CT segmentation",
        "task": f"Spleen segmentation in CT with the explainable {v.eu} ({v.arch} + MHEX+ heads)",
        "description": (
            f"{v.eu}: {_a(v.arch)} {v.arch} with an MHEX+ head on every decoder stage (deep supervision, "
            "equivalent-kernel CAMs, collaboration-gradient uncertainty). 3D by default (96^3 patches, "
            "1.5x1.5x2 mm); the paper's 2D setting with --spatial_dims 2, the plain baseline with --mhex false, "
            "any MSD task with --task and --dataset_dir. eval_metrics are measured on MSD Task04 hippocampus "
            "(see docs/README.md), not spleen."
        ),
        "authors": "eunets-monai contributors",
        "copyright": "Copyright (c) eunets-monai contributors",
        "data_source": "Medical Segmentation Decathlon Task09_Spleen, http://medicaldecathlon.com/ (CC-BY-SA 4.0)",
        "data_type": "nibabel",
        "image_classes": "single channel CT, Hounsfield units windowed -57..164 to 0..1",
        "label_classes": "single channel class map: 0 background, 1 spleen",
        "pred_classes": "2 channels (logits): 0 background, 1 spleen",
        "eval_metrics": eval_metrics,
        "intended_use": "Research on explainable segmentation only; not for clinical use.",
        "references": [PAPER, v.reference, MSD],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [96, 96, 96],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 2,
                    "spatial_shape": [96, 96, 96],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "background", "1": "spleen"},
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


def license_text() -> str:
    apache = (SHARED / "APACHE-2.0.txt").read_text()
    header = (
        "Copyright (c) eunets-monai contributors.\n\n"
        "The configuration files and documents of this bundle are licensed under the Apache License, Version 2.0\n"
        "(below). The data it is trained and evaluated on is NOT covered by this licence: the Medical Segmentation\n"
        "Decathlon data (Task09_Spleen, Task04_Hippocampus, ...) is licensed CC-BY-SA 4.0; attribute\n"
        f"{MSD}, and share alike.\n\n"
    )
    return header + apache


def _results_table(v: Variant, results: dict) -> str:
    measured = results.get(v.name)
    if not measured or not measured.get("runs"):
        return (
            "Not measured yet for this bundle: run the command above (it writes "
            "`bundles/_shared/hippocampus_results.json`, then `python scripts/generate_bundles.py` puts the numbers "
            "here).\n"
        )
    rows = ["| setting | network | epochs x iterations | train / val cases | best val mean Dice (fg) | wall time |"]
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for run in measured["runs"]:
        rows.append(
            f"| {run['setting']} | {run['network']} | {run['epochs']} | {run['n_train']} / {run['n_val']} | "
            f"{run['val_mean_dice']:.3f} | {run['seconds']:.0f} s |"
        )
    return "\n".join(rows) + "\n\n" + f"Measured on {measured.get('machine', 'CPU')}.\n"


def _results_command(v: Variant, results: dict) -> str:
    cmd = results.get(v.name, {}).get("command", f"python scripts/train_hippocampus.py --bundle {v.name}")
    script, _, bundle_cmd = cmd.partition("   # runs: ")
    return script + (f"\n# which runs the bundle command:\n{bundle_cmd}" if bundle_cmd else "")


def _attention_doc(v: Variant) -> str:
    """Variants-table row and note on the skip attention (only for the networks that have it)."""
    if not dict(v.network_args).get("attention"):
        return ""
    return """| the papers' global skip attention in 3D as well (quadratic in the voxels) | `--attention global` |

Skip attention (`--attention`, default `auto`): the papers work in 2D, where every skip position attends to every
other (`global`), and `auto` keeps that in 2D. In 3D `auto` means `reduced`, a departure from the papers: the keys and
values of each skip's cross-attention are average-pooled onto at most 8x8x8 cells (PVT v2's linear spatial-reduction
attention, Wang et al. 2022), so every voxel still attends over the whole patch at a cost linear in the voxels
(`eunets_monai.networks.blocks.attention.SkipCrossAttention`; side-by-side timings: `scripts/benchmark_networks.py`).
"""


def readme(v: Variant, results: dict) -> str:
    b = f"bundles/{v.name}"
    cmd = _results_command(v, results)
    return f"""# {v.eu} spleen CT segmentation ({v.name})

A MONAI bundle of the explainable **{v.eu}**: {_a(v.arch)} {v.arch} (`{v.target}`) with an MHEX+ head on every decoder
stage. The heads give deep supervision in training and, at inference, equivalent-kernel class activation maps (CAMs)
and a collaboration-gradient uncertainty map next to the segmentation. The network comes from the installed
`eunets_monai` package; the bundle holds configuration only and runs from any working directory (the bundle folder
is found from the config file's location; `--bundle_root DIR` overrides it).

This file, like all bundles, is generated by `scripts/generate_bundles.py` from one template; edit the template,
not the bundle (`tests/bundles/test_bundles_in_sync.py` fails when they differ).

## Data

MSD Task09 Spleen (41 labelled CT volumes), http://medicaldecathlon.com/, licence **CC-BY-SA 4.0**
(attribution: {MSD}; share alike). Download `Task09_Spleen.tar`, extract it, and point the bundle at it:

```bash
python -m monai.bundle run --config_file {b}/configs/train.json --dataset_dir /data/Task09_Spleen
```

The default `dataset_dir` is `/workspace/data/Task09_Spleen` (as in MONAI's spleen_ct_segmentation bundle); when
it is missing the run stops at once with a one-line error naming the path and how to get the data.
`eunets_monai.data.datalists.download_msd("spleen", "/data")` downloads it with MONAI's MSD download code.

Any other MSD task: `--task heart|hippocampus|spleen --dataset_dir /data/TaskXX_Name` (transform presets in
`eunets_monai.data.presets`: spacing, intensity normalisation, patch size, classes; `out_channels` follows the task).
The package ships a 12+4 case subset of MSD Task04 hippocampus (CC-BY-SA 4.0, licence in the folder),
`eunets_monai/data/sample/hippocampus`: `--task hippocampus --dataset_dir <that folder>` (what the README's main
command, `scripts/quickstart.py`, trains on).

## Training recipe (`configs/train.json`)

- MONAI `SupervisedTrainer` / `SupervisedEvaluator` with ignite handlers, all in the config.
- Pre-processing (spleen): RAS, 1.5x1.5x2 mm, HU window -57..164 to 0..1, foreground crop, `num_samples` = 4
  positive/negative-balanced 96^3 patches per volume, flips/rotations/intensity jitter; labels cast to integers.
- Split: 5-fold cross-validation with a fixed seed (`--fold 0..4`, `--n_folds`, `--seed`);
  the 80/10/10 hold-out split: `--split "$datalists.holdout_split(@datalist)[:2]"`.
- Loss: deep supervision over the final output and every MHEX+ head (`eunets_monai.engine.losses.get_loss`):
  weights 1, 0.5, 0.25, ... (halved per head from the shallowest, floored at 1/16; `--deep_supervision_weights
  two` = 1, 0.5, 0.5, ...; `same` = all 1). Loss choice `--loss_name dicece` (default) | `dice` | `ce` |
  `bcedice` (BCE + Dice with smoothing 1, paper 003 eqs. 10-11) | `focal`.
- Adam (lr `--learning_rate 0.001`); `ReduceLROnPlateau` (factor 0.5, patience 5) and early stopping (patience 10)
  on the validation mean Dice (foreground classes); at most 50 epochs (`--max_epochs`), validation every epoch.
- AMP when a GPU is there (`"amp": "$torch.cuda.is_available()"`); device cuda if available, else cpu.
- Checkpoints in `models/`: `model.pt` (best validation mean Dice, weights only) and `checkpoint_epoch=N.pt` (the
  last epoch: model, optimizer, scheduler, trainer state). A new run resumes from the last checkpoint when there is
  one (`--resume false` starts afresh): model, optimizer, LR scheduler, epoch and the best-model record are
  restored; the early-stopping counter starts again.
- TensorBoard logs in `eval/` (`tensorboard --logdir {b}/eval`); MLflow tracking with MONAI's switch
  `--tracking mlflow` (runs in `eval/mlruns.db`; `--tracking_uri`, `--experiment_name` override).

## Variants (documented overrides of this one bundle)

| what | override |
| --- | --- |
| plain {v.arch} baseline (no MHEX+ heads) | `--mhex false` |
| the paper's 2D setting (axial slices, `SliceInferer` on the volumes) | `--spatial_dims 2` (patch 256x256 for spleen) |
| network width | `--channels "[32, 64, 128, 256, 512]"` |
| another MSD task | `--task hippocampus --dataset_dir /data/Task04_Hippocampus` |
| where outputs go | `--ckpt_dir DIR --output_dir DIR` |
{_attention_doc(v)}
## Commands

```bash
# train (one GPU or CPU)
python -m monai.bundle run --config_file {b}/configs/train.json --dataset_dir /data/Task09_Spleen
# several GPUs (DDP, DistributedSampler; gloo on CPUs)
torchrun --nproc_per_node=2 -m monai.bundle run \\
    --config_file "['{b}/configs/train.json', '{b}/configs/multi_gpu_train.json']" --dataset_dir /data/Task09_Spleen
# evaluate the best checkpoint on the validation fold (per-case Dice in eval/)
python -m monai.bundle run --config_file "['{b}/configs/train.json', '{b}/configs/evaluate.json']" \\
    --dataset_dir /data/Task09_Spleen
# batch inference: <case>_seg.nii.gz, <case>_cam.nii.gz (K channels), <case>_uncertainty.nii.gz per input image,
# on the input's grid; --input_dir takes a folder of NIfTI files or a JSON datalist
python -m monai.bundle run --config_file {b}/configs/inference.json --input_dir /data/images --output_dir /data/out
# checks
python -m monai.bundle verify_metadata --meta_file {b}/configs/metadata.json \\
    --filepath bundles/_shared/meta_schema_20240725.json
python -m monai.bundle verify_net_in_out network_def --meta_file {b}/configs/metadata.json \\
    --config_file {b}/configs/inference.json
python -m monai.bundle ckpt_export network_def --filepath {b}/models/model.ts --ckpt_file {b}/models/model.pt \\
    --meta_file {b}/configs/metadata.json --config_file {b}/configs/inference.json
```

`bundles/_shared/meta_schema_20240725.json` is MONAI's bundle metadata schema (from the MONAI-extra-test-data
0.8.1 release, as mirrored at project-monai.github.io/schema), shipped so `verify_metadata` runs offline.

## Measured results

Validation mean Dice (foreground classes, MONAI `MeanDice`) on real MSD Task04 **hippocampus** MRI (the spleen
images are not available on the development machines), fixed 5-fold split (fold 0, seed 0), the paper's 2D
setting, produced by (each iteration: 2 volumes x 16 axial slices; validation on the 42 whole volumes):

```bash
{cmd}
```

{_results_table(v, results)}
These are short CPU runs with small widths (`channels` and epochs in the table), to show the bundle trains
end to end; they are far below what a full-width, 50-epoch GPU run reaches, and are not a comparison of variants.

## Licence

Bundle configuration and documents: Apache-2.0 (`LICENSE`). Data: MSD, CC-BY-SA 4.0 ({MSD}).
"""


def render(v: Variant, results: dict) -> dict[str, str]:
    """Every file of one bundle: relative path -> content."""

    def dump(obj: dict) -> str:
        return json.dumps(obj, indent=4) + "\n"

    return {
        "configs/train.json": dump(train_config(v)),
        "configs/multi_gpu_train.json": dump(multi_gpu_config()),
        "configs/evaluate.json": dump(evaluate_config()),
        "configs/inference.json": dump(inference_config(v)),
        "configs/metadata.json": dump(metadata(v, results)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(v, results),
        "LICENSE": license_text(),
    }


def load_results() -> dict:
    return json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.is_file() else {}


def render_all() -> dict[Path, str]:
    """Every generated file of every bundle: absolute path -> content."""
    results = load_results()
    return {BUNDLES / v.name / rel: text for v in VARIANTS for rel, text in render(v, results).items()}


def _show(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed bundles are in sync")
    args = parser.parse_args(argv)
    files = render_all()
    if args.check:
        stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
        for p in stale:
            print(f"out of sync: {_show(p)}")
        if stale:
            print("run: python scripts/generate_bundles.py")
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} files in {len(VARIANTS)} bundles under {_show(BUNDLES)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
