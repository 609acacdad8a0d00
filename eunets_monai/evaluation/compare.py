"""
EU-Net vs plain U-Net study: train every network of the family with one recipe on the same k-fold split, evaluate
Dice per class on each validation fold, and tabulate the results in the form of the paper's Table 1 (paper 000).

The recipe (the paper's where it fits a fixed budget): Adam, MONAI ``DiceCELoss`` (softmax, one-hot) with deep
supervision over the MHEX+ heads for EU-Nets (``get_loss("dicece")``; plain networks have only the final output),
``ReduceLROnPlateau`` on the validation mean Dice (optionally a final cosine phase down to 0), early stopping after
``early_stop`` validations without improvement, the best-validation weights kept. Budgets are counted in iterations
(``max_iters``), so CPU and GPU runs of one :py:class:`StudyConfig` do the same work.

Every (network, fold) run writes ``<out>/raw/<run>.json`` (per-case Dice, history, wall time) atomically when it
finishes and keeps ``<out>/state/<run>.pt`` (weights, optimiser, scheduler, iteration) at every validation, so an
interrupted study resumes where it stopped and tables/plots are rebuilt from the JSON files alone.

Examples::

    cfg = StudyConfig(networks=("unet",), spatial_dims=2, max_iters=200)
    run_study(cfg, resolve_task_dir("hippocampus", "data/Task04_Hippocampus"), "runs/study")
    print(format_table(summarize(load_results("runs/study"))))
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.metrics import DiceMetric
from monai.networks import one_hot
from monai.utils import set_determinism
from scipy import stats
from tqdm import tqdm

from eunets_monai.data.datalists import kfold_split, msd_datalist
from eunets_monai.data.presets import get_inferer, get_task, get_transforms
from eunets_monai.engine.losses import ds_warmup_scale, get_loss
from eunets_monai.engine.optim import default_head_lr, param_groups
from eunets_monai.engine.outputs import final_output
from eunets_monai.engine.precision import autocast, autocast_dtype, memory_format, precision_name
from eunets_monai.networks import NETWORKS, get_network
from eunets_monai.utils import atomic_torch_save, atomic_write_text, cpu_model

__all__ = [
    "DISPLAY_NAMES",
    "StudyConfig",
    "RunSpec",
    "case_id",
    "study_splits",
    "build_network",
    "count_parameters",
    "case_dice",
    "label_map_dice",
    "batch_class_dice",
    "evaluate",
    "train_run",
    "run_study",
    "load_results",
    "summarize",
    "paired_test",
    "format_table",
    "val_dice_at",
    "slow_starts",
    "class_dice_at",
    "seconds_to_reach",
    "steps_to_reach",
    "format_reach_table",
    "ablation_rows",
    "load_ablation",
    "format_ablation_table",
]

# Architecture name -> (plain name, EU name), as in the paper's Table 1.
DISPLAY_NAMES: dict[str, tuple[str, str]] = {
    "unet": ("U-Net", "EU-Net"),
    "unetplusplus": ("U-Net++", "EU-Net++"),
    "ahf_unet": ("AHF-U-Net", "AHF-EU-Net"),
    "unet_transformer": ("U-Net Transformer", "EU-Net Transformer"),
    "efen": ("EFEN", "EU-EFEN"),
}


# StudyConfig fields that only change EU runs (deep supervision and the heads' optimisation).
HEAD_OPTIONS = ("ds_weight_mode", "ds_warmup", "head_lr")


@dataclass(frozen=True)
class StudyConfig:
    """
    One recipe, budget and split for every network of a study.

    The defaults fit a 2-core CPU in about an hour for U-Net vs EU-Net (2D axial slices, widths 16-128, 3 folds);
    :py:meth:`full` gives the paper-like GPU setting (3D, 5 folds, widths 32-512, long budget).

    Attributes:
        task: task preset name (see ``eunets_monai.data.TASKS``).
        networks: architectures (keys of ``eunets_monai.networks.NETWORKS``); each runs plain and EU.
        variants: which of ("plain", "eu") to run.
        spatial_dims: 2 (axial slices) or 3.
        channels: encoder widths.
        n_folds: k of the k-fold split; folds: which folds to run (default all).
        seed: split, weight-initialisation and sampling seed.
        max_iters: optimiser steps per run.
        val_interval: steps between validations (LR plateau / early stopping / best weights).
        batch_size: volumes per step; num_samples: patches (3D) or slices (2D) drawn per volume.
        patch_size: training patch / inference ROI, default the task preset's.
        learning_rate: Adam's initial rate; lr_patience, lr_factor: ``ReduceLROnPlateau`` on validation Dice.
        early_stop: validations without improvement before stopping (0: never).
        stop_at_dice: end the run at the first validation whose mean Dice reaches this (None: never); for
            measuring the time to a target Dice (``seconds_to_reach``) without training on past it.
        anneal_steps: the last ``anneal_steps`` of ``max_iters`` follow a cosine from the learning rate reached so
            far down to 0, in place of the plateau schedule (0: plateau schedule only). It is a final phase: a
            resumed run can be given one after its plateau phase.
        loss: ``eunets_monai.engine.losses.get_loss`` name; deep_supervision: for EU-Nets (the paper's recipe).
        ds_weight_mode: deep-supervision weights of the final output and the heads ("exp", "two", "same"; see
            ``get_loss``).
        ds_warmup: the heads' loss weights ramp linearly from 0 to full over the first ``ds_warmup`` steps
            (``ds_warmup_scale``; 0: full weight from the start).
        head_lr: the MHEX+ heads' learning rate as a multiple of ``learning_rate``; None: the bundles' default for
            ``spatial_dims`` (``default_head_lr``: 0.01 in 2D, 1 in 3D; 1 everywhere before the slow-start study).
        channels_last: train in the channels-last memory format (1.2-1.3x faster 2D training on this project's
            CPU, also under bfloat16; numerically equal up to float rounding, but part of the recipe since rounding
            differences grow over training).
        residual_decoder: for diagnosis, force the decoder blocks of every run to residual (True) or plain double
            convs (False); None (default) keeps each variant's own (residual for EU, plain for the baselines), as
            the paper builds them.
        head_init: how the MHEX+ heads' Conv1 starts (``eunets_monai.networks.HEAD_INITS``): "identity" (this
            package's default) or "default" (PyTorch's, as in the runs before the head-initialisation study).
        exclude: case ids (e.g. "hippocampus_004") never used for training (the embedded sample, for shipping).
        device: "cpu", "cuda", ...
        precision: autocast precision of the forward pass (``eunets_monai.engine.precision.PRECISIONS``): "auto"
            (bf16 on a CPU with bf16 units, fp16 on CUDA, else fp32), "fp32", "bf16" or "fp16". Part of the recipe,
            as the dtype it resolves to: runs in other precisions are not compared in one table.
    """

    task: str = "hippocampus"
    networks: tuple[str, ...] = ("unet",)
    variants: tuple[str, ...] = ("plain", "eu")
    spatial_dims: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    n_folds: int = 3
    folds: tuple[int, ...] | None = None
    seed: int = 0
    max_iters: int = 200
    val_interval: int = 100
    batch_size: int = 2
    num_samples: int = 8
    patch_size: tuple[int, ...] | None = None
    learning_rate: float = 3e-3
    lr_patience: int = 3
    lr_factor: float = 0.5
    early_stop: int = 6
    anneal_steps: int = 0
    stop_at_dice: float | None = None
    loss: str = "dicece"
    deep_supervision: bool = True
    ds_weight_mode: str = "exp"
    ds_warmup: int = 0
    head_lr: float | None = None
    head_init: str = "identity"
    residual_decoder: bool | None = None
    channels_last: bool = False
    exclude: tuple[str, ...] = ()
    device: str = "cpu"
    precision: str = "auto"

    @classmethod
    def full(cls, **kwargs) -> StudyConfig:
        """The paper-like GPU setting: all five architectures, 3D, 5 folds, widths 32-512, 20k steps."""
        base = dict(
            networks=tuple(NETWORKS),
            spatial_dims=3,
            channels=(32, 64, 128, 256, 512),
            n_folds=5,
            max_iters=20000,
            val_interval=250,
            batch_size=2,
            num_samples=2,
            learning_rate=1e-3,
            lr_patience=10,
            early_stop=20,
            device="cuda",
            precision="auto",
        )
        return cls(**{**base, **kwargs})

    def fold_list(self) -> tuple[int, ...]:
        """The folds to run."""
        return tuple(range(self.n_folds)) if self.folds is None else tuple(self.folds)

    def recipe(self, mhex: bool = True) -> dict:
        """
        The settings that must match between runs compared in one table (everything but the run list), with the
        precision as the dtype it resolves to. Options added after the first results are left out where they have
        the value those results ran with, so those results stay comparable; the heads' options are left out of a
        plain network's recipe (they do not change its run).
        """
        d = asdict(self)
        for key in ("networks", "variants", "folds", "device"):
            d.pop(key)
        d["precision"] = precision_name(self.autocast_dtype())
        d["head_lr"] = self.heads_lr()
        legacy = {"anneal_steps": 0, "ds_weight_mode": "exp", "ds_warmup": 0, "head_lr": 1.0, "precision": "fp32"}
        legacy |= {"residual_decoder": None, "channels_last": False, "stop_at_dice": None}
        for key, value in legacy.items():
            if d[key] == value or (not mhex and key in HEAD_OPTIONS):
                d.pop(key)
        return d

    def heads_lr(self) -> float:
        """The heads' learning-rate multiple: ``head_lr``, or the default for ``spatial_dims``."""
        return default_head_lr(self.spatial_dims) if self.head_lr is None else self.head_lr

    def autocast_dtype(self) -> torch.dtype | None:
        """The forward pass's autocast dtype on ``device`` (``None``: float32)."""
        return autocast_dtype(self.precision, self.device)


