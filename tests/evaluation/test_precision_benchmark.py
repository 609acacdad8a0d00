"""``eunets_monai.evaluation.precision_benchmark`` on tiny settings: what it measures and reports, not the speed."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from eunets_monai.engine.precision import to_channels_last
from eunets_monai.evaluation.precision_benchmark import (
    SETTINGS,
    _alternate,
    format_report,
    inference_benchmark,
    labelled_cases,
    machine_info,
    mask_dice,
    parse_settings,
    training_benchmark,
)
from tests.fixtures import HIPPOCAMPUS

REPO = HIPPOCAMPUS.parents[3]
SHIPPED = REPO / "bundles" / "eunet_hippocampus"
TINY = {"repeats": 3, "steps": 1, "warmup": 0, "channels": (4, 8)}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy machine two threads' barriers make each tiny step wait for a time slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _script():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import benchmark_precision
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return benchmark_precision


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


def test_parse_settings():
    assert parse_settings() == SETTINGS == ("fp32", "bf16", "fp32+cl", "bf16+cl")
    # canonical names, SETTINGS order (fp32 first: the baseline), no repeats
    assert parse_settings(["BF16+channels_last", "bf16", "fp32", "bf16+cl"]) == ("fp32", "bf16", "bf16+cl")
    assert parse_settings("fp32+channels_last") == ("fp32+cl",)
    for bad in (["fp16"], ["bf16+nhwc"], []):
        with pytest.raises(ValueError):
            parse_settings(bad)


def test_to_channels_last():
    x2, x3 = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 4, 5, 6)
    assert to_channels_last(x2, 2).is_contiguous(memory_format=torch.channels_last)
    assert to_channels_last(x3, 3).is_contiguous(memory_format=torch.channels_last_3d)
    conv = to_channels_last(torch.nn.Conv3d(3, 4, 3), 3)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) and not conv.weight.is_contiguous()
    with pytest.raises(ValueError):
        to_channels_last(x2, 1)


def test_alternate_reverses_the_order_every_round():
    calls = []
    out = _alternate(3, lambda s: calls.append(s) or float(len(calls)), ("a", "b", "c"))
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert out == {"a": [1.0, 6.0, 7.0], "b": [2.0, 5.0, 8.0], "c": [3.0, 4.0, 9.0]}


def test_training_benchmark_alternates_settings_and_reports_medians():
    out = training_benchmark(2, 2, (16, 16), **TINY)  # all four settings by default
    assert out["settings"] == list(SETTINGS) and out["baseline"] == "fp32"
    assert set(out["steps_per_s"]) == set(out["rounds"]) == set(out["ratios"]) == set(SETTINGS)
    assert all(len(v) == 3 and min(v) > 0 for v in out["rounds"].values())
    for s in SETTINGS:
        assert out["steps_per_s"][s] == pytest.approx(float(np.median(out["rounds"][s])))
        assert out["ratios"][s] == pytest.approx(out["steps_per_s"][s] / out["steps_per_s"]["fp32"])
    loss = out["loss"]
    assert loss["fp32+cl"] == pytest.approx(loss["fp32"], rel=1e-4)  # the memory format changes no value
    assert loss["bf16+cl"] == pytest.approx(loss["bf16"], rel=0.01)
    assert loss["bf16"] == pytest.approx(loss["fp32"], rel=0.05)  # same start, same batch


def test_training_benchmark_3d_channels_last_without_fp32():
    out = training_benchmark(3, 1, (8, 8, 8), settings=["bf16+channels_last", "bf16"], **TINY)
    assert out["settings"] == ["bf16", "bf16+cl"] and out["baseline"] == "bf16"  # no fp32: the first is the baseline
    assert out["ratios"]["bf16"] == 1.0
    assert out["loss"]["bf16+cl"] == pytest.approx(out["loss"]["bf16"], rel=0.01)
    text = format_report({"machine": machine_info(), "training": [out]})
    assert "bf16+cl/bf16" in text and "unet EU 3D [4, 8]" in text and "1x1x8x8x8" in text


@pytest.mark.skipif(not (SHIPPED / "models" / "model.pt").is_file(), reason="no shipped weights")
def test_inference_benchmark_and_report():
    cases = [c for c in labelled_cases(HIPPOCAMPUS) if c[0].name == "hippocampus_025"]
    out = inference_benchmark(SHIPPED, cases, repeats=1, modes={"mask": ("seg",)}, settings=("bf16+cl", "fp32"))
    mode = out["modes"]["mask"]
    assert out["cases"] == ["hippocampus_025"] and mode["outputs"] == ["seg"]
    assert out["settings"] == ["fp32", "bf16+cl"] and out["baseline"] == "fp32"
    assert min(mode["dice"].values()) > 0.6  # the shipped model segments a case it never saw
    assert set(mode["abs_delta_dice"]) == set(mode["voxels_differing"]) == {"bf16+cl"}  # vs the baseline only
    assert mode["abs_delta_dice"]["bf16+cl"] == pytest.approx(abs(mode["dice"]["bf16+cl"] - mode["dice"]["fp32"]))
    assert 0 <= mode["voxels_differing"]["bf16+cl"] < 0.01 * mode["voxels"]
    assert mode["ratios"]["bf16+cl"] == pytest.approx(
        mode["seconds_per_case"]["fp32"] / mode["seconds_per_case"]["bf16+cl"]
    )
    report = {"machine": machine_info(), "inference": out}
    report["training"] = [training_benchmark(2, 2, (16, 16), **{**TINY, "repeats": 1})]
    text = format_report(report)
    assert "cpu_has_bf16=" in text and "training steps/s" in text and "inference s/case" in text
    assert "bf16+cl/fp32" in text and "fp32+cl/fp32" in text  # one ratio column per setting but the baseline
    assert json.loads(json.dumps(report)) == report  # --json prints it as is


def test_script_help_has_an_example(capsys):
    script = _script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "--threads" in out and "--data-dir" in out and "--json" in out
    assert "--settings" in out and "bf16+cl" in out and "--skip-inference" in out


def test_script_settings_flag(capsys):
    parser = _script().build_parser()
    assert parser.parse_args([]).settings == list(SETTINGS)  # default: all
    assert parser.parse_args(["--settings", "fp32", "bf16+channels_last"]).settings == ["fp32", "bf16+cl"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--settings", "fp16"])
    assert "unknown setting 'fp16'" in capsys.readouterr().err
