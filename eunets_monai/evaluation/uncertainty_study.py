"""
Which uncertainty map finds a segmentation model's errors, and which per-case score finds its failed scans, on real
MSD Task04 hippocampus MRI (paper 000 secs. 3.3, 3.5, 4.3, 4.4). The logic behind ``scripts/uncertainty_study.py``.

Per cross-validation fold (``kfold_split(seed=0)``; folds given by ``folds``) it trains (or loads from the cache)
``members`` 3D EU-Nets that differ only in their seed, all with dropout 0.1:

- member 0 is *the* model: its prediction, MHEX+ CAM, Seg-Grad-CAM, the single-pass maps (softmax entropy, raw and
  temperature-scaled; the MHEX+ heads' mutual information; the collaboration gradient by sketch and summed modes,
  and exact at sampled voxels), MC dropout (its dropout layers sampled T times) and flip TTA;
- members 0..M-1 are the deep ensemble (entropy and variance, paper sec. 3.5).

On the first ``val_cases`` volumes of each fold's validation split it computes every map per volume (whole-volume
forward passes), voxel-level usefulness (AUROC / AUPRC / UEO for the model's own errors, and AUROC within bins of
equal softmax entropy: information beyond entropy), per-case triage scores (Spearman with 1 - Dice over all cases,
AUROC for failed cases), the exact collaboration gradient at sampled voxels against its sketch and summed
estimates, the agreement metrics of paper Table 2, and writes ``uncertainty.md`` plus figures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
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
from tqdm import tqdm

from eunets_monai.data.datalists import kfold_split, msd_datalist
from eunets_monai.data.presets import get_transforms
from eunets_monai.engine.losses import get_loss
from eunets_monai.evaluation.metrics import (
    auprc,
    auroc,
    image_level_spearman,
    map_agreement,
    pearson,
    stratified_auroc,
    uncertainty_usefulness,
)
from eunets_monai.explain.cam import mhex_cam
from eunets_monai.explain.gradcam import SegGradCAM
from eunets_monai.networks.nets.unet import EUNet
from eunets_monai.uncertainty.baselines import deep_ensemble, flip_tta, mc_dropout, softmax_entropy
from eunets_monai.uncertainty.collaboration import collaboration_gradient, collaboration_to_unit
from eunets_monai.uncertainty.single_pass import QUALITY_SCORE, case_quality, fit_temperature, heads_mutual_information
from eunets_monai.utils import atomic_torch_save, atomic_write_text

__all__ = ["StudyConfig", "FULL", "QUICK", "run_study", "rewrite_report", "METHODS", "SINGLE_PASS"]

NUM_CLASSES = 3  # background, anterior, posterior hippocampus

# Uncertainty maps, in table order: name -> (prediction it belongs to, description, timing key).
METHODS = {
    "softmax_entropy": ("single", "softmax entropy / log K (free)", "forward"),
    "entropy_ts": (
        "single",
        "softmax entropy of logits / T, T fitted on the other half of the fold's cases",
        "forward",
    ),
    "heads_mi": ("single", "MHEX+ heads' mutual information / log K (free)", "forward"),
    "collab_sketch": ("single", "collaboration gradient, sketch (Gaussian probes), paper orientation", "collab_sketch"),
    "collab_summed": ("single", "collaboration gradient, summed mode (the former 'fast')", "collab_summed"),
    "mc_entropy": ("mc", "MC dropout, predictive entropy", "MC dropout"),
    "mc_variance": ("mc", "MC dropout, probability variance", "MC dropout"),
    "tta_entropy": ("tta", "flip TTA (8 flips), predictive entropy", "flip TTA"),
    "tta_variance": ("tta", "flip TTA (8 flips), probability variance", "flip TTA"),
    "ens_entropy": ("ensemble", "deep ensemble, predictive entropy", "deep ensemble"),
    "ens_variance": ("ensemble", "deep ensemble, probability variance", "deep ensemble"),
}
SINGLE_PASS = ("softmax_entropy", "entropy_ts", "heads_mi", "collab_sketch")  # the candidates for the default
AGGREGATES = ("mean", "mean_in_structure", "expected_error_ratio")  # case_quality keys compared for triage
AGREEMENT_PAIRS = [
    ("heads_mi", "ens_entropy"),
    ("collab_sketch", "ens_entropy"),
    ("collab_summed", "ens_entropy"),
    ("softmax_entropy", "ens_entropy"),
    ("softmax_entropy", "ens_variance"),
    ("mc_entropy", "ens_entropy"),
]
TOP_Q = 0.1  # each map is binarised at its own top 10% voxels for IoU/Dice
MIN_USEFUL_DICE = 0.5  # below it the report says the models are undertrained


@dataclass(frozen=True)
class StudyConfig:
    """Everything that changes the trained models or the numbers (model fields are hashed into the cache key)."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    dropout: float = 0.1
    members: int = 3
    iterations: int = 1000
    batch_volumes: int = 2
    samples_per_volume: int = 1
    patch: tuple[int, int, int] = (24, 24, 24)
    lr: float = 3e-3
    loss: str = "dicece"
    train_cases: int | None = None  # None: the whole training split
    val_cases: int | None = 8  # the first N of each validation fold (keeps the CPU run short); None: all of it
    folds: tuple[int, ...] = (0, 1)
    mc_samples: int = 8
    sketch_probes: int = 16  # k of the whole-volume sketch maps
    sketch_ks: tuple[int, ...] = (4, 16, 64)  # k compared with exact on the exact cases
    exact_cases: int = 2  # per fold
    exact_pixels: int = 64
    fail_dice: float = 0.80  # a case with mean foreground Dice below it counts as failed
    n_folds: int = 5
    fold: int = 0  # the fold being trained (set per fold)
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
    train_cases=3,
    val_cases=2,
    folds=(0, 1),
    n_folds=3,
    mc_samples=2,
    sketch_probes=4,
    sketch_ks=(2, 4),
    exact_cases=1,
    exact_pixels=6,
    figure_cases=1,
)