@dataclass(frozen=True)
class RunSpec:
    """One (architecture, plain/EU, fold) run of a study."""

    network: str
    mhex: bool
    fold: int

    @property
    def display(self) -> str:
        plain, eu = DISPLAY_NAMES.get(self.network, (self.network, f"EU-{self.network}"))
        return eu if self.mhex else plain

    def name(self, spatial_dims: int) -> str:
        """File stem of the run, e.g. ``unet_eu_2d_fold0``."""
        return f"{self.network}_{'eu' if self.mhex else 'plain'}_{spatial_dims}d_fold{self.fold}"


def case_id(item: dict) -> str:
    """The case id of a datalist item: its image file name without ``.nii.gz``, e.g. ``hippocampus_004``."""
    return Path(str(item["image"])).name.split(".nii")[0]


def study_splits(datalist: Sequence[dict], cfg: StudyConfig, fold: int) -> tuple[list[dict], list[dict]]:
    """
    The fold's (train, val) cases: :py:func:`kfold_split` with the study's seed, minus ``cfg.exclude`` from the
    training cases (they are never trained on; the validation fold is unchanged so folds stay comparable).
    """
    train, val = kfold_split(datalist, n_folds=cfg.n_folds, fold=fold, seed=cfg.seed)
    excluded = set(cfg.exclude)
    return [d for d in train if case_id(d) not in excluded], val


