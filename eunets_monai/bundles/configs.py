"""
The bundles' MONAI configs (``train.json``, ``evaluate.json``, ``multi_gpu_train.json``, ``inference.json``) as
dicts: one template, each bundle with its own network, task and transforms spelled out.
"""

from __future__ import annotations

from eunets_monai.bundles.variants import Variant
from eunets_monai.data import presets
from eunets_monai.engine.optim import default_head_lr
from eunets_monai.inference.explained import DEFAULT_UNCERTAINTY

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
TRAIN_IMPORTS = [
    "$from eunets_monai.engine.optim import param_groups",
    "$from eunets_monai.engine.precision import memory_format",
]
# Training puts the network in the channels-last memory format where it is faster (2D on this project's CPU).
TRAIN_NETWORK = "$@network_def.to(@device, memory_format=memory_format(@spatial_dims, @channels_last))"

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


def autocast_inferer(inner: dict) -> dict:
    """``inner`` run under ``@precision`` (MONAI's engines autocast on CUDA only; this covers bfloat16 CPUs)."""
    return _t("eunets_monai.engine.precision.AutocastInferer", inferer=inner, precision="@precision")


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
    cfg["imports"] = [*cfg["imports"], *TRAIN_IMPORTS]
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
            # The MHEX+ heads' learning rate as a multiple of learning_rate (eunets_monai.engine.optim: at the full
            # rate Adam turns each head's identity-started Conv1 into a random projection within a few hundred steps).
            "head_lr": default_head_lr(v.spatial_dims),
            # Explicit: a new run starts afresh unless --resume true (then from the last checkpoint_epoch=N.pt).
            "resume": False,
            # auto: bfloat16 on CPUs with bf16 units (AVX512-BF16/AMX), float16 on CUDA, float32 elsewhere;
            # fp32 | bf16 | fp16 force one (eunets_monai.engine.precision). Weights and losses stay float32.
            "precision": "auto",
            # MONAI's own CUDA mixed precision (autocast + GradScaler) in the engines.
            "amp": "$torch.cuda.is_available() and @precision != 'fp32'",
            # channels-last memory format for training: 1.2-1.3x faster in 2D, no gain in 3D under bfloat16
            # (scripts/benchmark_precision.py); the weights saved are the same.
            "channels_last": v.spatial_dims == 2,
            "network": TRAIN_NETWORK,
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
            "optimizer": {
                "_target_": "torch.optim.Adam",
                "params": "$param_groups(@network_def, @learning_rate, @head_lr)",
                "lr": "@learning_rate",
            },
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
                "inferer": autocast_inferer({"_target_": "SimpleInferer"}),
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
                "inferer": autocast_inferer(inferer(v)),
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
            "module": TRAIN_NETWORK,
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
            # auto: bfloat16 on CPUs with bf16 units, float16 on CUDA, float32 elsewhere; fp32 | bf16 | fp16 force one.
            "precision": "auto",
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
                "precision": "@precision",
                "exit_on_error": True,
            },
            "initialize": ["$monai.utils.set_determinism(seed=0)"],
            "run": ["$@runner(@input_dir)"],
            "finalize": [],
        }
    )
    return cfg
