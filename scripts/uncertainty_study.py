"""
Explanations and uncertainty side by side on real MSD Task04 hippocampus MRI (paper 000 secs. 3.3, 3.5, 4.3, 4.4).

Trains (or loads from ``--cache-dir``) five 3D EU-Nets that differ only in their seed, all with dropout 0.1:

- member 0 is *the* model: its prediction, MHEX+ CAM, Seg-Grad-CAM, collaboration gradient (fast, and exact on a
  pixel sample), softmax entropy, MC dropout (its dropout layers sampled T times) and flip TTA;
- members 0-4 are the deep ensemble (entropy and variance, paper sec. 3.5): the ensemble a user would deploy
  instead of the single model, so it contains it. Training them with dropout lets one training run serve MC dropout
  too, and keeps every single-model method on the same network.

On a fixed validation split (fold 0 of 5, ``kfold_split(seed=0)``) it computes every map per volume (whole-volume
forward passes: the volumes, ~35x50x36, fit the network in one piece), the agreement metrics of paper Table 2, the
usefulness metrics (AUROC/AUPRC/UEO for the model's own errors, image-level Spearman), and writes
``docs/uncertainty.md`` plus figures under ``docs/figures/``.

Rerun (about 20-30 minutes on 2 busy CPU cores; models are cached under runs/uncertainty_study/)::

    python scripts/uncertainty_study.py

Smoke run (tiny models, 3 training / 2 validation cases, seconds)::

    python scripts/uncertainty_study.py --quick --docs-dir /tmp/docs --cache-dir /tmp/cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.metrics import compute_dice
from monai.transforms import Compose, Randomizable
from monai.utils import set_determinism

from eunets_monai.data.datalists import kfold_split, msd_datalist
from eunets_monai.data.presets import get_transforms
from eunets_monai.engine.losses import get_loss
from eunets_monai.evaluation.metrics import (
    auroc,
    image_level_spearman,
    map_agreement,
    pearson,
    uncertainty_usefulness,
)
from eunets_monai.explain.cam import mhex_cam
from eunets_monai.explain.gradcam import SegGradCAM
from eunets_monai.networks.nets.base import EUNetBase
from eunets_monai.networks.nets.unet import EUNet
from eunets_monai.uncertainty.baselines import deep_ensemble, flip_tta, mc_dropout, softmax_entropy
from eunets_monai.uncertainty.collaboration import collaboration_gradient

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "Task04_Hippocampus"
NUM_CLASSES = 3  # background, anterior, posterior hippocampus

# Uncertainty methods, in table order: name -> (prediction it belongs to, description).
METHODS = {
    "collab_fast": ("single", "collaboration gradient, fast mode (1 forward + L backward)"),
    "softmax_entropy": ("single", "softmax entropy of the single model (free)"),
    "mc_entropy": ("mc", "MC dropout, predictive entropy"),
    "mc_variance": ("mc", "MC dropout, probability variance"),
    "tta_entropy": ("tta", "flip TTA (8 flips), predictive entropy"),
    "tta_variance": ("tta", "flip TTA (8 flips), probability variance"),
    "ens_entropy": ("ensemble", "deep ensemble, predictive entropy"),
    "ens_variance": ("ensemble", "deep ensemble, probability variance"),
}
# Table 2 analogue: (map, reference map).
AGREEMENT_PAIRS = [
    ("collab_fast", "ens_entropy"),
    ("collab_fast", "ens_variance"),
    ("softmax_entropy", "ens_entropy"),
    ("softmax_entropy", "ens_variance"),
    ("mc_entropy", "ens_entropy"),
    ("tta_entropy", "ens_entropy"),
]
TOP_Q = 0.1  # each map is binarised at its own top 10% voxels for IoU/Dice
MIN_USEFUL_DICE = 0.5  # below it the report says the models are undertrained


@dataclass(frozen=True)
class StudyConfig:
    """Everything that changes the trained models or the numbers (hashed into the model cache key)."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    dropout: float = 0.1
    members: int = 5
    iterations: int = 1500
    batch_volumes: int = 2
    samples_per_volume: int = 1
    patch: tuple[int, int, int] = (24, 24, 24)
    lr: float = 3e-3
    loss: str = "dicece"
    train_cases: int | None = None  # None: the whole training split
    val_cases: int | None = 20  # the first N of the validation fold (keeps the CPU run short); None: all of it
    mc_samples: int = 10
    exact_cases: int = 2
    exact_pixels: int = 48
    n_folds: int = 5
    fold: int = 0
    seed: int = 0
    figure_cases: int = 2

    def model_key(self) -> str:
        keys = ("channels", "dropout", "iterations", "batch_volumes", "samples_per_volume", "patch", "lr", "loss")
        keys += ("train_cases", "n_folds", "fold", "seed")
        text = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


