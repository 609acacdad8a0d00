"""The network-comparison study: Dice, splits, paired test, table, resumable runs on the embedded real sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from eunets_monai.data import msd_datalist
from eunets_monai.engine.precision import cpu_has_bf16
from eunets_monai.evaluation.compare import (
    RunSpec,
    StudyConfig,
    ablation_rows,
    batch_class_dice,
    case_dice,
    case_id,
    class_dice_at,
    format_ablation_table,
    format_reach_table,
    format_table,
    load_results,
    paired_test,
    run_study,
    seconds_to_reach,
    steps_to_reach,
    study_splits,
    summarize,
    train_run,
    val_dice_at,
)
from eunets_monai.evaluation.plots import plot_folds, plot_paired
from eunets_monai.evaluation.shipping import (
    BUNDLE_NETWORKS,
    bundle_config,
    embedded_case_ids,
    format_models_table,
    withdraw_bundle_model,
)
from tests.fixtures import HIPPOCAMPUS


def _direct_dice(pred: np.ndarray, gt: np.ndarray, c: int) -> float:
    p, g = pred == c, gt == c
    total = p.sum() + g.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(p, g).sum() / total


def test_case_dice_matches_direct_count():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 6, 5, 4, generator=gen)
    label = torch.randint(0, 3, (1, 1, 6, 5, 4), generator=gen)
    pred = logits.argmax(1).numpy()[0]
    expected = [_direct_dice(pred, label.numpy()[0, 0], c) for c in (1, 2)]
    assert case_dice(logits, label) == pytest.approx(expected, abs=1e-6)


def test_case_dice_absent_class_counts_as_perfect():
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 1.0  # predicts background everywhere
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[..., 0, 0] = 2
    assert case_dice(logits, label) == pytest.approx([1.0, 0.0])


def test_study_splits_exclude_only_from_training():
    data = [{"image": f"imagesTr/hippocampus_{i:03d}.nii.gz", "label": "x"} for i in range(30)]
    cfg = StudyConfig(n_folds=3, exclude=("hippocampus_000", "hippocampus_001", "hippocampus_002"))
    vals = []
    for fold in range(3):
        train, val = study_splits(data, cfg, fold)
        ids = {case_id(d) for d in train}
        assert not ids & set(cfg.exclude)
        assert not ids & {case_id(d) for d in val}
        vals += [case_id(d) for d in val]
    assert sorted(vals) == sorted(case_id(d) for d in data)  # folds cover every case, excluded ones included


def test_paired_test_difference_and_wilcoxon():
    a = [0.80, 0.82, 0.85, 0.79, 0.90, 0.70]
    b = [0.83, 0.81, 0.88, 0.84, 0.91, 0.75]
    out = paired_test(a, b)
    assert out["diff"] == pytest.approx(np.mean(np.subtract(b, a)))
    assert out["p"] == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert out["n"] == 6
    assert np.isnan(paired_test([0.5, 0.6], [0.5, 0.6])["p"])
    with pytest.raises(ValueError, match="equal-length"):
        paired_test([1.0], [1.0, 2.0])


def _run(network: str, mhex: bool, fold: int, cases: dict) -> dict:
    return {
        "network": network,
        "display": "EU-Net" if mhex else "U-Net",
        "mhex": mhex,
        "fold": fold,
        "spatial_dims": 2,
        "params": 1000 + mhex,
        "per_case": cases,
        "seconds": 60.0 * (fold + 1),
    }


def test_summarize_mean_std_over_folds_and_paired_difference():
    results = [
        _run("unet", False, 0, {"a": [0.8, 0.6], "b": [0.6, 0.6]}),
        _run("unet", False, 1, {"c": [0.9, 0.7]}),
        _run("unet", True, 0, {"a": [0.9, 0.7], "b": [0.7, 0.7]}),
        _run("unet", True, 1, {"c": [0.9, 0.9]}),
    ]
    rows = summarize(results)
    assert [r["display"] for r in rows] == ["U-Net", "EU-Net"]
    plain, eu = rows
    # plain: fold 0 anterior mean 0.7, fold 1 0.9 -> 0.8 +- 0.1; fold means (0.65, 0.8)
    assert plain["dice"]["anterior"] == pytest.approx((0.8, 0.1))
    assert plain["mean"] == pytest.approx((0.725, 0.075))
    assert plain["vs_plain"] is None and plain["seconds"] == pytest.approx(90.0)
    assert eu["vs_plain"]["n"] == 3
    assert eu["vs_plain"]["diff"] == pytest.approx(np.mean([0.1, 0.1, 0.1]))
    table = format_table(rows)
    assert "| EU-Net | 2D |" in table and "80.00 ± 10.00" in table and "+10.00" in table


def test_plots_written(tmp_path):
    results = [
        _run("unet", False, 0, {"a": [0.8, 0.6], "b": [0.6, 0.6]}),
        _run("unet", True, 0, {"a": [0.9, 0.7], "b": [0.7, 0.7]}),
    ]
    for path in (plot_folds(results, tmp_path, "t"), plot_paired(results, tmp_path, "t")):
        assert path.is_file() and path.stat().st_size > 1000
    assert plot_paired(results[:1], tmp_path, "u") is None


def test_bundle_config_excludes_every_embedded_case():
    ids = embedded_case_ids()
    assert len(ids) == 16 and "hippocampus_025" in ids
    cfg = bundle_config("eunet_hippocampus", spatial_dims=3)
    assert cfg.exclude == ids and cfg.networks == ("unet",) and cfg.variants == ("eu",)
    assert set(BUNDLE_NETWORKS) == {
        "eunet_hippocampus",
        "eunetpp_hippocampus",
        "ahf_eunet_hippocampus",
        "eunet_transformer_hippocampus",
        "efen_eu_hippocampus",
    }
    with pytest.raises(ValueError, match="unknown hippocampus bundle"):
        bundle_config("eunet_spleen")


TINY = dict(channels=(4, 8), max_iters=2, val_interval=1, batch_size=1, num_samples=2, n_folds=2, early_stop=0)


def test_train_run_resumes_from_saved_state(tmp_path):
    data = msd_datalist(HIPPOCAMPUS)[:3]
    state = tmp_path / "state.pt"
    cfg = StudyConfig(**TINY)
    first = train_run(RunSpec("unet", True, 0), cfg, data[:2], data[2:], state, log=lambda m: None)
    assert first["finished"] and first["steps"] == 2 and len(first["history"]) == 2
    assert set(first["per_case"]) == {case_id(data[2])} and len(first["per_case"][case_id(data[2])]) == 2
    logs = []
    more = StudyConfig(**{**TINY, "max_iters": 3})
    second = train_run(RunSpec("unet", True, 0), more, data[:2], data[2:], state, log=logs.append)
    assert "resumed at step 2" in logs[0] and second["steps"] == 3 and len(second["history"]) == 3


def test_anneal_phase_follows_a_cosine_to_zero_after_a_resume(tmp_path):
    # Plateau phase for 2 steps, then a resumed call adds 4 steps whose last 4 follow lr0 * (1 + cos(pi k / 4)) / 2.
    data = msd_datalist(HIPPOCAMPUS)[:3]
    state = tmp_path / "state.pt"
    train_run(RunSpec("unet", True, 0), StudyConfig(**TINY), data[:2], data[2:], state, log=lambda m: None)
    cfg = StudyConfig(**{**TINY, "max_iters": 6, "anneal_steps": 4, "learning_rate": 1e-3})
    res = train_run(RunSpec("unet", True, 0), cfg, data[:2], data[2:], state, log=lambda m: None)
    lr0 = res["history"][1]["lr"]  # the rate the plateau phase reached (recorded after step 2)
    direct = [0.5 * lr0 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]
    assert [h["lr"] for h in res["history"][2:]] == pytest.approx(direct)
    assert "anneal_steps" in cfg.recipe() and "anneal_steps" not in StudyConfig().recipe()


def test_run_study_writes_raw_json_and_skips_finished_runs(tmp_path):
    cfg = StudyConfig(**{**TINY, "max_iters": 1, "folds": (0,)})
    logs = []
    run_study(cfg, HIPPOCAMPUS, tmp_path, log=logs.append)
    raws = sorted(p.name for p in (tmp_path / "raw").glob("*.json"))
    assert raws == ["unet_eu_2d_fold0.json", "unet_plain_2d_fold0.json"]
    res = json.loads((tmp_path / "raw" / raws[0]).read_text())
    assert len(res["per_case"]) == 6 and res["recipe"]["channels"] == [4, 8]  # 12 cases, 2 folds
    logs.clear()
    run_study(cfg, HIPPOCAMPUS, tmp_path, log=logs.append)
    assert sum("done, skipped" in m for m in logs) == 2
    assert len(summarize(load_results(tmp_path))) == 2


def test_withdraw_keeps_the_measured_entry(tmp_path):
    entry = {
        "display": "EU-Net",
        "spatial_dims": 2,
        "channels": [4, 8],
        "params": 1000,
        "model_bytes": 5000,
        "validation": {"fold": 0, "anterior": 0.5, "posterior": 0.0, "mean": 0.25, "n_cases": 3},
        "embedded_sample": {"mean": 0.2, "n_cases": 16},
        "steps": 10,
        "best_step": 10,
        "train_seconds": 60.0,
    }
    (tmp_path / "_shared").mkdir()
    (tmp_path / "_shared" / "hippocampus_models.json").write_text(json.dumps({"efen_eu_hippocampus": entry}))
    model = tmp_path / "efen_eu_hippocampus" / "models" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x")
    out = withdraw_bundle_model("efen_eu_hippocampus", tmp_path, "posterior class not learned")
    assert not model.exists() and out["shipped"] is False and out["validation"]["mean"] == 0.25
    assert "no (withdrawn)" in format_models_table({"efen_eu_hippocampus": out})
    with pytest.raises(ValueError, match="no entry"):
        withdraw_bundle_model("eunet_hippocampus", tmp_path, "x")


def test_heads_options_are_part_of_an_eu_recipe_only():
    cfg = StudyConfig(head_lr=0.1, ds_warmup=50, precision="bf16")
    assert cfg.recipe(mhex=True)["head_lr"] == 0.1 and cfg.recipe(mhex=True)["ds_warmup"] == 50
    plain = cfg.recipe(mhex=False)
    assert "head_lr" not in plain and "ds_warmup" not in plain and plain["precision"] == "bf16"
    # options at the values earlier results ran with are left out, so those results stay comparable
    legacy = StudyConfig(head_lr=1.0, precision="fp32")
    assert set(legacy.recipe()) == set(legacy.recipe(mhex=False))
    assert not {"head_lr", "ds_warmup", "ds_weight_mode", "precision", "anneal_steps"} & set(legacy.recipe())
    # "auto" is recorded as what it resolves to, so it matches runs that named that precision
    assert (
        StudyConfig(precision="auto").recipe().get("precision")
        == StudyConfig(precision="bf16").recipe().get("precision")
        or not cpu_has_bf16()
    )


def test_batch_class_dice_matches_direct_count():
    gen = torch.Generator().manual_seed(1)
    logits, label = torch.randn(3, 3, 5, 4, generator=gen), torch.randint(0, 3, (3, 1, 5, 4), generator=gen)
    pred, gt = logits.argmax(1).numpy(), label[:, 0].numpy()
    assert batch_class_dice(logits, label) == pytest.approx([_direct_dice(pred, gt, c) for c in (1, 2)])


def test_history_has_per_class_and_per_head_curves_and_heads_keep_their_rate_in_the_cosine(tmp_path):
    data = msd_datalist(HIPPOCAMPUS)[:3]
    cfg = StudyConfig(**{**TINY, "max_iters": 3, "anneal_steps": 2, "head_lr": 0.1, "learning_rate": 1e-3})
    res = train_run(RunSpec("unet", True, 0), cfg, data[:2], data[2:], tmp_path / "s.pt", log=lambda m: None)
    for h in res["history"]:
        assert len(h["val_class_dice"]) == 2  # anterior, posterior
        assert len(h["train_head_dice"]) == 2 and all(len(level) == 2 for level in h["train_head_dice"])  # final+1
        assert len(h["conv1_drift"]) == 1 and h["conv1_drift"][0] > 0  # one head (2 levels), moved from I
    seconds = [h["seconds"] for h in res["history"]]
    assert seconds == sorted(seconds) and seconds[-1] <= res["seconds"] + 0.05  # recorded to 0.1 s
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    body, heads = state["optimizer"]["param_groups"]
    # the cosine's last step (k = 1 of 2) from the base rate: 0.5 * 1e-3 * (1 + cos(pi / 2)); the heads at 0.1x
    assert body["lr"] == pytest.approx(0.5e-3) and heads["lr"] == pytest.approx(0.1 * body["lr"])


def _curve_run(mhex: bool, fold: int, dice: float, curve: list[tuple[int, float, float]]) -> dict:
    history = [{"step": st, "val_mean_dice": d, "seconds": sec} for st, d, sec in curve]
    per_case = {f"case_{fold}_{i}": [dice + 0.01 * i, dice] for i in range(3)}
    display = "EU-Net" if mhex else "U-Net"
    run = {"network": "unet", "display": display, "mhex": mhex, "fold": fold, "spatial_dims": 2, "params": 1}
    return {**run, "per_case": per_case, "history": history, "seconds": 1.0}


def test_ablation_rows_count_slow_starts_and_pair_each_variant_with_the_plain_runs():
    plain = [_curve_run(False, f, 0.8, [(100, 0.7, 10.0), (200, 0.8, 20.0)]) for f in (0, 1)]
    slow = [_curve_run(True, 0, 0.7, [(100, 0.3, 11.0)]), _curve_run(True, 1, 0.75, [(100, 0.5, 12.0)])]
    fast = [_curve_run(True, f, 0.82, [(100, 0.75, 9.0)]) for f in (0, 1)]
    rows = ablation_rows(plain, {"slow": slow, "fast": fast})
    assert [r["name"] for r in rows] == ["plain", "slow", "fast"]
    assert [r["slow"] for r in rows] == [(0, 2), (1, 2), (0, 2)]
    assert rows[1]["vs_plain"]["diff"] == pytest.approx((0.7 - 0.8 + 0.75 - 0.8) / 2) and rows[0]["vs_plain"] is None
    assert rows[2]["vs_plain"]["n"] == 6 and rows[2]["mean"][0] == pytest.approx(
        np.mean([0.82 + 0.005 * i for i in range(3)])
    )
    assert "| slow | EU-Net 2D | 0,1 |" in format_ablation_table(rows)
    assert seconds_to_reach(plain[0], 0.75) == 20.0 and seconds_to_reach(slow[0], 0.9) is None
    assert val_dice_at(plain[0], 200) == 0.8 and val_dice_at(plain[0], 300) is None
    plain[0] |= {"recipe": {}, "mean_dice": 0.8, "best_step": 200, "precision": "bf16"}
    table = format_reach_table({"run": plain[:1]}, 0.75)
    assert "| run | 0 | bf16 | 1.0 | 200 | 0.3 | 0.8000 (200) |  |" in table  # 20 s = 0.3 min
    assert steps_to_reach(plain[0], 0.9) is None
    two = [
        {"history": [{"step": 100, "val_class_dice": [0.2, 0.4]}]},
        {"history": [{"step": 100, "val_class_dice": [0.4, 0.6]}]},
    ]
    assert class_dice_at(two, 100) == pytest.approx([0.3, 0.5]) and class_dice_at(two, 50) is None


def test_stop_at_dice_ends_the_run_at_the_first_validation_that_reaches_it(tmp_path):
    data = msd_datalist(HIPPOCAMPUS)[:3]
    cfg = StudyConfig(**{**TINY, "max_iters": 4, "stop_at_dice": 0.0})  # any Dice reaches 0
    logs = []
    res = train_run(RunSpec("unet", False, 0), cfg, data[:2], data[2:], tmp_path / "s.pt", log=logs.append)
    assert res["finished"] and res["steps"] == 1 and len(res["history"]) == 1
    assert any("reached 0.0, done" in m for m in logs)
    assert seconds_to_reach(res, 0.0) == res["history"][0]["seconds"]
    assert cfg.recipe()["stop_at_dice"] == 0.0 and "stop_at_dice" not in StudyConfig().recipe()