def log(msg: str) -> None:
    tqdm.write(msg)


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
            if step % 100 == 0 or step == cfg.iterations:
                log(f"  member seed {seed}: step {step}/{cfg.iterations} loss {np.mean(running[-100:]):.4f}")
            if step >= cfg.iterations:
                break
    set_determinism(None)
    log(f"  member seed {seed}: trained in {time.time() - t0:.0f} s")
    return net.eval()


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


# ---------------------------------------------------------------------------------------------- evaluation


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


def cam_stats(cam: torch.Tensor, gradcam: torch.Tensor, pred: torch.Tensor) -> dict:
    """Per foreground class: Pearson(CAM, Grad-CAM), and each map's share of its mass inside the predicted region."""
    out = {}
    for c in range(1, NUM_CLASSES):
        region = (pred[0, 0] == c).numpy()
        a, b = cam[0, c].numpy(), gradcam[0, c].detach().numpy()
        share = [float(m[region].sum() / m.sum()) if m.sum() > 0 else float("nan") for m in (a, b)]
        out[c] = {"pearson": pearson(a, b)[0], "cam_inside": share[0], "gradcam_inside": share[1]}
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(v.size)


def fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s, _ = mean_std(values)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _ms(t: tuple) -> str:
    return "n/a" if math.isnan(t[0]) else f"{t[0]:.3f} ± {t[1]:.3f}"


def _unit_collab(u: torch.Tensor, net: EUNet) -> torch.Tensor:
    return collaboration_to_unit(u, len(net.heads) - 1)