FULL = StudyConfig()
QUICK = StudyConfig(
    channels=(4, 8, 16),
    members=2,
    iterations=2,
    batch_volumes=1,
    samples_per_volume=1,
    patch=(24, 24, 24),
    train_cases=3,
    val_cases=2,
    mc_samples=2,
    exact_cases=1,
    exact_pixels=6,
    figure_cases=1,
)


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------- data


def split_compose(tf: Compose) -> tuple[Compose, Compose]:
    """The deterministic prefix (load, reorient, normalise, pad) and the random rest of a training pipeline."""
    steps = list(tf.flatten().transforms)
    first_random = next((i for i, t in enumerate(steps) if isinstance(t, Randomizable)), len(steps))
    return Compose(steps[:first_random]), Compose(steps[first_random:])


def load_cases(items: Sequence[dict], transform: Callable, what: str) -> list[dict]:
    """Apply ``transform`` to each case; a bad case is reported in one line and skipped, the others are kept."""
    out = []
    for item in items:
        try:
            data = transform(item)
        except Exception as e:  # noqa: BLE001 - any failure of one case must not lose the others
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            log(f"skipping {what} case {item.get('image')}: {msg}")
            continue
        data["case"] = Path(str(item["image"])).name.replace(".nii.gz", "")
        out.append(data)
    if not out:
        raise RuntimeError(f"no usable {what} case among {len(items)}.")
    return out


# ------------------------------------------------------------------------------------------------- training


def build_net(cfg: StudyConfig) -> EUNet:
    return EUNet(3, 1, NUM_CLASSES, channels=cfg.channels, dropout=cfg.dropout)


