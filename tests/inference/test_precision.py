"""``--precision`` / ``VolumePredictor(precision=...)``: bfloat16 windows give fp32's masks, float32 maps, clear errors.

The bf16-vs-fp32 comparisons use the weights ``eunet_hippocampus`` ships (a trained 3D EU-Net, widths 16-128): an
untrained network's logits nearly tie everywhere (its mask is one class, or flips wherever bfloat16 rounds), so only
trained margins make "the same mask except near boundaries" a meaningful check.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from eunets_monai.data.presets import get_inferer
from eunets_monai.engine.precision import PRECISIONS, autocast_dtype, cpu_has_bf16, precision_name
from eunets_monai.inference.cli import PRECISION_CHOICES, build_parser, load_bundle, load_weights, main
from eunets_monai.inference.io import CaseInput, read_volume
from eunets_monai.inference.runner import VolumePredictor
from tests.engine.test_precision import cpu_autocast
from tests.fixtures import HIPPOCAMPUS
from tests.inference.conftest import REPO, tiny_predictor

SHIPPED = REPO / "bundles" / "eunet_hippocampus"
HELD_BACK = sorted((HIPPOCAMPUS / "imagesTs").glob("*.nii.gz"))
needs_bf16 = pytest.mark.skipif(
    not cpu_has_bf16(), reason="no native bfloat16 on this CPU (emulated: slow, other rounding)"
)
needs_shipped = pytest.mark.skipif(not (SHIPPED / "models" / "model.pt").is_file(), reason="no shipped weights")


def shipped_predictor(precision: str, outputs=("seg", "cam", "uncertainty")) -> VolumePredictor:
    """The shipped bundle's network, preprocessing and sliding window, as ``eunets-infer`` builds them."""
    bundle = load_bundle(SHIPPED)
    load_weights(bundle["network"], SHIPPED / "models" / "model.pt")
    inferer = get_inferer(
        bundle["preset"], spatial_dims=bundle["spatial_dims"], roi_size=bundle["patch_size"], mode="gaussian"
    )
    return VolumePredictor(bundle["network"], bundle["preprocessing"], inferer, outputs, "cpu", precision=precision)


def assert_masks_agree(fp32: np.ndarray, bf16: np.ndarray) -> None:
    assert fp32.shape == bf16.shape and fp32.dtype == bf16.dtype == np.uint8
    counts = np.bincount(fp32.ravel(), minlength=3)
    assert (counts[1:] > 500).all(), counts  # a real two-class hippocampus mask, not an empty one
    differ = int((fp32 != bf16).sum())
    assert differ <= 0.002 * fp32.size, f"{differ} of {fp32.size} voxels differ"
    assert differ <= 0.01 * int(counts[1:].sum()), f"{differ} voxels differ, {counts[1:].sum()} foreground"


@needs_bf16
@needs_shipped
def test_bf16_gives_fp32_mask_cam_and_uncertainty_within_rounding():
    volume = read_volume(CaseInput("c", str(HELD_BACK[0])))
    fp32, bf16 = shipped_predictor("fp32"), shipped_predictor("bf16")
    assert (fp32.precision, fp32.dtype) == ("fp32", None)
    assert (bf16.precision, bf16.dtype) == ("bf16", torch.bfloat16)
    a, b = fp32(volume), bf16(volume)
    assert set(a) == set(b) == {"seg", "cam", "uncertainty"}
    assert_masks_agree(a["seg"], b["seg"])
    for key, tolerance in (("cam", 0.05), ("uncertainty", 0.1)):
        assert b[key].dtype == np.float32 and b[key].min() >= 0.0 and b[key].max() <= 1.0
        assert float(np.abs(a[key] - b[key]).max()) < tolerance, key
        assert float(np.abs(a[key] - b[key]).mean()) < tolerance / 10, key


@needs_bf16
@needs_shipped
def test_eunets_infer_precision_bf16_writes_fp32_masks(tmp_path, capsys):
    case = HELD_BACK[1]
    masks = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main([str(SHIPPED), str(case), "-o", str(out), "--outputs", "seg", "--precision", precision]) == 0
        assert f"seg; {precision}; 1 process(es)" in capsys.readouterr().err  # the run says what it computed in
        masks[precision] = np.asarray(nib.load(out / f"{case.name[:-7]}_seg.nii.gz").dataobj)
    assert_masks_agree(masks["fp32"], masks["bf16"])


def test_the_network_runs_under_the_asked_autocast_and_the_maps_are_float32():
    predictor = tiny_predictor(outputs=("seg", "cam", "uncertainty"), precision="bf16")
    seen = []
    conv = next(m for m in predictor.network.modules() if isinstance(m, nn.Conv3d))  # forward_explained runs it too
    hook = conv.register_forward_hook(lambda module, args, out: seen.append(cpu_autocast()))
    try:
        maps = predictor.predict_network_grid(torch.rand(1, 24, 24, 24))
    finally:
        hook.remove()
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert not cpu_autocast()[0]
    assert {k: v.dtype for k, v in maps.items()} == dict.fromkeys(("probs", "cam", "uncertainty"), torch.float32)
    torch.testing.assert_close(maps["probs"].sum(0), torch.ones(24, 24, 24))  # softmax in float32


def test_fp32_runs_without_autocast():
    predictor = tiny_predictor(precision="fp32")
    seen = []
    predictor.network.register_forward_hook(lambda module, args, out: seen.append(cpu_autocast()[0]))
    predictor.predict_network_grid(torch.rand(1, 24, 24, 24))
    assert seen and not any(seen)
    assert (predictor.precision, predictor.dtype) == ("fp32", None)


def test_default_precision_is_fp32():
    assert tiny_predictor().precision == "fp32"


def test_bad_precisions_are_refused_by_the_predictor():
    with pytest.raises(ValueError, match="'fp16' is for GPUs"):
        tiny_predictor(precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_predictor(precision="half")


def test_cli_precision_option_and_amp_alias():
    assert PRECISION_CHOICES == PRECISIONS
    parse = build_parser().parse_args
    base = ["BUNDLE", "scan.nii.gz", "-o", "out"]
    assert parse(base).precision == "auto"
    assert parse([*base, "--precision", "fp32"]).precision == "fp32"
    assert parse([*base, "--amp"]).precision == "auto"
    with pytest.raises(SystemExit):
        parse([*base, "--precision", "float16"])


def test_cli_fp16_on_cpu_is_one_line_before_any_work(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "out"
    assert main([str(tiny_bundle), str(HELD_BACK[0]), "-o", str(out), "--device", "cpu", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "eunets-infer: error: --precision fp16 on cpu: precision 'fp16' is for GPUs; use 'bf16' (or 'auto') on a CPU."
    ]
    assert not out.exists()


def test_cli_passes_the_precision_to_the_predictor(tmp_path, tiny_bundle, monkeypatch):
    from eunets_monai.inference import runner

    seen = []
    real_call = runner.VolumePredictor.predict_network_grid

    def spy(self, image):
        seen.append(self.precision)
        return real_call(self, image)

    monkeypatch.setattr(runner.VolumePredictor, "predict_network_grid", spy)
    args = [str(tiny_bundle), str(HELD_BACK[0]), "--outputs", "seg", "--quiet", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "a"), "--precision", "bf16"]) == 0
    assert main([*args, "-o", str(tmp_path / "b"), "--precision", "fp32"]) == 0
    assert main([*args, "-o", str(tmp_path / "c")]) == 0  # default: auto
    assert seen == ["bf16", "fp32", precision_name(autocast_dtype("auto", "cpu"))]