def evaluate_case(cfg: StudyConfig, nets: list[EUNet], data: dict, times: dict, index: int, keep_full: bool) -> dict:
    """Every map of one validation volume and its metrics (maps kept only on the displayed slice, or in full)."""
    x = data["image"].as_tensor()[None] if hasattr(data["image"], "as_tensor") else data["image"][None]
    y = torch.as_tensor(data["label"])[None].long()
    net = nets[0]
    with torch.no_grad():
        out = timed(lambda: net.forward_explained(x), times, "forward")
        cam = timed(lambda: mhex_cam(out), times, "MHEX+ CAM")
    gradcam = timed(lambda: SegGradCAM(net)(x), times, "Seg-Grad-CAM")
    probs = torch.softmax(out.logits, 1)
    sketch = timed(
        lambda: collaboration_gradient(
            net, x, mode="sketch", num_probes=cfg.sketch_probes, seed=cfg.seed, chunk_size=8
        ),
        times,
        "collab_sketch",
    )
    summed = timed(lambda: collaboration_gradient(net, x, mode="summed"), times, "collab_summed")
    maps = {
        "softmax_entropy": softmax_entropy(out.logits, normalize=True),
        "heads_mi": heads_mutual_information(out, normalize=True),
        "collab_sketch": _unit_collab(sketch, net),
        "collab_summed": _unit_collab(summed, net),
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
    pred0 = preds["single"][0, 0].numpy()
    res: dict = {"case": data["case"], "dice": {k: fg_dice(p, y) for k, p in preds.items()}}
    res["usefulness"], res["quality"], res["beyond_entropy"] = {}, {}, {}
    entropy = maps["softmax_entropy"][0, 0].numpy()
    for name, m in maps.items():
        score_metrics(res, name, m[0, 0].numpy(), preds[METHODS[name][0]][0, 0].numpy(), lab, entropy)
    res["agreement"] = {
        f"{a}|{b}": map_agreement(maps[a], maps[b], "top_q", TOP_Q) for a, b in AGREEMENT_PAIRS if a in maps
    }
    res["cam"] = cam_stats(cam, gradcam, preds["single"])
    z = display_slice(lab)
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
    res["_logits"] = out.logits
    res["_lab"], res["_pred"], res["_entropy"] = lab, pred0, entropy
    if keep_full:
        res["_x"] = x
        res["_maps"] = {k: maps[k][0, 0].numpy() for k in ("softmax_entropy", "heads_mi", "collab_summed")}
        res["_maps"]["collab_sketch_raw"] = sketch[0, 0].numpy()
        res["_maps"]["collab_summed_raw"] = summed[0, 0].numpy()
    return res


def score_metrics(res: dict, name: str, m: np.ndarray, pred: np.ndarray, lab: np.ndarray, entropy: np.ndarray) -> None:
    """Voxel usefulness, entropy-stratified AUROC and the per-case quality aggregates of one map."""
    res["usefulness"][name] = uncertainty_usefulness(m, pred, lab)
    res["beyond_entropy"][name] = stratified_auroc(m, pred != lab, entropy)
    res["quality"][name] = case_quality(pred, m)


def add_temperature_scaled(fold_results: list[dict], times: dict) -> list[float]:
    """
    ``entropy_ts`` for each case, with T fitted (:py:func:`fit_temperature`) on the *other* half of the fold's cases
    (2-fold cross-fitting, so no case's own labels choose its T). Returns the two temperatures.
    """
    half = max(1, len(fold_results) // 2)
    groups = [fold_results[:half], fold_results[half:]] if len(fold_results) > 1 else [fold_results, fold_results]
    temps = []
    for fit_on, apply_to in ((groups[1], groups[0]), (groups[0], groups[1])):
        t0 = time.perf_counter()
        t = fit_temperature([r["_logits"] for r in fit_on], [torch.as_tensor(r["_lab"])[None, None] for r in fit_on])
        times["temperature fit"] = times.get("temperature fit", 0.0) + time.perf_counter() - t0
        temps.append(t)
        for r in apply_to:
            m = softmax_entropy(r["_logits"] / t, normalize=True)[0, 0].numpy()
            score_metrics(r, "entropy_ts", m, r["_pred"], r["_lab"], r["_entropy"])
            r["temperature"] = t
            r["slice"]["entropy_ts"] = m[..., r["slice"]["z"]]
    return temps


def collaboration_comparison(cfg: StudyConfig, net: EUNet, r: dict, times: dict, seed: int) -> dict:
    """Exact U at sampled voxels of one volume, with the sketch (several k), summed and baseline maps there."""
    x = r["_x"]
    pix = sample_pixels(r["_pred"], r["_lab"], cfg.exact_pixels, seed)
    t0 = time.perf_counter()
    exact = collaboration_gradient(net, x, mode="exact", pixels=torch.as_tensor(pix), chunk_size=32)[0].numpy()
    times["collab_exact (sampled)"] = times.get("collab_exact (sampled)", 0.0) + time.perf_counter() - t0
    values = {"exact": exact, "summed": r["_maps"]["collab_summed_raw"].ravel()[pix]}
    for k in cfg.sketch_ks:
        if k == cfg.sketch_probes:
            u = r["_maps"]["collab_sketch_raw"]
        else:
            t0 = time.perf_counter()
            u = collaboration_gradient(net, x, mode="sketch", num_probes=k, seed=cfg.seed, chunk_size=8)[0, 0].numpy()
            times[f"collab_sketch k={k}"] = times.get(f"collab_sketch k={k}", 0.0) + time.perf_counter() - t0
        values[f"sketch k={k}"] = u.ravel()[pix]
    values["softmax_entropy"] = r["_maps"]["softmax_entropy"].ravel()[pix]
    values["heads_mi"] = r["_maps"]["heads_mi"].ravel()[pix]
    err = (r["_pred"] != r["_lab"]).ravel()[pix]
    fg = (r["_pred"] > 0).ravel()[pix]
    return {"values": {k: v.tolist() for k, v in values.items()}, "errors": err.tolist(), "fg": fg.tolist()}


def summarise_comparison(rows: list[dict]) -> dict:
    """Pooled over the sampled voxels: Pearson with exact, AUROC / AUPRC for errors, AUROC for predicted foreground."""
    names = list(rows[0]["values"])
    vals = {k: np.concatenate([np.asarray(r["values"][k], float) for r in rows]) for k in names}
    err = np.concatenate([np.asarray(r["errors"], bool) for r in rows])
    fg = np.concatenate([np.asarray(r["fg"], bool) for r in rows])
    out = {"voxels": int(err.size), "errors": int(err.sum()), "volumes": len(rows), "methods": {}}
    for k in names:
        r, p = pearson(vals[k], vals["exact"]) if k != "exact" else (1.0, 0.0)
        out["methods"][k] = {
            "pearson_exact": r,
            "pearson_p": p,
            "auroc_errors": auroc(vals[k], err),
            "auprc_errors": auprc(vals[k], err),
            "auroc_foreground": auroc(vals[k], fg),
        }
    return out


def per_case_scores(results: list[dict], name: str, aggregate: str, fail_dice: float) -> dict:
    """Spearman (aggregate vs 1 - Dice) over cases, and AUROC of the aggregate for failed cases (Dice < fail_dice)."""
    src = METHODS[name][0] if name in METHODS else "ensemble"
    score = np.nan_to_num(np.asarray([r["quality"][name][aggregate] for r in results], float), nan=1.0)
    dice = np.asarray([r["dice"][src] for r in results], float)
    rho, p = image_level_spearman(score, dice)
    failed = dice < fail_dice
    return {"spearman": rho, "spearman_p": p, "failed_auroc": auroc(score, failed), "failed": int(failed.sum())}


def summarise(cfg: StudyConfig, results: list[dict]) -> dict:
    s: dict = {"dice": {k: mean_std([r["dice"][k] for r in results]) for k in results[0]["dice"]}}
    s["usefulness"] = {}
    for name in METHODS:
        rows = [r for r in results if name in r["usefulness"]]
        row = {k: mean_std([r["usefulness"][name][k] for r in rows]) for k in ("auroc", "auprc", "ueo", "error_rate")}
        row["beyond_entropy"] = mean_std([r["beyond_entropy"][name] for r in rows])
        row["cases"] = {agg: per_case_scores(rows, name, agg, cfg.fail_dice) for agg in AGGREGATES}
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
    u = s["usefulness"]
    # The default: best mean AUROC among the single-pass candidates; AUPRC breaks near-ties (< 0.002 AUROC).
    top = max(u[n]["auroc"][0] for n in SINGLE_PASS)
    near = [n for n in SINGLE_PASS if u[n]["auroc"][0] >= top - 0.002]
    s["winner"] = max(near, key=lambda n: u[n]["auprc"][0])
    trio = [(n, agg) for n in SINGLE_PASS for agg in AGGREGATES]
    s["best_triage"] = max(trio, key=lambda t: np.nan_to_num(u[t[0]]["cases"][t[1]]["spearman"], nan=-1))
    return s


def method_seconds(times: dict, n: int) -> dict:
    per = {k: v / n for k, v in times.items()}
    out = {}
    for name, (_, _, key) in METHODS.items():
        out[name] = per.get(key, float("nan"))
        if name == "entropy_ts":
            out[name] += per.get("temperature fit", 0.0)  # fitting amortised over the cases
    return out


# ------------------------------------------------------------------------------------------------- report


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def verdict(cfg: StudyConfig, s: dict, comp: dict) -> list[str]:
    """The conclusions, as sentences computed from the numbers."""
    u = s["usefulness"]
    w = s["winner"]
    au = ", ".join(f"`{n}` {_f(u[n]['auroc'][0])}" for n in SINGLE_PASS)
    pr = ", ".join(_f(u[n]["auprc"][0]) for n in SINGLE_PASS)
    ue = ", ".join(_f(u[n]["ueo"][0]) for n in SINGLE_PASS)
    out = [
        f"- **Default map: `{w}`** (best mean voxel AUROC among the single-pass candidates {au}; AUPRC {pr}; "
        f"UEO {ue}).",
    ]
    best_any = max(METHODS, key=lambda n: u[n]["auroc"][0])
    out.append(
        f"- Best map of all (multi-pass included): `{best_any}`, AUROC {_f(u[best_any]['auroc'][0])} at "
        f"{_f(s['seconds'].get(best_any, float('nan')), 2)} s / volume vs {_f(u[w]['auroc'][0])} for `{w}`."
    )
    mi, ent = u["heads_mi"], u["softmax_entropy"]
    out.append(
        f"- Heads' disagreement beyond entropy: within bins of equal softmax entropy, `heads_mi` ranks errors with "
        f"AUROC {_f(mi['beyond_entropy'][0])} (0.5 = nothing beyond entropy; softmax entropy itself: "
        f"{_f(ent['beyond_entropy'][0])} (the binning's floor), `collab_sketch`: "
        f"{_f(u['collab_sketch']['beyond_entropy'][0])}, `ens_variance`: {_f(u['ens_variance']['beyond_entropy'][0])})."
        f" Over all voxels: AUROC {_f(mi['auroc'][0])} vs {_f(ent['auroc'][0])}."
    )
    t = [r for r in ("entropy_ts",) if r in u]
    if t:
        out.append(
            f"- Temperature scaling (T fitted on the other half of each fold's cases: {_f(min(s['temperatures']), 2)}-"
            f"{_f(max(s['temperatures']), 2)}) changes entropy's AUROC from {_f(ent['auroc'][0])} to "
            f"{_f(u['entropy_ts']['auroc'][0])} and UEO from {_f(ent['ueo'][0])} to {_f(u['entropy_ts']['ueo'][0])}."
        )
    m = comp["methods"]
    exact_au = m["exact"]["auroc_errors"]
    out.append(
        f"- Collaboration gradient, paper orientation (high U = uncertain): at the {comp['voxels']} sampled voxels "
        f"the exact U scores AUROC {_f(exact_au)} for errors (the flipped map, (L-1-U)/(2(L-1)) as this package "
        f"used to return, scores {_f(1 - exact_au)}) and {_f(m['exact']['auroc_foreground'])} for *predicted "
        f"foreground*{' (it marks structure more than errors)' if m['exact']['auroc_foreground'] > exact_au else ''}."
        f" Softmax entropy on the same voxels: {_f(m['softmax_entropy']['auroc_errors'])}."
    )
    ks = [k for k in m if k.startswith("sketch")]
    out.append(
        "- Sketch vs exact (Pearson r at the sampled voxels): "
        + ", ".join(f"{k} r = {_f(m[k]['pearson_exact'])}" for k in ks)
        + f"; summed (the former 'fast') r = {_f(m['summed']['pearson_exact'])}."
    )
    name, agg = s["best_triage"]
    row = u[name]["cases"][agg]
    ens = u["ens_variance"]["cases"]["mean"]
    out.append(
        f"- Per-case triage: the best single-pass score is `{name}` / `{agg}`: Spearman with 1 - Dice "
        f"{_f(row['spearman'])} (p {_f(row['spearman_p'], 3)}), failed-case AUROC {_f(row['failed_auroc'])} "
        f"({row['failed']} of {s['n_cases']} cases below Dice {cfg.fail_dice}); the deep ensemble's mean variance: "
        f"Spearman {_f(ens['spearman'])}, failed-case AUROC {_f(ens['failed_auroc'])}. The inference summary writes "
        f"`case_quality(...)['score']` = `{QUALITY_SCORE}` of the default map "
        f"(here: Spearman {_f(u[w]['cases'][QUALITY_SCORE]['spearman'])}, "
        f"failed AUROC {_f(u[w]['cases'][QUALITY_SCORE]['failed_auroc'])})."
    )
    return out


def write_markdown(path: Path, cfg: StudyConfig, info: dict, s: dict, comp: dict, times: dict, figs: list[str]) -> None:
    n_val = info["n_val"]
    u = s["usefulness"]
    cost = s["seconds"]
    folds = ", ".join(str(f) for f in cfg.folds)
    lines = [
        "# Uncertainty on real hippocampus MRI: which map finds the errors, which score finds the failed scans",
        "",
        "Generated by `scripts/uncertainty_study.py` (logic: `eunets_monai/evaluation/uncertainty_study.py`; do not "
        "edit by hand). Rerun with:",
        "",
        "```bash",
        f"OMP_NUM_THREADS=1 python scripts/uncertainty_study.py --data-dir /path/to/Task04_Hippocampus{info['flags']}",
        "```",
        "",
        f"Run: {info['date']}, wall time {info['wall_s'] / 60:.1f} min on {info['threads']} CPU thread(s) "
        f"(training {info['train_s'] / 60:.1f} min{'' if info['train_s'] else ': models loaded from the cache'}).",
        "",
        "## Setup",
        "",
        f"- Data: MSD Task04 hippocampus (MRI, 3 classes: background, anterior, posterior); folds {folds} of "
        f"{cfg.n_folds} (`kfold_split(seed={cfg.seed})`), each validated on "
        f"{'all' if cfg.val_cases is None else f'the first {cfg.val_cases}'} of its validation volumes: "
        f"{n_val} volumes in all, models trained on the fold's {info['n_train']} training volumes.",
        f"- Models, per fold: {cfg.members} 3D EU-Nets, channels {cfg.channels}, dropout {cfg.dropout}, seeds "
        f"{cfg.seed}..{cfg.seed + cfg.members - 1}; each trained {cfg.iterations} Adam steps (lr {cfg.lr}) on "
        f"{cfg.batch_volumes}x{cfg.samples_per_volume} random {cfg.patch} patches, DiceCE + MHEX+ deep supervision, "
        "presets' augmentation. Short CPU trainings of small networks: the numbers describe these models, not "
        "converged or full-width ones.",
        "- Single model = member 0; deep ensemble = members 0..M-1. MC dropout samples member 0's dropout "
        f"(T = {cfg.mc_samples}, batch norm in eval); TTA averages all 8 flips.",
        "- Every map is in [0, 1], higher = more doubt: entropies / log K; variance / its bound (K-1)/K^2; "
        "`heads_mi` = (H(mean_l P_l) - mean_l H(P_l)) / log K over the L MHEX+ heads' deep predictions; "
        "collaboration gradient U in the paper's orientation mapped by (U + L - 1) / (2 (L - 1)) (order kept). "
        f"`collab_sketch`: k = {cfg.sketch_probes} Gaussian probes per head pair; `collab_summed`: the former "
        "'fast' mode (a different quantity, see `eunets_monai/uncertainty/collaboration.py`). `entropy_ts`: "
        "temperature T fitted (NLL) on the other half of the same fold's evaluated cases, so no case's own labels "
        f"choose its T (T = {', '.join(f'{t:.2f}' for t in s['temperatures'])}).",
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
            f"**Warning: the models are undertrained (single-model Dice {dice0:.3f} < {MIN_USEFUL_DICE}).** The "
            "errors are then (almost) the true hippocampus; do not draw conclusions from this run.",
        ]
    lines += [
        "",
        "## Conclusions",
        "",
        *verdict(cfg, s, comp),
        "",
        "## Voxel level: does the map find the model's errors?",
        "",
        "Per volume, the voxels misclassified by the prediction the method belongs to (the single model's for the "
        "single-pass maps, the averaged prediction for MC dropout, TTA and the ensemble) are the positives. AUROC and "
        "AUPRC (average precision; a random map scores the error rate) of the map as a score for them; UEO = max "
        "over thresholds of Dice(map >= t, errors) (Jungo & Reyes 2019); *beyond entropy* = AUROC within 20 bins of "
        "softmax entropy holding equal numbers of errors, weighted by errors per bin (0.5: no information that "
        "entropy lacks; entropy itself sits a little above it, from its spread within a bin). Mean ± std over "
        "volumes. Per case: Spearman rho over all volumes between the case score (`"
        f"{QUALITY_SCORE}`, see below) and 1 - Dice, and the AUROC of that score for failed cases "
        f"(Dice < {cfg.fail_dice}). Seconds per volume on this CPU, side by side in one run.",
        "",
        "| method | AUROC | AUPRC | error rate | UEO | beyond entropy | case Spearman (p) | failed-case AUROC "
        "| s / volume |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in u.items():
        c = row["cases"][QUALITY_SCORE]
        lines.append(
            f"| {name} | {_ms(row['auroc'])} | {_ms(row['auprc'])} | {_ms(row['error_rate'])} | {_ms(row['ueo'])} | "
            f"{_ms(row['beyond_entropy'])} | {_f(c['spearman'])} ({_f(c['spearman_p'], 2)}) | "
            f"{_f(c['failed_auroc'])} | {_f(cost.get(name, float('nan')), 2)} |"
        )
    lines += [
        "",
        "## Case level: which scans need a human look?",
        "",
        "`case_quality(segmentation, uncertainty)` summarises a map over a case: `mean` (whole volume), "
        "`mean_in_structure` (over the predicted foreground) and `expected_error_ratio` = sum(map) / (2 |predicted "
        "foreground|), which estimates 1 - Dice if the map were each voxel's probability of being wrong. Spearman rho "
        f"with 1 - Dice over the {n_val} volumes (p) / AUROC for failed cases (Dice < {cfg.fail_dice}; "
        f"{u['softmax_entropy']['cases']['mean']['failed']} of {n_val} single-model cases). For reference, the "
        "previous study's 5-member deep ensemble scored Spearman 0.72 with its mean variance.",
        "",
        "| method | " + " | ".join(AGGREGATES) + " |",
        "| --- | " + " | ".join("---" for _ in AGGREGATES) + " |",
    ]
    for name, row in u.items():
        cells = [
            f"{_f(row['cases'][a]['spearman'])} ({_f(row['cases'][a]['spearman_p'], 2)}) / "
            f"{_f(row['cases'][a]['failed_auroc'])}"
            for a in AGGREGATES
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    m = comp["methods"]
    lines += [
        "",
        "## Collaboration gradient: exact vs sketch vs summed",
        "",
        f"The exact map needs 2(L-1) per-pixel gradients w.r.t. a Conv1 weight per voxel, so it is computed "
        f"(`collaboration_gradient(mode='exact', pixels=...)`) at {comp['voxels']} sampled voxels of "
        f"{comp['volumes']} validation volumes ({cfg.exact_cases} per fold; half where predicted/true foreground or "
        f"errors are, half elsewhere; seeded; {comp['errors']} errors among them); the sketch maps are whole-volume "
        "(Gaussian probes) and read at the same voxels. All values are raw U in [-(L-1), L-1], the paper's "
        "orientation. AUROC/AUPRC for errors are among the sampled voxels only (a stratified sample, not comparable "
        "with the whole-volume table); 'AUROC fg' scores the *predicted foreground* instead of the errors.",
        "",
        "| map | Pearson r with exact (p) | AUROC errors | AUPRC errors | AUROC fg | s / volume |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    per = {k: v / max(comp["volumes"], 1) for k, v in times.items()}
    exact_s = per.get("collab_exact (sampled)", float("nan"))
    for k, row in m.items():
        if k == "exact":
            sec = f"{exact_s:.1f} for {cfg.exact_pixels} voxels"
        elif k.startswith("sketch"):
            kk = int(k.split("=")[1])
            sec = _f(
                cost["collab_sketch"] if kk == cfg.sketch_probes else per.get(f"collab_sketch k={kk}", math.nan), 1
            )
        elif k == "summed":
            sec = _f(cost["collab_summed"], 2)
        else:
            sec = _f(cost.get(k, math.nan), 2)
        lines.append(
            f"| {k} | {_f(row['pearson_exact'])} ({_f(row['pearson_p'], 2)}) | {_f(row['auroc_errors'])} | "
            f"{_f(row['auprc_errors'])} | {_f(row['auroc_foreground'])} | {sec} |"
        )
    lines += [
        "",
        "Binary tasks: with one sigmoid output or two classes, U does not depend on the label or on the "
        "probabilities at all (proof in the module docstring, tested in `tests/uncertainty/test_collaboration.py`); "
        "this data set has three classes, where it does.",
        "",
        "## Agreement with the deep ensemble (as paper Table 2)",
        "",
        f"IoU and Dice of the two maps each binarised at its own top {TOP_Q:.0%} voxels, and Pearson's r over all "
        "voxels; mean ± std over volumes, and the largest per-volume p-value. The paper (MSD-Heart, four EU-Nets' maps "
        "aggregated) reports for MHEX+ vs ensemble entropy IoU 0.392, Dice 0.561, r 0.618.",
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
        "## MHEX+ CAM vs Seg-Grad-CAM",
        "",
        "Per foreground class, on member 0: Pearson r between the two maps, and the share of each map's mass inside "
        "the region predicted as that class.",
        "",
        "| class | Pearson(CAM, Grad-CAM) | CAM mass inside | Grad-CAM mass inside | CAM s / vol | Grad-CAM s / vol |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    cls = {1: "anterior", 2: "posterior"}
    for c, row in s["cam"].items():
        lines.append(
            f"| {cls[int(c)]} | {_ms(row['pearson'])} | {_ms(row['cam_inside'])} | {_ms(row['gradcam_inside'])} | "
            f"{(times['forward'] + times['MHEX+ CAM']) / n_val:.2f} | {times['Seg-Grad-CAM'] / n_val:.2f} |"
        )
    lines += ["", "## Figures", ""]
    lines += [f"![{Path(f).stem}](figures/{Path(f).name})" for f in sorted(figs)]
    lines += [
        "",
        "Explanations: image, ground truth, prediction, confidence, MHEX+ CAM and Seg-Grad-CAM per foreground class. "
        "Uncertainty: the single model's errors, then every map on [0, 1] (one colour scale for all, so they can be "
        "compared by eye). One axial slice (the most hippocampus) of the worst- and the median-Dice volume. "
        "Collaboration: exact U against summed and sketch U at the sampled voxels (errors in red).",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


# ------------------------------------------------------------------------------------------------- figures


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def make_figures(results: list[dict], rows: list[dict], fig_dir: Path, count: int) -> list[str]:
    """Explanations, uncertainty maps (worst- and median-Dice volumes) and the exact-vs-estimates scatter."""
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
                vmin, vmax = {"label": (0, 2), "pred": (0, 2)}.get(key, (0, 1))
                if key == "image":
                    vmin = vmax = None
                ax.imshow(np.rot90(img), cmap=cmap, vmin=vmin, vmax=vmax)
                ax.set_xticks([]), ax.set_yticks([])
                if ax is row[0]:
                    ax.set_ylabel(f"{r['case']}\nDice {r['dice']['single']:.2f}", fontsize=7)
                if r is cases[0]:
                    ax.set_title(title, fontsize=7)
        fig.tight_layout()
        path = fig_dir / f"uncertainty_study_{name}.png"
        _save(fig, path)
        paths.append(str(path))
    if rows:
        vals = {k: np.concatenate([np.asarray(r["values"][k], float) for r in rows]) for k in rows[0]["values"]}
        err = np.concatenate([np.asarray(r["errors"], bool) for r in rows])
        others = [k for k in vals if k == "summed" or k.startswith("sketch")]
        fig, axes = plt.subplots(1, len(others), figsize=(2.6 * len(others), 2.6), squeeze=False)
        for ax, k in zip(axes[0], others):
            ax.scatter(vals["exact"][~err], vals[k][~err], s=6, c="tab:blue", label="correct")
            ax.scatter(vals["exact"][err], vals[k][err], s=8, c="tab:red", label="error")
            ax.set_xlabel("exact U", fontsize=7), ax.set_ylabel(f"{k} U", fontsize=7)
            ax.set_title(f"{k} (r = {pearson(vals[k], vals['exact'])[0]:.2f})", fontsize=8)
            ax.tick_params(labelsize=6)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        path = fig_dir / "uncertainty_study_collaboration.png"
        _save(fig, path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------------- main


def _strip(results: list[dict]) -> None:
    for r in results:
        for k in [k for k in r if k.startswith("_")]:
            del r[k]


def run_study(
    cfg: StudyConfig, data_dir: Path, docs_dir: Path, cache_dir: Path, flags: str = "", progress: bool = True
) -> dict:
    """
    Train (or load) the models of every fold in ``cfg.folds``, evaluate, and write ``docs_dir/uncertainty.md``,
    ``docs_dir/figures/uncertainty_study_*.png`` and ``results.json`` (in ``cache_dir``).

    Args:
        cfg: the study configuration (:py:data:`FULL`, :py:data:`QUICK` or a ``replace`` of them).
        data_dir: an MSD Task04_Hippocampus folder (``dataset.json``).
        docs_dir: where the report and its figures go.
        cache_dir: trained models (one folder per fold and configuration) and the saved results.
        flags: command-line flags quoted in the report's rerun line.
        progress: show a progress bar over the validation volumes.

    Returns:
        the saved results (config, info, summary, collaboration comparison, times).

    Examples::

        out = run_study(QUICK, Path("Task04_Hippocampus"), Path("/tmp/docs"), Path("/tmp/cache"))
    """
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    datalist = msd_datalist(data_dir)
    times: dict[str, float] = {}
    results: list[dict] = []
    rows: list[dict] = []
    temps: list[float] = []
    t_train, n_train = 0.0, []
    for fold in cfg.folds:
        fcfg = replace(cfg, fold=fold)
        train_items, val_items = kfold_split(datalist, cfg.n_folds, fold, cfg.seed)
        train_items = train_items[: cfg.train_cases] if cfg.train_cases else train_items
        val_items = val_items[: cfg.val_cases] if cfg.val_cases else val_items
        n_train.append(len(train_items))
        nets, t = get_members(fcfg, cache_dir, train_items)
        t_train += t
        log(f"fold {fold}: loading {len(val_items)} validation cases")
        val_data = load_cases(val_items, get_transforms("hippocampus", "val"), "validation")
        fold_results = []
        for i, data in enumerate(tqdm(val_data, desc=f"fold {fold}", disable=not progress)):
            try:
                r = evaluate_case(cfg, nets, data, times, len(results) + i, keep_full=i < cfg.exact_cases)
            except Exception as e:  # noqa: BLE001 - one bad volume must not lose the others
                log(f"case {data['case']}: evaluation failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
                continue
            r["fold"] = fold
            fold_results.append(r)
            log(
                f"fold {fold} {r['case']}: Dice {r['dice']['single']:.3f}, AUROC entropy "
                f"{r['usefulness']['softmax_entropy']['auroc']:.3f} / heads_mi "
                f"{r['usefulness']['heads_mi']['auroc']:.3f} / sketch {r['usefulness']['collab_sketch']['auroc']:.3f}"
            )
        if not fold_results:
            continue
        temps += add_temperature_scaled(fold_results, times)
        for i, r in enumerate(fold_results[: cfg.exact_cases]):
            log(f"fold {fold} {r['case']}: exact collaboration gradient at {cfg.exact_pixels} voxels")
            rows.append(collaboration_comparison(cfg, nets[0], r, times, cfg.seed + i))
        _strip(fold_results)
        results += fold_results
    if not results:
        raise RuntimeError("every validation case failed; see the messages above.")
    summary = summarise(cfg, results)
    summary["n_cases"] = len(results)
    summary["seconds"] = method_seconds(times, len(results))
    summary["temperatures"] = temps
    comp = summarise_comparison(rows)
    figs = make_figures(results, rows, docs_dir / "figures", cfg.figure_cases)
    info = {
        "flags": flags,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": time.time() - t_start,
        "train_s": t_train,
        "threads": torch.get_num_threads(),
        "n_val": len(results),
        "n_train": "/".join(str(n) for n in n_train),
    }
    write_markdown(docs_dir / "uncertainty.md", cfg, info, summary, comp, times, figs)
    out = {
        "config": asdict(cfg),
        "info": info,
        "summary": summary,
        "collaboration": comp,
        "collaboration_rows": rows,
        "times": times,
        "cases": [{k: r[k] for k in ("case", "fold", "dice", "quality", "usefulness")} for r in results],
    }
    atomic_write_text(cache_dir / "results.json", json.dumps(out, indent=1, default=float))
    log(f"wrote {docs_dir / 'uncertainty.md'} and {len(figs)} figures in {info['wall_s'] / 60:.1f} min")
    return out


def rewrite_report(results_json: Path, docs_dir: Path) -> dict:
    """Rewrite ``uncertainty.md`` from a saved ``results.json`` (figures are left as they are)."""
    try:
        saved = json.loads(Path(results_json).read_text())
        cfg = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
        summary = saved["summary"]
        summary["best_triage"] = tuple(summary["best_triage"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{results_json}: not a results.json written by this study ({type(e).__name__}).") from e
    figs = sorted(str(p) for p in (docs_dir / "figures").glob("uncertainty_study_*.png"))
    write_markdown(
        docs_dir / "uncertainty.md", cfg, saved["info"], summary, saved["collaboration"], saved["times"], figs
    )
    return saved