def train_member(cfg: StudyConfig, seed: int, train_data: list[dict], sampler: Compose) -> EUNet:
    """Train one EU-Net (DiceCE with MHEX+ deep supervision) for ``cfg.iterations`` steps of random patches."""
    set_determinism(seed)
    sampler.set_random_state(seed=seed)
    torch.manual_seed(seed)
    net = build_net(cfg)
    loader = DataLoader(
        Dataset(train_data, sampler),
        batch_size=cfg.batch_volumes,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    loss_fn = get_loss(cfg.loss, deep_supervision=True)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    net.train()
    step, t0, running = 0, time.time(), []
    while step < cfg.iterations:
        for batch in loader:
            loss = loss_fn(net(batch["image"]), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running.append(loss.item())
            step += 1
            if step % 25 == 0 or step == cfg.iterations:
                log(f"  member seed {seed}: step {step}/{cfg.iterations} loss {np.mean(running[-25:]):.4f}")
            if step >= cfg.iterations:
                break
    set_determinism(None)
    log(f"  member seed {seed}: trained in {time.time() - t0:.0f} s")
    return net.eval()


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def get_members(cfg: StudyConfig, cache_dir: Path, train_items: Sequence[dict]) -> tuple[list[EUNet], float]:
    """Load the cached members of this config, training (and caching) the missing ones. Returns (nets, train s)."""
    folder = cache_dir / cfg.model_key()
    nets: list[EUNet | None] = []
    for m in range(cfg.members):
        path = folder / f"member{m}.pt"
        if path.is_file():
            net = build_net(cfg)
            try:
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"cached checkpoint {path} is unreadable ({type(e).__name__}); delete it.") from e
            log(f"loaded member {m} from {path}")
            nets.append(net.eval())
        else:
            nets.append(None)
    missing = [m for m, n in enumerate(nets) if n is None]
    t_train = 0.0
    if missing:
        prefix, sampler = split_compose(
            get_transforms(
                "hippocampus", "train", patch_size=cfg.patch, num_samples=cfg.samples_per_volume, augment=True
            )
        )
        log(f"loading {len(train_items)} training cases")
        train_data = load_cases(train_items, prefix, "training")
        t0 = time.time()
        for m in missing:
            log(f"training member {m} ({len(train_data)} cases, {cfg.iterations} steps)")
            nets[m] = train_member(cfg, cfg.seed + m, train_data, sampler)
            atomic_torch_save(nets[m].state_dict(), folder / f"member{m}.pt")
        t_train = time.time() - t0
        (folder / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return nets, t_train  # type: ignore[return-value]


# ------------------------------------------------------------------------------ exact collaboration gradient


def exact_collaboration_at(
    net: EUNetBase, x: torch.Tensor, pixels: torch.Tensor, label: torch.Tensor | None = None, chunk: int = 32
) -> torch.Tensor:
    """
    The exact per-pixel collaboration-gradient uncertainty (paper sec. 3.5) at chosen pixels of ONE image: for each
    flat output-grid index p, d CE_l(p) / d C1_l and d CE_l+1(p) / d C1_l straight from autograd w.r.t. the Conv1
    weight (batched over pixels), their cosines summed over the L-1 pairs, mapped to (L-1-U)/(2(L-1)). It uses the
    same choices as ``collaboration_gradient(mode="exact")`` (CE on the output grid, predicted label) and equals it
    at every pixel (tested); a full real volume in exact mode is far too slow on a CPU, so the study samples pixels.

    Args:
        net: an EU network in eval mode.
        x: (1, C, *S).
        pixels: (n,) flat indices into *S.
        label: optional (1, 1, *S) label map; default the model's prediction.
        chunk: pixels per batched autograd call.

    Returns:
        (n,) uncertainty in [0, 1].
    """
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    weights = [h.conv1.weight for h in net.heads]
    keep = {id(w) for w in weights}
    try:
        for p in params:
            p.requires_grad_(id(p) in keep)
        with torch.enable_grad():
            out = net.forward_explained(x)
            y = out.logits.detach().argmax(1) if label is None else label[:, 0].long()
            preds = [out.to_output_grid(h.prediction) for h in out.heads]
            losses = [F.cross_entropy(p, y, reduction="none").flatten() for p in preds]
            pairs = len(losses) - 1
            total = torch.zeros(len(pixels), dtype=x.dtype)
            for start in range(0, len(pixels), chunk):
                idx = pixels[start : start + chunk]
                onehot = torch.zeros(len(idx), losses[0].numel(), dtype=x.dtype)
                onehot[torch.arange(len(idx)), idx] = 1
                for l in range(pairs):
                    g = [
                        torch.autograd.grad(losses[k], weights[l], onehot, retain_graph=True, is_grads_batched=True)[0]
                        for k in (l, l + 1)
                    ]
                    a, b = g[0].flatten(1), g[1].flatten(1)
                    total[start : start + len(idx)] += (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-20)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return ((pairs - total) / (2 * pairs)).clamp(0.0, 1.0).detach()


def sample_pixels(pred: np.ndarray, label: np.ndarray, n: int, seed: int) -> np.ndarray:
    """
    ``n`` flat indices: half from where anything happens (predicted or true foreground, or an error), half from
    the rest, so the sample contains both easy and hard voxels; without replacement, seeded.
    """
    rng = np.random.default_rng(seed)
    busy = ((pred > 0) | (label > 0) | (pred != label)).ravel()
    chosen = []
    for pool, k in ((np.flatnonzero(busy), n // 2), (np.flatnonzero(~busy), n - n // 2)):
        chosen.append(rng.choice(pool, size=min(k, pool.size), replace=False))
    return np.sort(np.concatenate(chosen))


# ---------------------------------------------------------------------------------------------- evaluation


def fg_dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Mean Dice over the foreground classes of two (1, 1, *S) class maps (MONAI; empty vs empty = 1)."""
    p = F.one_hot(pred[:, 0].long(), NUM_CLASSES).movedim(-1, 1)
    y = F.one_hot(label[:, 0].long(), NUM_CLASSES).movedim(-1, 1)
    return float(compute_dice(p, y, include_background=False, ignore_empty=False).mean())


def timed(fn: Callable, times: dict, name: str):
    t0 = time.perf_counter()
    out = fn()
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0
    return out


def display_slice(label: np.ndarray) -> int:
    """Index along the last axis with the most foreground (the slice the figures show)."""
    return int(np.argmax((label > 0).sum(axis=(0, 1))))


def evaluate_case(cfg: StudyConfig, nets: list[EUNet], data: dict, times: dict, index: int) -> dict:
    """Every map of one validation volume and its metrics (maps kept only on the displayed slice)."""
    x = data["image"].as_tensor()[None] if hasattr(data["image"], "as_tensor") else data["image"][None]
    y = torch.as_tensor(data["label"])[None].long()
    net = nets[0]
    with torch.no_grad():
        out = timed(lambda: net.forward_explained(x), times, "forward + MHEX+ CAM")
        cam = timed(lambda: mhex_cam(out), times, "forward + MHEX+ CAM")
    gradcam = timed(lambda: SegGradCAM(net)(x), times, "Seg-Grad-CAM")
    probs = torch.softmax(out.logits, 1)
    maps = {
        "collab_fast": timed(lambda: collaboration_gradient(net, x, mode="fast"), times, "collab_fast"),
        "softmax_entropy": softmax_entropy(out.logits, normalize=True),
    }
    torch.manual_seed(cfg.seed + index)  # reproducible dropout masks
    mc = timed(lambda: mc_dropout(net, x, cfg.mc_samples, normalize=True), times, "MC dropout")
    tta = timed(lambda: flip_tta(net, x, normalize=True), times, "flip TTA")
    ens = timed(lambda: deep_ensemble(nets, x, normalize=True), times, "deep ensemble")
    maps.update(
        mc_entropy=mc.entropy,
        mc_variance=mc.variance,
        tta_entropy=tta.entropy,
        tta_variance=tta.variance,
        ens_entropy=ens.entropy,
        ens_variance=ens.variance,
    )
    preds = {
        "single": probs.argmax(1, keepdim=True),
        "mc": mc.probs.argmax(1, keepdim=True),
        "tta": tta.probs.argmax(1, keepdim=True),
        "ensemble": ens.probs.argmax(1, keepdim=True),
    }
    lab = y[0, 0].numpy()
    res: dict = {"case": data["case"], "dice": {k: fg_dice(p, y) for k, p in preds.items()}}
    res["usefulness"] = {
        name: uncertainty_usefulness(maps[name][0, 0], preds[src][0, 0], lab) for name, (src, _) in METHODS.items()
    }
    res["mean_uncertainty"] = {name: float(m.mean()) for name, m in maps.items()}
    res["agreement"] = {f"{a}|{b}": map_agreement(maps[a], maps[b], "top_q", TOP_Q) for a, b in AGREEMENT_PAIRS}
    res["cam"] = cam_stats(cam, gradcam, preds["single"])
    z = display_slice(lab)
    pred0 = preds["single"][0, 0].numpy()
    res["slice"] = {
        "z": z,
        "image": x[0, 0, ..., z].numpy(),
        "label": lab[..., z],
        "pred": pred0[..., z],
        "confidence": probs.max(1).values[0, ..., z].numpy(),
        "cam": cam[0, :, ..., z].numpy(),
        "gradcam": gradcam[0, :, ..., z].detach().numpy(),
        **{name: m[0, 0, ..., z].numpy() for name, m in maps.items()},
    }
    res["_full"] = (x, y, pred0, lab, maps["collab_fast"][0, 0].numpy())
    return res


def cam_stats(cam: torch.Tensor, gradcam: torch.Tensor, pred: torch.Tensor) -> dict:
    """Per foreground class: Pearson(CAM, Grad-CAM), and each map's share of its mass inside the predicted region."""
    out = {}
    for c in range(1, NUM_CLASSES):
        region = (pred[0, 0] == c).numpy()
        a, b = cam[0, c].numpy(), gradcam[0, c].detach().numpy()
        share = [float(m[region].sum() / m.sum()) if m.sum() > 0 else float("nan") for m in (a, b)]
        out[c] = {"pearson": pearson(a, b)[0], "cam_inside": share[0], "gradcam_inside": share[1]}
    return out


def exact_vs_fast(cfg: StudyConfig, net: EUNet, cases: list[dict], times: dict) -> dict:
    """Exact (sampled pixels) vs fast collaboration gradient on the first ``cfg.exact_cases`` volumes."""
    fast_all, exact_all, err_all, per_case = [], [], [], []
    for i, r in enumerate(cases[: cfg.exact_cases]):
        x, _, pred, lab, fast = r["_full"]
        pix = sample_pixels(pred, lab, cfg.exact_pixels, cfg.seed + i)
        t0 = time.perf_counter()
        exact = exact_collaboration_at(net, x, torch.as_tensor(pix))
        times["collab_exact (sampled)"] = times.get("collab_exact (sampled)", 0.0) + time.perf_counter() - t0
        f, e = fast.ravel()[pix], exact.numpy()
        err = (pred != lab).ravel()[pix].astype(float)
        fast_all.append(f), exact_all.append(e), err_all.append(err)
        per_case.append(pearson(f, e)[0])
    f, e, err = (np.concatenate(v) for v in (fast_all, exact_all, err_all))
    r, p = pearson(f, e)
    au_f, au_e = auroc(f, err), auroc(e, err)
    return {
        "pixels": int(f.size),
        "cases": len(fast_all),
        "pearson": r,
        "pearson_p": p,
        "pearson_per_case": per_case,
        "auroc_fast": au_f,
        "auroc_exact": au_e,
        "auroc_diff": au_f - au_e,
        "mean_abs_diff": float(np.abs(f - e).mean()),
        "seconds_per_pixel": times.get("collab_exact (sampled)", float("nan")) / max(f.size, 1),
    }


# ------------------------------------------------------------------------------------------------- report


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(v.size)


def fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s, _ = mean_std(values)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def summarise(results: list[dict]) -> dict:
    s: dict = {"dice": {k: mean_std([r["dice"][k] for r in results]) for k in results[0]["dice"]}}
    s["usefulness"] = {}
    for name, (src, _) in METHODS.items():
        keys = ("auroc", "auprc", "ueo", "error_rate")
        row = {k: mean_std([r["usefulness"][name][k] for r in results]) for k in keys}
        rho, p = image_level_spearman([r["mean_uncertainty"][name] for r in results], [r["dice"][src] for r in results])
        row["spearman"], row["spearman_p"] = rho, p
        s["usefulness"][name] = row
    s["agreement"] = {}
    for a, b in AGREEMENT_PAIRS:
        vals = [r["agreement"][f"{a}|{b}"] for r in results]
        row = {k: mean_std([v[k] for v in vals]) for k in ("iou", "dice", "pearson_r")}
        row["p_max"] = max((v["pearson_p"] for v in vals if not math.isnan(v["pearson_p"])), default=float("nan"))
        s["agreement"][f"{a}|{b}"] = row
    s["cam"] = {
        c: {k: mean_std([r["cam"][c][k] for r in results]) for k in ("pearson", "cam_inside", "gradcam_inside")}
        for c in range(1, NUM_CLASSES)
    }
    return s


def _ms(t: tuple) -> str:
    return "n/a" if math.isnan(t[0]) else f"{t[0]:.3f} ± {t[1]:.3f}"


def write_markdown(path: Path, cfg: StudyConfig, info: dict, s: dict, ex: dict, times: dict, figs: list[str]) -> None:
    n_val = info["n_val"]
    lines = [
        "# Explanations and uncertainty on real hippocampus MRI",
        "",
        "Generated by `scripts/uncertainty_study.py` (do not edit by hand). Rerun with:",
        "",
        "```bash",
        f"python scripts/uncertainty_study.py{' --quick' if info['quick'] else ''}",
        "```",
        "",
        f"Run: {info['date']}, wall time {info['wall_s'] / 60:.1f} min on {info['threads']} CPU thread(s) "
        f"(training {info['train_s'] / 60:.1f} min{'' if info['train_s'] else ': models loaded from the cache'}).",
        "",
        "## Setup",
        "",
        f"- Data: MSD Task04 hippocampus (MRI, 3 classes), `../shared/data/Task04_Hippocampus`; fold {cfg.fold} of "
        f"{cfg.n_folds} (`kfold_split(seed={cfg.seed})`) validates: {n_val} volumes evaluated"
        f"{'' if cfg.val_cases is None else f' (the first {cfg.val_cases} of the fold)'}, "
        f"{info['n_train']} training volumes.",
        f"- Models: {cfg.members} 3D EU-Nets, channels {cfg.channels}, dropout {cfg.dropout}, seeds "
        f"{cfg.seed}..{cfg.seed + cfg.members - 1}; each trained {cfg.iterations} Adam steps (lr {cfg.lr}) on "
        f"{cfg.batch_volumes}x{cfg.samples_per_volume} random {cfg.patch} patches, DiceCE + MHEX+ deep supervision, "
        "presets' augmentation. These are short CPU trainings (minutes each, not the paper's 50-epoch recipe) of "
        "small networks; the numbers describe these models, not converged or full-width ones.",
        "- The single model is member 0 (all single-model methods use it); the deep ensemble is members 0..N-1 "
        "(it contains the single model, as a deployed ensemble would). MC dropout samples member 0's dropout "
        f"(T = {cfg.mc_samples}, batch norm in eval); TTA averages all 8 flips, un-flipped.",
        "- All maps are in [0, 1]: entropy / log K, variance = mean over classes of "
        "(1/N) sum_m (P_m - P)^2 divided by its bound (K-1)/K^2; collaboration gradient "
        "(L-1-U)/(2(L-1)) with the model's own predicted label (see `eunets_monai/uncertainty/collaboration.py`).",
        "",
        "Segmentation (mean foreground Dice ± std over the validation volumes):",
        "",
        "| prediction | Dice |",
        "| --- | --- |",
    ]
    names = {"single": "single model (member 0)", "mc": "MC dropout mean", "tta": "TTA mean", "ensemble": "ensemble"}
    lines += [f"| {names[k]} | {_ms(v)} |" for k, v in s["dice"].items()]
    dice0 = s["dice"]["single"][0]
    if not dice0 >= MIN_USEFUL_DICE:
        lines += [
            "",
            f"**Warning: the models are undertrained (single-model Dice {dice0:.3f} < {MIN_USEFUL_DICE}).** With "
            "(almost) no foreground predicted, the errors are (almost) exactly the true hippocampus, so every number "
            "below measures how well a map outlines the hippocampus, not how well it flags a working model's "
            "mistakes. Do not draw conclusions from this run; rerun with more `--iterations` (or on a quieter "
            "machine / a GPU).",
        ]
    lines += [
        "",
        "## Agreement with the deep ensemble (as paper Table 2)",
        "",
        f"IoU and Dice of the two maps each binarised at its own top {TOP_Q:.0%} voxels (the maps live on different "
        "scales, so each gets its own cut), and Pearson's r over all voxels; mean ± std over volumes, and the largest "
        "per-volume p-value.",
        "",
        "For reference, the paper (MSD-Heart, 50 samples, four EU-Nets' maps aggregated) reports for MHEX+ vs "
        "ensemble entropy IoU 0.392, Dice 0.561, r 0.618 and vs ensemble variance IoU 0.323, Dice 0.485, r 0.565, "
        "without saying how the maps were thresholded; the rows below are one model on another data set.",
        "",
        "| map | vs | IoU | Dice | Pearson r | max p |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in s["agreement"].items():
        a, b = key.split("|")
        lines.append(
            f"| {a} | {b} | {_ms(row['iou'])} | {_ms(row['dice'])} | {_ms(row['pearson_r'])} | {row['p_max']:.1e} |"
        )
    lines += [
        "",
        "## Usefulness: does the map find the errors?",
        "",
        "Per volume, the voxels misclassified by the prediction the method belongs to (the single model's for the "
        "collaboration gradient and softmax entropy, the averaged prediction for MC dropout, TTA and the ensemble) "
        "are the positives. AUROC and AUPRC (average precision) of the uncertainty as a score for them, UEO = "
        "max over thresholds of Dice(uncertainty >= t, errors) (Jungo & Reyes 2019); mean ± std over volumes. "
        "Spearman: over volumes, mean uncertainty vs 1 - Dice. The AUPRC of a random map is the error rate.",
        "",
        "| method | AUROC | AUPRC | error rate | UEO | Spearman rho (p) | s / volume |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cost = method_seconds(times, n_val)
    for name, row in s["usefulness"].items():
        lines.append(
            f"| {name} | {_ms(row['auroc'])} | {_ms(row['auprc'])} | {_ms(row['error_rate'])} | {_ms(row['ueo'])} | "
            f"{row['spearman']:.3f} ({row['spearman_p']:.2g}) | {cost.get(name, float('nan')):.2f} |"
        )
    lines += ["", *verdict(s), ""]
    lines += [
        "## Fast vs exact collaboration gradient",
        "",
        f"The exact per-pixel definition needs 2(L-1) per-pixel gradients w.r.t. a Conv1 weight for every voxel; "
        f"on a CPU that is out of reach for whole volumes, so it is computed at {ex['pixels']} sampled voxels of "
        f"{ex['cases']} validation volumes (half where predicted/true foreground or errors are, half elsewhere; "
        "seeded) and compared with the fast map at the same voxels.",
        "",
        "| voxels | Pearson r (p) | per-volume r | AUROC fast | AUROC exact | AUROC fast - exact | mean abs diff | "
        "exact s / voxel |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {ex['pixels']} | {ex['pearson']:.3f} ({ex['pearson_p']:.2g}) | "
        f"{', '.join(f'{v:.3f}' for v in ex['pearson_per_case'])} | {ex['auroc_fast']:.3f} | "
        f"{ex['auroc_exact']:.3f} | {ex['auroc_diff']:+.3f} | {ex['mean_abs_diff']:.3f} | "
        f"{ex['seconds_per_pixel']:.3f} |",
        "",
        "AUROC here is for the single model's errors among the sampled voxels only (a stratified sample, so not "
        "comparable with the whole-volume AUROC above); the difference between the two modes is the point.",
        "",
        "## MHEX+ CAM vs Seg-Grad-CAM",
        "",
        "Per foreground class, on member 0: Pearson r between the two maps, and the share of each map's mass that "
        "falls inside the region predicted as that class (Grad-CAM targets exactly that region; the paper's claim "
        "is that MHEX+ also shows evidence outside it).",
        "",
        "| class | Pearson(CAM, Grad-CAM) | CAM mass inside | Grad-CAM mass inside | CAM s / vol | Grad-CAM s / vol |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    cls = {1: "anterior", 2: "posterior"}
    for c, row in s["cam"].items():
        lines.append(
            f"| {cls[int(c)]} | {_ms(row['pearson'])} | {_ms(row['cam_inside'])} | {_ms(row['gradcam_inside'])} | "
            f"{times['forward + MHEX+ CAM'] / n_val:.2f} | {times['Seg-Grad-CAM'] / n_val:.2f} |"
        )
    lines += [
        "",
        "(The CAM time includes the forward pass that also gives the prediction; Grad-CAM's includes its own.)",
        "",
        "## Figures",
        "",
    ]
    lines += [f"![{Path(f).stem}](figures/{Path(f).name})" for f in figs]
    lines += [
        "",
        "Explanations figure: image, ground truth, prediction, confidence (max softmax probability), MHEX+ CAM and "
        "Seg-Grad-CAM per foreground class (cf. paper Figs. 3-4). Uncertainty figure: the single model's errors, "
        "then every uncertainty map, each on its own colour range (cf. paper Figs. 3, 5). One axial slice (the "
        "one with the most hippocampus) of "
        "the worst- and the median-Dice validation volume.",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


def method_seconds(times: dict, n: int) -> dict:
    per = {k: v / n for k, v in times.items()}
    return {
        "collab_fast": per.get("collab_fast", float("nan")),
        "softmax_entropy": per.get("forward + MHEX+ CAM", float("nan")),
        "mc_entropy": per.get("MC dropout", float("nan")),
        "mc_variance": per.get("MC dropout", float("nan")),
        "tta_entropy": per.get("flip TTA", float("nan")),
        "tta_variance": per.get("flip TTA", float("nan")),
        "ens_entropy": per.get("deep ensemble", float("nan")),
        "ens_variance": per.get("deep ensemble", float("nan")),
    }


def verdict(s: dict) -> list[str]:
    """Plain sentences comparing the collaboration gradient with the baselines, from the numbers."""
    u = s["usefulness"]
    out = []
    for key, label in (("auroc", "AUROC"), ("auprc", "AUPRC"), ("ueo", "UEO")):
        cg = u["collab_fast"][key][0]
        better = [(n, r[key][0]) for n, r in u.items() if n != "collab_fast" and r[key][0] > cg]
        if better:
            best = max(better, key=lambda t: t[1])
            out.append(
                f"- {label}: the collaboration gradient ({cg:.3f}) loses to {len(better)} of {len(u) - 1} baselines; "
                f"best is {best[0]} ({best[1]:.3f})."
            )
        else:
            out.append(f"- {label}: the collaboration gradient ({cg:.3f}) is at least as good as every baseline.")
    rho = u["collab_fast"]["spearman"]
    rhos = [(r["spearman"], n) for n, r in u.items() if not math.isnan(r["spearman"])]
    best_rho = max(rhos, default=(math.nan, "n/a"))
    out.append(
        f"- Image level: Spearman rho between mean collaboration-gradient uncertainty and 1 - Dice is {rho:.3f} "
        f"(best: {best_rho[1]}, {best_rho[0]:.3f})."
    )
    se = u["softmax_entropy"]["auroc"][0]
    out.append(
        f"- Against the free baseline (softmax entropy of the same model, AUROC {se:.3f}) the collaboration gradient "
        f"is {'better' if u['collab_fast']['auroc'][0] > se else 'worse'} at finding the model's own errors."
    )
    return out


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------------------------------- figures


def make_figures(results: list[dict], fig_dir: Path, count: int) -> list[str]:
    """The explanations and uncertainty figures for the worst- and median-Dice volumes; returns the file paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(results)), key=lambda i: results[i]["dice"]["single"])
    picks = list(dict.fromkeys([order[0], order[len(order) // 2]]))[:count]
    cases = [results[i] for i in picks]
    expl = [
        ("image", "image", "gray"),
        ("ground truth", "label", "viridis"),
        ("prediction", "pred", "viridis"),
        ("confidence", "confidence", "magma"),
        ("MHEX+ CAM ant.", ("cam", 1), "jet"),
        ("MHEX+ CAM post.", ("cam", 2), "jet"),
        ("Grad-CAM ant.", ("gradcam", 1), "jet"),
        ("Grad-CAM post.", ("gradcam", 2), "jet"),
    ]
    unc = [("errors", "errors", "Reds")] + [(n.replace("_", " "), n, "inferno") for n in METHODS]
    paths = []
    for name, panels in (("explanations", expl), ("uncertainty", unc)):
        fig, axes = plt.subplots(len(cases), len(panels), figsize=(1.6 * len(panels), 2.0 * len(cases)), squeeze=False)
        for row, r in zip(axes, cases):
            sl = r["slice"]
            for ax, (title, key, cmap) in zip(row, panels):
                if key == "errors":
                    img = (sl["pred"] != sl["label"]).astype(float)
                elif isinstance(key, tuple):
                    img = sl[key[0]][key[1]]
                else:
                    img = sl[key]
                # class maps on 0..2, CAMs/confidence/errors on [0, 1]; image and uncertainty maps use their own range
                vmin, vmax = {"label": (0, 2), "pred": (0, 2)}.get(key, (0, 1))
                if key == "image" or key in METHODS:
                    vmin = vmax = None
                ax.imshow(np.rot90(img), cmap=cmap, vmin=vmin, vmax=vmax)
                ax.set_xticks([]), ax.set_yticks([])
                if ax is row[0]:
                    ax.set_ylabel(f"{r['case']}\nDice {r['dice']['single']:.2f}", fontsize=7)
                if r is cases[0]:
                    ax.set_title(title, fontsize=7)
        fig.tight_layout()
        path = fig_dir / f"uncertainty_study_{name}.png"
        fig_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=fig_dir, suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=110)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.remove(tmp)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models, 3 training / 2 validation cases (smoke test)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="MSD Task04_Hippocampus folder")
    p.add_argument("--docs-dir", type=Path, default=REPO / "docs", help="where uncertainty.md and figures/ go")
    p.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "uncertainty_study", help="trained models")
    p.add_argument("--val-cases", type=int, default=None, help="evaluate only the first N validation volumes")
    p.add_argument("--iterations", type=int, default=None, help="training steps per model")
    p.add_argument(
        "--from-results", type=Path, default=None, help="only rewrite uncertainty.md from a saved results.json"
    )
    return p.parse_args(argv)


def rewrite_report(results_json: Path, docs_dir: Path) -> dict:
    """Rewrite ``uncertainty.md`` from a saved ``results.json`` (figures are left as they are)."""
    try:
        saved = json.loads(results_json.read_text())
        cfg = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{results_json}: not a results.json written by this script ({type(e).__name__}).") from e
    figs = sorted(str(p) for p in (docs_dir / "figures").glob("uncertainty_study_*.png"))
    write_markdown(
        docs_dir / "uncertainty.md", cfg, saved["info"], saved["summary"], saved["exact_vs_fast"], saved["times"], figs
    )
    return saved


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_results is not None:
        return rewrite_report(args.from_results, args.docs_dir)
    cfg = QUICK if args.quick else FULL
    if args.val_cases is not None:
        cfg = replace(cfg, val_cases=args.val_cases)
    if args.iterations is not None:
        cfg = replace(cfg, iterations=args.iterations)
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    datalist = msd_datalist(args.data_dir)
    train_items, val_items = kfold_split(datalist, cfg.n_folds, cfg.fold, cfg.seed)
    train_items = train_items[: cfg.train_cases] if cfg.train_cases else train_items
    val_items = val_items[: cfg.val_cases] if cfg.val_cases else val_items
    nets, t_train = get_members(cfg, args.cache_dir, train_items)

    log(f"loading {len(val_items)} validation cases")
    val_data = load_cases(val_items, get_transforms("hippocampus", "val"), "validation")
    times: dict[str, float] = {}
    results = []
    for i, data in enumerate(val_data):
        try:
            results.append(evaluate_case(cfg, nets, data, times, i))
        except Exception as e:  # noqa: BLE001 - one bad volume must not lose the others
            log(f"case {data['case']}: evaluation failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
            continue
        r = results[-1]
        log(
            f"[{i + 1}/{len(val_data)}] {r['case']}: Dice {r['dice']['single']:.3f}, AUROC collab "
            f"{r['usefulness']['collab_fast']['auroc']:.3f} / entropy {r['usefulness']['softmax_entropy']['auroc']:.3f}"
        )
    if not results:
        raise RuntimeError("every validation case failed; see the messages above.")
    ex = exact_vs_fast(cfg, nets[0], results, times)
    summary = summarise(results)
    figs = make_figures(results, args.docs_dir / "figures", cfg.figure_cases)
    info = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": time.time() - t_start,
        "train_s": t_train,
        "threads": torch.get_num_threads(),
        "n_val": len(results),
        "n_train": len(train_items),
    }
    write_markdown(args.docs_dir / "uncertainty.md", cfg, info, summary, ex, times, figs)
    out = {"config": asdict(cfg), "info": info, "summary": summary, "exact_vs_fast": ex, "times": times}
    atomic_write_text(args.cache_dir / cfg.model_key() / "results.json", json.dumps(out, indent=1, default=str))
    log(f"wrote {args.docs_dir / 'uncertainty.md'} and {len(figs)} figures in {info['wall_s'] / 60:.1f} min")
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"uncertainty_study: {e}")
