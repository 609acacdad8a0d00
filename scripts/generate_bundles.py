"""
Write every EU-Net MONAI bundle under ``bundles/`` from the one template in this file (the single source of truth
for their shared configuration), or check that the committed bundles match it.

    python scripts/generate_bundles.py          # (re)write bundles/<name>/...
    python scripts/generate_bundles.py --check  # exit 1 and list the files that differ

Each bundle gets ``configs/{train,evaluate,multi_gpu_train,inference,metadata}.json``, ``configs/logging.conf``,
``docs/README.md`` and ``LICENSE``. Two bundles per architecture: ``<arch>_spleen`` (3D, the configuration to
train on MSD Task09) and ``<arch>_hippocampus`` (shipped weights). A hippocampus bundle's network setting and
measured Dice come from ``bundles/_shared/hippocampus_models.json`` (written by the study) when it has an entry;
otherwise the small default below is used and its docs say "not yet measured".
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from eunets_monai.data import presets
from eunets_monai.inference.explained import DEFAULT_UNCERTAINTY

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SHARED = BUNDLES / "_shared"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = "0.2.0"
CHANGELOG = {
    "0.2.0": "servable unchanged by MONAI Label: inference postprocessing (uint8 label map on the input grid), "
    "transforms spelled out in the configs, one bundle per task and setting (hippocampus bundles), data checked "
    "only where the datalist is built, resume explicit (--resume true), bundle_root '.'",
    "0.1.0": "first release: EU variant (MHEX+ heads) and plain baseline, 3D and 2D, any MSD task",
}
# Versions the bundles were generated and tested with (metadata.json).
# MONAI 1.5.2 is what MONAI Label 0.8.5 runs on (1.6 breaks its image-path input in Spacingd); the project's own
# tests also pass on MONAI 1.6.1 / torch 2.13.0 (pyproject.toml: monai>=1.5.2,<1.7).
VERSIONS = {"monai_version": "1.5.2", "pytorch_version": "2.14.1", "numpy_version": "1.26.4"}
SUPPORTED_APPS = {"monailabel": "0.8.5"}
# As in the MONAI Label environment the bundles are tested in (scripts/monailabel_constraints.txt).
REQUIRED_PACKAGES = {"eunets-monai": "0.1.0", "nibabel": "5.4.2", "pytorch-ignite": "0.4.11", "tensorboard": "2.21.0"}

PAPER = (
    "Sun, Lio: Explainable U-Nets (EU-Nets) with MHEX+ heads, equivalent-kernel CAMs and collaboration-gradient "
    "uncertainty (see the eunets-monai README)"
)
MSD = "Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 13, 4128 (2022)"


@dataclass(frozen=True)
class Arch:
    """One EU-Net architecture (a bundle per task is generated from it)."""

    prefix: str  # bundle folder is <prefix>_<task>
    target: str  # network class, importable from the installed eunets_monai
    arch: str  # plain architecture name
    eu: str  # EU name
    reference: str
    # Extra network arguments of this architecture, for every bundle of it: each is a top-level config key (so
    # ``--attention global`` overrides it) that network_def refers to.
    network_kwargs: dict = field(default_factory=dict, compare=False)


# Skip attention of the attention networks: "auto" = the papers' global attention in 2D, the linear-cost "reduced"
# (keys/values pooled onto 8^3 cells) in 3D, where global attention over a 96^3 patch's 48^3 skip is unaffordable.
ATTENTION = {"attention": "auto"}


ARCHS: tuple[Arch, ...] = (
    Arch("eunet", "eunets_monai.networks.nets.unet.UNet", "U-Net", "EU-Net", "Ronneberger et al., U-Net, MICCAI 2015"),
    Arch(
        "eunetpp",
        "eunets_monai.networks.nets.unetplusplus.UNetPlusPlus",
        "U-Net++",
        "EU-Net++",
        "Zhou et al., UNet++, DLMIA 2018",
    ),
    Arch(
        "ahf_eunet",
        "eunets_monai.networks.nets.ahf_unet.AHFUNet",
        "AHF-U-Net",
        "AHF-EU-Net",
        "AHF-U-Net (attention + hybrid fusion U-Net), see the eunets-monai papers folder",
    ),
    Arch(
        "eunet_transformer",
        "eunets_monai.networks.nets.unet_transformer.UNetTransformer",
        "U-Net Transformer",
        "EU-Net Transformer",
        "Petit et al., U-Net Transformer, MLMI 2021",
        ATTENTION,
    ),
    Arch(
        "efen_eu",
        "eunets_monai.networks.nets.efen.EFEN",
        "EFEN",
        "EFEN-EU",
        "EFEN (edge-feature enhancement network), see the eunets-monai papers folder",
        ATTENTION,
    ),
)


@dataclass(frozen=True)
class Variant:
    """One bundle: an architecture on one task, with the network setting it is served with (no CLI overrides)."""

    arch: Arch
    task: str  # eunets_monai.data.presets task name
    spatial_dims: int
    channels: tuple[int, ...]
    patch_size: tuple[int, ...]  # training patch = inference window (2 values for a 2D network)
    measured: dict = field(default_factory=dict, compare=False)  # from hippocampus_models.json, else empty

    @property
    def name(self) -> str:
        return f"{self.arch.prefix}_{self.task}"

    @property
    def target(self) -> str:
        return self.arch.target


# Written by the network study (branch `study`): per hippocampus bundle the trained setting and
# its measured validation Dice, e.g. {"eunet_hippocampus": {"spatial_dims": 2, "channels": [16, 32, 64, 128],
# "patch_size": [40, 56], "val_dice": {"mean": 0.9, "anterior": 0.9, "posterior": 0.9}, "fold": 0, "n_val": 42,
# "command": "...", "machine": "..."}}. Bundles without an entry get HIPPOCAMPUS_DEFAULT and "not yet measured".
MODELS_FILE = SHARED / "hippocampus_models.json"
# A small, fast model: the paper's 2D setting (axial slices, SliceInferer on the volume), widths 16-128, the
# preset's 40x56 slice window (the volumes are about 35x50x36 voxels at 1 mm).
HIPPOCAMPUS_DEFAULT = {"spatial_dims": 2, "channels": [16, 32, 64, 128], "patch_size": [40, 56]}
SPLEEN = {"spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "patch_size": [96, 96, 96]}


def load_models() -> dict:
    return json.loads(MODELS_FILE.read_text()) if MODELS_FILE.is_file() else {}


def make_variants(models: dict | None = None) -> tuple[Variant, ...]:
    """Every bundle: the spleen configurations to train on Task09, and the hippocampus models (shipped weights)."""
    models = load_models() if models is None else models
    out = []
    for task in ("spleen", "hippocampus"):
        for a in ARCHS:
            name = f"{a.prefix}_{task}"
            setting = SPLEEN if task == "spleen" else {**HIPPOCAMPUS_DEFAULT, **models.get(name, {})}
            out.append(
                Variant(
                    a,
                    task,
                    int(setting["spatial_dims"]),
                    tuple(setting["channels"]),
                    tuple(setting["patch_size"]),
                    measured=models.get(name, {}) if task == "hippocampus" else {},
                )
            )
    return tuple(out)


VARIANTS: tuple[Variant, ...] = make_variants()

# ---------------------------------------------------------------------------------------------------------------
# Shared configuration: every bundle's JSON is this template with its own network, task and transforms.
# ---------------------------------------------------------------------------------------------------------------

# As in MONAI's model-zoo bundles: the working directory is the bundle folder unless --bundle_root says otherwise.
# MONAI Label (and ConfigParser users) set bundle_root themselves; models/ and eval/ are resolved from it.
BUNDLE_ROOT = "."

IMPORTS = [
    "$import glob",
    "$import os",
    "$import sys",
    "$import ignite",
    "$import eunets_monai.data.datalists as datalists",
]

# Only evaluated when the datalist is built from dataset_dir: MONAI Label (or --train#dataset#data) supplies the
# data itself and never reaches it. Stops at once with one line (SystemExit is not wrapped by MONAI's parser).
CHECKED_DATASET_DIR_EXPR = (
    "$@dataset_dir if os.path.isfile(os.path.join(@dataset_dir, 'dataset.json')) else sys.exit('error: MSD data not"
    " found: ' + os.path.join(os.path.abspath(@dataset_dir), 'dataset.json') + ' does not exist; download '"
    " + datalists.msd_task_name(@task) + '.tar from http://medicaldecathlon.com/ and extract it"
    " there, or pass --dataset_dir DIR.')"
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

# ---------------------------------------------------------------------------------------------------------------
# Transforms, spelled out in the configs (what eunets_monai.data.presets builds in Python; a test checks that both
# give the same data) so that users see and edit them where MONAI users expect them.
# ---------------------------------------------------------------------------------------------------------------

SLICE_AXIS = 2  # axial slices after Orientationd("RAS")


def _t(target: str, **kwargs) -> dict:
    return {"_target_": target, **kwargs}


def load_transforms(p, keys: list[str]) -> list[dict]:
    steps = [
        _t("eunets_monai.data.checks.CheckedLoadImaged", keys=keys, ensure_channel_first=True, image_only=True),
        _t(
            "eunets_monai.data.checks.CheckShaped",
            keys=keys,
            spatial_dims=3,
            channels={"image": p.in_channels, "label": 1},
        ),
        _t("eunets_monai.data.checks.CheckFinited", keys="image"),
    ]
    if "label" in keys:
        steps.append(_t("eunets_monai.data.checks.RoundLabelsd", keys="label", num_classes=p.out_channels))
    steps += [
        _t("Orientationd", keys=keys, axcodes="RAS", labels=None),
        _t("Spacingd", keys=keys, pixdim=list(p.spacing), mode=["bilinear", "nearest"][: len(keys)]),
    ]
    if p.intensity == "ct_window":
        a_min, a_max = p.hu_window
        steps.append(
            _t("ScaleIntensityRanged", keys="image", a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)
        )
    else:
        steps.append(_t("NormalizeIntensityd", keys="image", nonzero=True, channel_wise=True))
    return steps


def sampling_transforms(p, v: Variant) -> list[dict]:
    keys = ["image", "label"]
    # 2D: a one-slice-thick (H, W, 1) patch of the volume, then the slice axis dropped.
    crop, pad = ("@patch_size", "@patch_size") if v.spatial_dims == 3 else ("$@patch_size + [1]", "$@patch_size + [-1]")
    steps = []
    if p.crop_foreground:
        steps.append(_t("CropForegroundd", keys=keys, source_key="image", allow_smaller=True))
    steps += [
        _t("SpatialPadd", keys=keys, spatial_size=pad),
        _t(
            "RandCropByPosNegLabeld",
            keys=keys,
            label_key="label",
            spatial_size=crop,
            pos=p.pos,
            neg=p.neg,
            num_samples="@num_samples",
            # CT: negative centres only inside the body (windowed intensity > 0), as MONAI's spleen bundle does.
            image_key="image" if p.intensity == "ct_window" else None,
            image_threshold=0.0,
        ),
    ]
    if v.spatial_dims == 2:
        steps.append(_t("SqueezeDimd", keys=keys, dim=1 + SLICE_AXIS))
    steps += [_t("RandFlipd", keys=keys, prob=0.1, spatial_axis=axis) for axis in range(v.spatial_dims)]
    # Quarter turns in the axial plane only where they keep the patch shape (batches must stack).
    if v.patch_size[0] == v.patch_size[1]:
        steps.append(_t("RandRotate90d", keys=keys, prob=0.1, max_k=3, spatial_axes=[0, 1]))
    steps += [
        _t("RandScaleIntensityd", keys="image", factors=0.1, prob=0.5),
        _t("RandShiftIntensityd", keys="image", offsets=0.1, prob=0.5),
    ]
    return steps


def final_transforms(keys: list[str]) -> list[dict]:
    steps = [_t("EnsureTyped", keys="image", dtype="$torch.float32")]
    if "label" in keys:
        steps.append(_t("CastToTyped", keys="label", dtype="$torch.int64"))
    return steps


def preprocessing(v: Variant, stage: str) -> dict:
    """The Compose of a stage ("train" | "val" | "infer"), as the config dict of the bundle."""
    p = presets.get_task(v.task)
    keys = ["image"] if stage == "infer" else ["image", "label"]
    steps = load_transforms(p, keys)
    if stage == "train":
        steps += sampling_transforms(p, v)
    return _t("Compose", transforms=steps + final_transforms(keys))


def inferer(v: Variant) -> dict:
    """Sliding windows over the volume (3D), or a 2D window over each axial slice (SliceInferer)."""
    args = {"roi_size": "@patch_size", "sw_batch_size": "@sw_batch_size", "overlap": "@overlap"}
    if v.spatial_dims == 3:
        return _t("SlidingWindowInferer", **args)
    return _t("SliceInferer", spatial_dim=SLICE_AXIS, **args)


def infer_postprocessing() -> dict:
    """Logits -> class map on the input image's grid: what MONAI Label's BundleInferTask serves."""
    return _t(
        "Compose",
        transforms=[
            _t("Activationsd", keys="pred", softmax=True),
            _t(
                "Invertd",
                keys="pred",
                transform="@preprocessing",
                orig_keys="image",
                nearest_interp=False,
                to_tensor=True,
            ),
            _t("AsDiscreted", keys="pred", argmax=True, dtype="$torch.uint8"),
        ],
    )


def eval_postprocessing(k: int) -> dict:
    """Final output of the deep-supervision list, softmax, argmax, one-hot pred and label (for MeanDice)."""
    return _t(
        "Compose",
        transforms=[
            _t("Lambdad", keys="pred", func="$final_output"),
            _t("Activationsd", keys="pred", softmax=True),
            _t("AsDiscreted", keys=["pred", "label"], argmax=[True, False], to_onehot=[k, k]),
        ],
    )


def common_params(v: Variant) -> dict:
    """Keys shared by train.json and inference.json (the ones users override most)."""
    p = presets.get_task(v.task)
    return {
        "imports": [*IMPORTS, "$from eunets_monai.engine.outputs import final_output"],
        "bundle_root": BUNDLE_ROOT,
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "task": v.task,
        "dataset_dir": f"/workspace/data/{p.msd_task}",
        "spatial_dims": v.spatial_dims,
        "patch_size": list(v.patch_size),
        "channels": list(v.channels),
        "mhex": True,
        **v.arch.network_kwargs,
        "in_channels": p.in_channels,
        "out_channels": p.out_channels,
        "sw_batch_size": 4,
        "overlap": 0.25,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": v.target,
            "spatial_dims": "@spatial_dims",
            "in_channels": "@in_channels",
            "out_channels": "@out_channels",
            "channels": "@channels",
            "mhex": "@mhex",
            **{key: f"@{key}" for key in v.arch.network_kwargs},
        },
        "network": "$@network_def.to(@device)",
    }


def train_config(v: Variant) -> dict:
    """configs/train.json: SupervisedTrainer + SupervisedEvaluator, runs on its own."""
    p = presets.get_task(v.task)
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
            # Explicit: a new run starts afresh unless --resume true (then from the last checkpoint_epoch=N.pt).
            "resume": False,
            "amp": "$torch.cuda.is_available()",
            "checked_dataset_dir": CHECKED_DATASET_DIR_EXPR,
            "datalist": "$datalists.msd_datalist(@checked_dataset_dir)",
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
                "preprocessing": preprocessing(v, "train"),
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
                "postprocessing": eval_postprocessing(p.out_channels),
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
                "preprocessing": preprocessing(v, "val"),
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
                "inferer": inferer(v),
                "postprocessing": eval_postprocessing(p.out_channels),
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
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
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
            "uncertainty": DEFAULT_UNCERTAINTY,
            "preprocessing": preprocessing(v, "infer"),
            "inferer": inferer(v),
            # What MONAI Label's BundleInferTask applies after the inferer: a uint8 class map on the input's grid.
            # (The runner below writes its own outputs: mask, CAM and uncertainty.)
            "postprocessing": infer_postprocessing(),
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
    if "command" in m:
        lines += ["", "Produced by:", "", "```bash", m["command"], "```"]
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

This file, like all bundles, is generated by `scripts/generate_bundles.py` from one template; edit the template,
not the bundle (`tests/bundles/test_bundles_in_sync.py` fails when they differ). Every setting of the bundle is in
its configs (task, dimensions, widths, classes, transforms): it runs as it is in MONAI Label and with
`monai.bundle run`, no command-line overrides needed.

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
- Adam (lr `--learning_rate 0.001`); `ReduceLROnPlateau` (factor 0.5, patience 5) and early stopping (patience 10)
  on the validation mean Dice (foreground classes); at most 50 epochs (`--max_epochs`), validation every epoch.
- AMP when a GPU is there; device cuda if available, else cpu.
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
`scripts/generate_bundles.py`), not an override.

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


def render(v: Variant) -> dict[str, str]:
    """Every file of one bundle: relative path -> content."""

    def dump(obj: dict) -> str:
        return json.dumps(obj, indent=4) + "\n"

    return {
        "configs/train.json": dump(train_config(v)),
        "configs/multi_gpu_train.json": dump(multi_gpu_config()),
        "configs/evaluate.json": dump(evaluate_config()),
        "configs/inference.json": dump(inference_config(v)),
        "configs/metadata.json": dump(metadata(v)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(v),
        "LICENSE": license_text(),
    }


def render_all() -> dict[Path, str]:
    """Every generated file of every bundle: absolute path -> content."""
    return {BUNDLES / v.name / rel: text for v in make_variants() for rel, text in render(v).items()}


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
    print(f"wrote {len(files)} files in {len(make_variants())} bundles under {_show(BUNDLES)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
