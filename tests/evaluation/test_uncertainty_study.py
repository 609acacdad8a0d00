"""Package-level parts of the uncertainty study: pixel sampling, cached members, per-case scores."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from eunets_monai.data.datalists import kfold_split, msd_datalist
from eunets_monai.evaluation import uncertainty_study as study
from tests.fixtures import HIPPOCAMPUS


def test_sample_pixels_is_stratified_and_seeded():
    pred = np.zeros((6, 6), int)
    label = np.zeros((6, 6), int)
    label[:2, :2] = 1
    a = study.sample_pixels(pred, label, 6, seed=1)
    assert len(set(a.tolist())) == 6 and sum(i in {0, 1, 6, 7} for i in a) == 3
    assert np.array_equal(a, study.sample_pixels(pred, label, 6, seed=1))


def test_members_are_cached_per_fold(tmp_path):
    cfg = replace(study.QUICK, members=1, iterations=1, train_cases=2)
    train, _ = kfold_split(msd_datalist(HIPPOCAMPUS), cfg.n_folds, 0, cfg.seed)
    nets, t = study.get_members(cfg, tmp_path, train[:2])
    assert t > 0 and len(nets) == 1
    again, t2 = study.get_members(cfg, tmp_path, train[:2])
    assert t2 == 0.0
    for a, b in zip(nets[0].state_dict().values(), again[0].state_dict().values()):
        assert torch.equal(a, b)
    assert replace(cfg, fold=1).model_key() != cfg.model_key()


def test_per_case_scores_rank_and_flag_failed_cases():
    results = [
        {"quality": {"heads_mi": {"mean": q}}, "dice": {"single": d}} for q, d in ((0.1, 0.9), (0.2, 0.85), (0.4, 0.6))
    ]
    row = study.per_case_scores(results, "heads_mi", "mean", fail_dice=0.8)
    assert row["spearman"] == 1.0 and row["failed"] == 1 and row["failed_auroc"] == 1.0