def build_network(network: str, mhex: bool, cfg: StudyConfig) -> torch.nn.Module:
    """
    The study's network: ``get_network(network, spatial_dims, in_channels, out_channels, channels, mhex)``, its
    MHEX+ heads initialised as ``cfg.head_init`` says.
    """
    p = get_task(cfg.task)
    net = get_network(
        network,
        spatial_dims=cfg.spatial_dims,
        in_channels=p.in_channels,
        out_channels=p.out_channels,
        channels=list(cfg.channels),
        mhex=mhex,
        **({} if cfg.residual_decoder is None else {"residual": cfg.residual_decoder}),
    )
    if cfg.head_init != "identity":  # the networks are built with identity heads
        for head in net.heads or ():
            head.reset_parameters(cfg.head_init)
    return net


def count_parameters(net: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def case_dice(logits: torch.Tensor, label: torch.Tensor) -> list[float]:
    """
    Dice per foreground class of one case: argmax of ``logits`` (1, K, *S) against the class map ``label``
    (1, 1, *S), MONAI ``DiceMetric(include_background=False)``; a class absent from both gives 1.0.

    Returns:
        K - 1 floats, classes 1 .. K-1.
    """
    k = logits.shape[1]
    pred = one_hot(logits.argmax(1, keepdim=True), num_classes=k)
    gt = one_hot(label.long(), num_classes=k)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    return [float(v) for v in metric(pred, gt)[0]]


@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    data: Sequence[dict] | torch.utils.data.Dataset,
    cfg: StudyConfig,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> dict[str, list[float]]:
    """
    Whole-volume Dice per case with the task's inferer (sliding window in 3D, per-slice in 2D).

    Args:
        net: the network (put in eval mode here).
        data: datalist items (image/label paths) or a dataset already giving the "val" transforms' output.
        cfg: the study (task, dims, patch size, device).
        progress: optional iterator wrapper (e.g. tqdm).

    Returns:
        case id -> Dice per foreground class.
    """
    if not isinstance(data, torch.utils.data.Dataset):
        data = Dataset(list(data), transform=get_transforms(cfg.task, "val"))
    inferer = get_inferer(cfg.task, spatial_dims=cfg.spatial_dims, roi_size=cfg.patch_size)
    device = torch.device(cfg.device)
    dtype = cfg.autocast_dtype()
    net.eval()
    out: dict[str, list[float]] = {}
    indices = range(len(data))
    for i in progress(indices) if progress else indices:
        item = data[i]
        image = item["image"].unsqueeze(0).to(device)
        with autocast(dtype, device):
            logits = final_output(inferer(image, net)).float()
        name = case_id({"image": item["image"].meta.get("filename_or_obj", f"case_{i}")})
        out[name] = case_dice(logits.cpu(), item["label"].unsqueeze(0))
    return out


def _mean_dice(per_case: dict[str, list[float]]) -> float:
    return float(np.mean([np.mean(v) for v in per_case.values()])) if per_case else float("nan")


def _atomic_json(obj: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _batches(loader: DataLoader) -> Iterator[dict]:
    while True:  # the budget is in steps, not epochs
        yield from loader


def _anneal(opt: torch.optim.Optimizer, st: dict, cfg: StudyConfig) -> None:
    """
    Set the learning rate of step ``st["step"]`` of the cosine phase (the rate at its start is kept in ``st``); each
    parameter group keeps its ``lr_scale`` relative to the first (the heads' ``head_lr``).
    """
    k = st["step"] - (cfg.max_iters - cfg.anneal_steps)
    if k == 0 or "anneal_lr0" not in st:  # a phase starts from the rate reached so far
        st["anneal_lr0"] = opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_scale", 1.0)
    for group in opt.param_groups:
        rate = 0.5 * st["anneal_lr0"] * (1.0 + math.cos(math.pi * k / cfg.anneal_steps))
        group["lr"] = rate * group.get("lr_scale", 1.0)


def label_map_dice(pred, gt, num_classes: int) -> list[float]:
    """
    Dice per foreground class 1 .. ``num_classes`` - 1 of two class maps of one shape (numpy arrays or tensors),
    ``2 |P & G| / (|P| + |G|)`` over all their voxels (1.0 where a class is absent from both).
    """
    out = []
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        denom = int(p.sum()) + int(g.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom)
    return out


def batch_class_dice(logits: torch.Tensor, label: torch.Tensor) -> list[float]:
    """
    Dice per foreground class of a whole batch taken as one region: argmax of ``logits`` (B, K, *S) against the
    class map ``label`` (B, 1, *S) (:py:func:`label_map_dice`). Cheap enough to log every head at every step.
    """
    return label_map_dice(logits.argmax(1), label[:, 0].long(), logits.shape[1])


def train_run(
    spec: RunSpec,
    cfg: StudyConfig,
    train_cases: Sequence[dict],
    val_cases: Sequence[dict],
    state_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    max_seconds: float | None = None,
    on_timeout: str = "pause",
    progress: bool = False,
) -> dict:
    """
    Train one network on ``train_cases`` with the study's recipe, validating on ``val_cases``.

    Args:
        spec: which network, plain/EU, fold.
        cfg: the study configuration.
        train_cases, val_cases: datalist items (image/label paths).
        state_path: where to keep the resumable state (weights, optimiser, scheduler, step, history, best
            weights); an existing file is resumed from.
        log: progress messages.
        max_seconds: training-time budget of this call.
        on_timeout: what ``max_seconds`` does: "pause" saves the state to be resumed later (the result then has
            ``"finished": False``); "finish" validates the weights of the last step and ends the run there, as if
            ``max_iters`` had been reached.
        progress: show a progress bar over the steps (tqdm).

    Returns:
        a JSON-able dict: ``per_case`` (validation case -> Dice per class, best weights), ``mean_dice``,
        ``history`` (step, val mean Dice, lr, seconds so far, per-class and per-head Dice), ``best_step``,
        ``steps``, ``seconds`` (training + validation time over all sessions), ``params``, ``finished``,
        ``precision``; and, not JSON-able, ``"best_state"`` (the best state dict).
    """
    device = torch.device(cfg.device)
    set_determinism(seed=cfg.seed + spec.fold)
    net = build_network(spec.network, spec.mhex, cfg)
    net = net.to(device, memory_format=memory_format(cfg.spatial_dims, cfg.channels_last))
    deep = cfg.deep_supervision and spec.mhex
    loss_fn = get_loss(cfg.loss, deep_supervision=deep, weight_mode=cfg.ds_weight_mode)
    opt = torch.optim.Adam(param_groups(net, cfg.learning_rate, cfg.heads_lr() if spec.mhex else 1.0))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience)
    st = {"step": 0, "history": [], "best": -1.0, "best_step": 0, "best_state": None, "seconds": 0.0, "stale": 0}
    st["best_per_case"] = {}
    state_path = Path(state_path) if state_path else None
    if state_path and state_path.is_file():
        saved = torch.load(state_path, map_location=device, weights_only=True)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        st.update(saved["run"])
        st["best_state"] = saved["best_state"]
        log(f"{spec.name(cfg.spatial_dims)}: resumed at step {st['step']}")

    train_tf = get_transforms(cfg.task, "train", cfg.spatial_dims, cfg.patch_size, num_samples=cfg.num_samples)
    # The deterministic prefix (load, resample, normalise) is cached; crops and augmentation stay random.
    train_ds = CacheDataset(list(train_cases), transform=train_tf, num_workers=0, progress=False)
    val_ds = CacheDataset(list(val_cases), transform=get_transforms(cfg.task, "val"), num_workers=0, progress=False)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=0)
    dtype = cfg.autocast_dtype()
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)  # bfloat16 needs no loss scaling

    def save() -> None:
        if state_path:
            run = {k: v for k, v in st.items() if k != "best_state"}
            atomic_torch_save(
                {
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "run": run,
                    "best_state": st["best_state"],
                },
                state_path,
            )

    def out_of_time() -> bool:
        return max_seconds is not None and time.time() - t0 > max_seconds

    batches = _batches(loader)
    bar = tqdm(total=cfg.max_iters, initial=st["step"], desc=spec.name(cfg.spatial_dims), disable=not progress)
    start = t0 = time.time()
    finished = True
    head_dice: list[list[list[float]]] = []  # per step since the last validation: per output level, per class
    while st["step"] < cfg.max_iters:
        if out_of_time():
            finished = on_timeout == "finish"
            if finished:
                log(f"{spec.name(cfg.spatial_dims)}: time budget reached at step {st['step']}, finishing")
            break
        annealing = st["step"] >= cfg.max_iters - cfg.anneal_steps
        if annealing:
            _anneal(opt, st, cfg)
        net.train()
        batch = next(batches)
        x, y = batch["image"].to(device), batch["label"].to(device)
        loss_fn.head_scale = ds_warmup_scale(st["step"] + 1, cfg.ds_warmup)
        with autocast(dtype, device):
            out = net(x)
        out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
        loss = loss_fn(out, y)
        with torch.no_grad():
            head_dice.append([batch_class_dice(o, y) for o in (out if isinstance(out, list) else [out])])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        st["step"] += 1
        bar.update()
        if st["step"] % cfg.val_interval == 0 or st["step"] == cfg.max_iters or out_of_time():
            per_case = evaluate(net, val_ds, cfg)
            dice = _mean_dice(per_case)
            if not annealing:
                sched.step(dice)
            lr = opt.param_groups[0]["lr"]
            st["history"].append(
                {
                    "step": st["step"],
                    "val_mean_dice": dice,
                    "lr": lr,
                    "loss": float(loss.detach()),
                    # Diagnostics of the learning curves: validation Dice per class, and the training-batch Dice of
                    # the final output and every head (shallowest first) per class, averaged since the last one.
                    "val_class_dice": np.mean(list(per_case.values()), axis=0).round(4).tolist(),
                    "train_head_dice": np.mean(head_dice, axis=0).round(4).tolist() if head_dice else [],
                    # each head's Conv1 distance from its identity start, deepest head first
                    "conv1_drift": [round(h.identity_drift(), 4) for h in net.heads or ()],
                }
            )
            head_dice.clear()
            if dice > st["best"]:
                st.update(best=dice, best_step=st["step"], stale=0, best_per_case=per_case)
                st["best_state"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            else:
                st["stale"] += 1
            st["seconds"] += time.time() - start
            st["history"][-1]["seconds"] = round(st["seconds"], 1)  # training + validation time so far
            start = time.time()
            log(
                f"{spec.name(cfg.spatial_dims)}: step {st['step']}/{cfg.max_iters} loss {float(loss.detach()):.4f} "
                f"val mean Dice {dice:.4f} (best {st['best']:.4f} @ {st['best_step']}) lr {lr:.2g} "
                f"{st['seconds']:.0f} s"
            )
            save()
            if cfg.stop_at_dice is not None and dice >= cfg.stop_at_dice:
                log(f"{spec.name(cfg.spatial_dims)}: validation mean Dice {dice:.4f} reached {cfg.stop_at_dice}, done")
                break
            if cfg.early_stop and st["stale"] >= cfg.early_stop:
                log(f"{spec.name(cfg.spatial_dims)}: early stop at step {st['step']}")
                break
    bar.close()
    st["seconds"] += time.time() - start
    save()  # also after "finish" at a time budget: a later call with a larger budget continues from here
    per_case = st["best_per_case"]
    if finished and st["best_state"] is None:  # budget spent before any validation: the last weights count
        st["best_state"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        per_case = evaluate(net, val_ds, cfg)
        st["history"].append({"step": st["step"], "val_mean_dice": _mean_dice(per_case)})
        st["best_step"] = st["step"]
    return {
        "network": spec.network,
        "display": spec.display,
        "mhex": spec.mhex,
        "fold": spec.fold,
        "spatial_dims": cfg.spatial_dims,
        "params": count_parameters(net),
        "per_case": per_case,
        "mean_dice": _mean_dice(per_case),
        "history": st["history"],
        "best_step": st["best_step"],
        "steps": st["step"],
        "seconds": st["seconds"],
        "n_train": len(train_cases),
        "n_val": len(val_cases),
        "finished": finished,
        "precision": precision_name(dtype),
        "best_state": st["best_state"],
    }


def run_study(
    cfg: StudyConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    max_seconds: float | None = None,
    keep_weights: bool = False,
    progress: bool = False,
) -> list[dict]:
    """
    Run (or resume) every (network, variant, fold) of ``cfg`` on the MSD task in ``data_dir``.

    Finished runs (``<out>/raw/<run>.json`` present with the same recipe) are skipped; an interrupted run
    continues from ``<out>/state/<run>.pt``. One failing run is logged and the others still run.

    Args:
        cfg: the study configuration.
        data_dir: MSD task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        out_dir: results folder.
        log: progress messages.
        max_seconds: overall training-time budget for this call; runs left over resume on the next call.
        keep_weights: also write the best weights of each run to ``<out>/weights/<run>.pt`` (a bare state dict).
        progress: progress bars over each run's steps.

    Returns:
        the finished runs' result dicts (as in the JSON files).
    """
    out = Path(out_dir)
    datalist = msd_datalist(data_dir)
    results = []
    deadline = None if max_seconds is None else time.time() + max_seconds
    for fold in cfg.fold_list():
        train, val = study_splits(datalist, cfg, fold)
        for network in cfg.networks:
            for variant in cfg.variants:
                spec = RunSpec(network, variant == "eu", fold)
                name = spec.name(cfg.spatial_dims)
                raw = out / "raw" / f"{name}.json"
                if raw.is_file():
                    done = json.loads(raw.read_text())
                    if done.get("recipe") == json.loads(json.dumps(cfg.recipe(spec.mhex))):  # tuples stored as lists
                        log(f"{name}: done, skipped")
                        results.append(done)
                        continue
                    log(f"{name}: {raw} has another recipe, rerunning")
                left = None if deadline is None else deadline - time.time()
                if left is not None and left <= 0:
                    log(f"{name}: time budget spent, left for the next call")
                    continue
                try:
                    res = train_run(spec, cfg, train, val, out / "state" / f"{name}.pt", log, left, progress=progress)
                except Exception as e:  # one broken run must not lose the others
                    log(f"error: {name} failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
                    continue
                best_state = res.pop("best_state")
                if not res["finished"]:
                    log(f"{name}: stopped at step {res['steps']} (time budget), resumes on the next call")
                    continue
                res.update(
                    recipe=cfg.recipe(spec.mhex),
                    machine=machine_description(cfg.device),
                    date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                )
                if keep_weights:
                    atomic_torch_save(best_state, out / "weights" / f"{name}.pt")
                _atomic_json(res, raw)
                log(f"{name}: mean Dice {res['mean_dice']:.4f} in {res['seconds']:.0f} s")
                results.append(res)
    return results


def machine_description(device: str = "cpu") -> str:
    """A one-line description of where a run ran (CPU model / GPU name, threads)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU"
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores shared with other jobs"


def load_results(out_dir: str | Path) -> list[dict]:
    """Every finished run's JSON under ``<out>/raw``."""
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("raw/*.json"))]


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """
    Paired comparison of ``b`` against ``a`` (e.g. EU vs plain on the same cases): mean difference ``b - a`` and
    the two-sided Wilcoxon signed-rank p-value (``nan`` below 2 pairs or when all differences are 0).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_test needs equal-length samples, got {a.shape} and {b.shape}.")
    d = b - a
    p = float("nan")
    if d.size >= 2 and np.any(d != 0):
        p = float(stats.wilcoxon(b, a).pvalue)
    return {"diff": float(d.mean()) if d.size else float("nan"), "p": p, "n": int(d.size)}


def _fold_dice(run: dict) -> np.ndarray:
    """Mean over the fold's cases of Dice per class; returns (K-1,)."""
    return np.mean(np.asarray(list(run["per_case"].values()), dtype=float), axis=0)


def summarize(results: Sequence[dict], class_names: Sequence[str] = ("anterior", "posterior")) -> list[dict]:
    """
    Table rows, one per (architecture, variant, dims): params, Dice mean ± std over folds per class and their
    mean, wall time; EU rows add the paired difference to their plain baseline over the validation cases of the
    folds both ran (Wilcoxon signed-rank on per-case mean Dice).

    Args:
        results: run dicts from :py:func:`load_results` / :py:func:`run_study`.
        class_names: names of the foreground classes, in order.

    Returns:
        dicts with keys network, display, mhex, spatial_dims, params, folds, dice (class -> (mean, std)),
        mean (mean, std), seconds (mean over folds), and for EU rows ``vs_plain`` (diff, p, n) or None.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["network"], r["spatial_dims"], r["mhex"]), []).append(r)
    rows = []
    order = list(NETWORKS)
    for (network, dims, mhex), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]) if kv[0][0] in order else 99, kv[0][2])
    ):
        runs = sorted(runs, key=lambda r: r["fold"])
        per_fold = np.stack([_fold_dice(r) for r in runs])  # (folds, K-1)
        means = per_fold.mean(axis=1)
        row = {
            "network": network,
            "display": runs[0]["display"],
            "mhex": mhex,
            "spatial_dims": dims,
            "params": runs[0]["params"],
            "folds": [r["fold"] for r in runs],
            "dice": {c: (float(per_fold[:, i].mean()), float(per_fold[:, i].std())) for i, c in enumerate(class_names)},
            "mean": (float(means.mean()), float(means.std())),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
            "vs_plain": None,
        }
        if mhex and (network, dims, False) in groups:
            plain = {r["fold"]: r for r in groups[(network, dims, False)]}
            a, b = [], []
            for r in runs:
                if r["fold"] in plain:
                    for case, dice in r["per_case"].items():
                        if case in plain[r["fold"]]["per_case"]:
                            a.append(float(np.mean(plain[r["fold"]]["per_case"][case])))
                            b.append(float(np.mean(dice)))
            row["vs_plain"] = paired_test(a, b)
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table of :py:func:`summarize` rows in the paper's form (Dice in %, mean ± std over folds)."""
    if not rows:
        return "(no finished runs)"
    classes = list(rows[0]["dice"])
    head = ["network", "dims", "params (M)", "folds", *[f"Dice {c} (%)" for c in classes], "Dice mean (%)"]
    head += ["EU − plain (pp, p)", "time / fold (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["display"], f"{r['spatial_dims']}D", f"{r['params'] / 1e6:.3f}", ",".join(map(str, r["folds"]))]
        cells += [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in (r["dice"][c] for c in classes)]
        cells.append(f"{100 * r['mean'][0]:.2f} ± {100 * r['mean'][1]:.2f}")
        vs = r["vs_plain"]
        cells.append("" if not vs else f"{100 * vs['diff']:+.2f} (p={vs['p']:.2g}, n={vs['n']})")
        cells.append(f"{r['seconds'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_overrides(cfg: StudyConfig, **kwargs) -> StudyConfig:
    """``cfg`` with some fields replaced (``None`` values ignored), e.g. from command-line flags."""
    return replace(cfg, **{k: v for k, v in kwargs.items() if v is not None})


def val_dice_at(run: dict, step: int) -> float | None:
    """The validation mean Dice a run recorded at ``step`` (None if it did not validate there)."""
    return next((h["val_mean_dice"] for h in run["history"] if h["step"] == step), None)


def seconds_to_reach(run: dict, dice: float) -> float | None:
    """Training + validation seconds until the run's validation mean Dice first reached ``dice`` (None: never)."""
    return next((h.get("seconds") for h in run["history"] if h["val_mean_dice"] >= dice), None)


def steps_to_reach(run: dict, dice: float) -> int | None:
    """The first validation step at which the run's validation mean Dice reached ``dice`` (None: never)."""
    return next((h["step"] for h in run["history"] if h["val_mean_dice"] >= dice), None)


def format_reach_table(runs: dict[str, Sequence[dict]], dice: float) -> str:
    """
    A Markdown table of how long each run took to reach validation mean Dice ``dice``: steps, training +
    validation minutes, the run's precision and heads' rate, its best Dice, and its heads' Conv1 drift from the
    identity at the end (``MHEXPlus.identity_drift``, deepest head first; empty for runs recorded before it).
    """
    head = ["run", "fold", "precision", "heads' lr", f"steps to {dice}", f"minutes to {dice}", "best Dice (step)"]
    head.append("Conv1 drift at the end")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, group in runs.items():
        for r in group:
            step, sec = steps_to_reach(r, dice), seconds_to_reach(r, dice)
            drift = r["history"][-1].get("conv1_drift") if r["history"] else None
            cells = [label, str(r["fold"]), r.get("precision", "fp32"), str(r["recipe"].get("head_lr", 1.0))]
            cells += ["not reached" if step is None else str(step), "" if sec is None else f"{sec / 60:.1f}"]
            cells.append(f"{r['mean_dice']:.4f} ({r['best_step']})")
            cells.append(", ".join(f"{d:.3f}" for d in drift) if drift else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slow_starts(runs: Sequence[dict], step: int = 100, below: float = 0.4) -> tuple[int, int]:
    """(runs whose validation mean Dice at ``step`` was below ``below``, runs that validated at ``step``)."""
    at = [d for d in (val_dice_at(r, step) for r in runs) if d is not None]
    return sum(d < below for d in at), len(at)


def ablation_rows(plain: Sequence[dict], variants: dict[str, Sequence[dict]], step: int = 100) -> list[dict]:
    """
    One row per recipe variant of the EU network against one set of plain runs (same architecture, folds and
    base recipe): mean Dice ± std over folds, the slow-start count at ``step`` and the paired EU − plain test
    over the validation cases of the folds both ran (as :py:func:`summarize` computes it).

    Args:
        plain: the plain network's runs (one per fold).
        variants: name -> that variant's EU runs.
        step: where the slow start is counted (validation mean Dice < 0.4).

    Returns:
        dicts with keys name, mhex, folds, mean (mean, std), slow (count, runs), vs_plain (diff, p, n) or None.
    """
    rows = []
    for name, runs in [("plain", plain), *variants.items()]:
        together = list(plain) if name == "plain" else [*plain, *runs]
        summary = [r for r in summarize(together) if r["mhex"] == (name != "plain")]
        if not summary:
            continue
        row = summary[0]
        rows.append(
            {
                "name": name,
                "display": row["display"],
                "spatial_dims": row["spatial_dims"],
                "folds": row["folds"],
                "mean": row["mean"],
                "slow": slow_starts(runs, step),
                "at_step": class_dice_at(plain if name == "plain" else runs, step),
                "vs_plain": row["vs_plain"],
            }
        )
    return rows


def class_dice_at(runs: Sequence[dict], step: int) -> list[float] | None:
    """Validation Dice per class at ``step``, mean over the runs that recorded it there (None: none did)."""
    at = [h["val_class_dice"] for r in runs for h in r["history"] if h["step"] == step and "val_class_dice" in h]
    return np.mean(at, axis=0).tolist() if at else None


def load_ablation(manifest: str | Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """
    The runs of an ablation kept as a manifest: a JSON file ``{"network": ..., "spatial_dims": ...,
    "plain": folder, "variants": [[name, folder], ...]}`` with folders relative to the file. Returns the plain runs
    and, per variant in order, its EU runs (both of that network and dimensionality).
    """
    path = Path(manifest)
    spec = json.loads(path.read_text())

    def runs(folder: str, mhex: bool) -> list[dict]:
        found = load_results(path.parent / folder)
        return [
            r
            for r in found
            if r["mhex"] == mhex and r["network"] == spec["network"] and r["spatial_dims"] == spec["spatial_dims"]
        ]

    return runs(spec["plain"], False), {name: runs(folder, True) for name, folder in spec["variants"]}


def format_ablation_table(rows: Sequence[dict], step: int = 100) -> str:
    """A Markdown table of :py:func:`ablation_rows` (Dice in %)."""
    head = ["recipe", "network", "folds", "Dice mean (%)", f"Dice per class at step {step} (%)"]
    head += [f"runs < 0.4 at step {step}", "EU − plain (pp, p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vs = r["vs_plain"]
        cells = [r["name"], f"{r['display']} {r['spatial_dims']}D", ",".join(map(str, r["folds"]))]
        cells.append(f"{100 * r['mean'][0]:.2f} ± {100 * r['mean'][1]:.2f}")
        cells.append(" / ".join(f"{100 * d:.1f}" for d in r["at_step"]) if r.get("at_step") else "")
        cells.append(f"{r['slow'][0]}/{r['slow'][1]}")
        cells.append("" if not vs else f"{100 * vs['diff']:+.2f} (p={vs['p']:.2g}, n={vs['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
