"""``eunets_monai.evaluation.precision_benchmark`` on tiny settings: what it measures and reports, not the speed."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from eunets_monai.evaluation.precision_benchmark import (
    format_report,
    inference_benchmark,
    labelled_cases,
    machine_info,
    mask_dice,
    training_benchmark,
)
from tests.fixtures import HIPPOCAMPUS

REPO = HIPPOCAMPUS.parents[3]
SHIPPED = REPO / "bundles" / "eunet_hippocampus"


def test_mask_dice():
    label = np.array([0, 1, 1, 2, 2, 2])
    assert mask_dice(label, label, 3) == 1.0
    assert mask_dice(np.array([0, 1, 0, 2, 2, 0]), label, 3) == pytest.approx(np.mean([2 / 3, 0.8]))
    assert mask_dice(np.zeros(4, int), np.zeros(4, int), 3) == 1.0  # absent from both


def test_labelled_cases_of_the_embedded_sample():
    cases = labelled_cases(HIPPOCAMPUS)
    assert len(cases) == 16 and len({c.name for c, _ in cases}) == 16
    assert all(label.is_file() and label.name == f"{case.name}.nii.gz" for case, label in cases)
    assert "hippocampus_025" in {c.name for c, _ in cases}  # the held-back cases' labels are found in labelsTs
    assert len(labelled_cases(HIPPOCAMPUS, 3)) == 3


def test_training_benchmark_alternates_precisions_and_reports_medians():
    out = training_benchmark(2, 2, (16, 16), repeats=3, steps=1, warmup=0, channels=(4, 8))
    assert set(out["steps_per_s"]) == {"fp32", "bf16"}
    assert all(len(v) == 3 and min(v) > 0 for v in out["rounds"].values())
    assert out["steps_per_s"]["fp32"] == pytest.approx(float(np.median(out["rounds"]["fp32"])))
    assert out["ratio"] == pytest.approx(out["steps_per_s"]["bf16"] / out["steps_per_s"]["fp32"])
    assert out["loss"]["bf16"] == pytest.approx(out["loss"]["fp32"], rel=0.05)  # same start, same batch


@pytest.mark.skipif(not (SHIPPED / "models" / "model.pt").is_file(), reason="no shipped weights")
def test_inference_benchmark_and_report():
    cases = [c for c in labelled_cases(HIPPOCAMPUS) if c[0].name == "hippocampus_025"]
    out = inference_benchmark(SHIPPED, cases, repeats=1, modes={"mask": ("seg",)})
    mode = out["modes"]["mask"]
    assert out["cases"] == ["hippocampus_025"] and mode["outputs"] == ["seg"]
    assert min(mode["dice"].values()) > 0.6  # the shipped model segments a case it never saw
    assert mode["abs_delta_dice"] == pytest.approx(abs(mode["dice"]["bf16"] - mode["dice"]["fp32"]))
    assert 0 <= mode["voxels_differing"] < 0.01 * mode["voxels"]
    report = {"machine": machine_info(), "inference": out}
    report["training"] = [training_benchmark(2, 2, (16, 16), repeats=1, steps=1, warmup=0, channels=(4, 8))]
    text = format_report(report)
    assert "cpu_has_bf16=" in text and "training steps/s" in text and "inference s/case" in text
    assert json.loads(json.dumps(report)) == report  # --json prints it as is


def test_script_help_has_an_example(capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import benchmark_precision
    finally:
        sys.path.remove(str(REPO / "scripts"))
    with pytest.raises(SystemExit) as exit_info:
        benchmark_precision.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "--threads" in out and "--data-dir" in out and "--json" in out
