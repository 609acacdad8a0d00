"""``eunets_monai.engine.precision``: the autocast dtype per precision and device, and ``AutocastInferer``."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from torch import nn

import eunets_monai.engine.precision as precision_module
from eunets_monai.engine.precision import (
    PRECISIONS,
    AutocastInferer,
    autocast,
    autocast_dtype,
    cpu_has_bf16,
    memory_format,
    precision_name,
    to_channels_last,
)

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16 units")


def cpu_autocast() -> tuple[bool, torch.dtype]:
    """Whether CPU autocast is on here, and its dtype (torch >= 2.4 API, with the older names for torch 2.2/2.3)."""
    if hasattr(torch, "get_autocast_dtype"):
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


class Recorder(nn.Module):
    """A conv that records the autocast state inside its forward and returns its output as a tensor, list or dict."""

    def __init__(self, kind: str = "tensor") -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.kind = kind
        self.seen: list[tuple[bool, torch.dtype, torch.dtype]] = []

    def forward(self, x: torch.Tensor):
        y = self.conv(x)
        self.seen.append((*cpu_autocast(), y.dtype))
        index = torch.zeros(y.shape[0], dtype=torch.long)  # not floating point: passed through as is
        if self.kind == "list":
            return [y, y[:, :1]]
        if self.kind == "dict":
            return {"logits": y, "aux": (y[:, :1],), "index": index}
        return y


@pytest.mark.parametrize(
    "precision, device, expected",
    [
        ("fp32", "cpu", None),
        ("fp32", "cuda", None),
        ("bf16", "cpu", torch.bfloat16),  # forced: runs even where it is emulated
        ("bf16", "cuda", torch.bfloat16),
        ("fp16", "cuda", torch.float16),
        ("fp16", "cuda:1", torch.float16),
        ("auto", "cuda", torch.float16),
        (True, "cuda", torch.float16),  # the amp flag of MONAI configs: True = auto
        (False, "cuda", None),
        (None, "cuda", None),
        (False, "cpu", None),
        (None, "cpu", None),
        ("auto", "mps", None),  # no fast low-precision path known here: float32
    ],
)
def test_autocast_dtype_table(precision, device, expected):
    assert autocast_dtype(precision, device) is expected
    assert autocast_dtype(precision, torch.device(device)) is expected


@pytest.mark.parametrize("has_bf16, expected", [(True, torch.bfloat16), (False, None)])
@pytest.mark.parametrize("precision", ["auto", True])
def test_auto_on_cpu_is_bf16_only_with_bf16_units(monkeypatch, precision, has_bf16, expected):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: has_bf16)
    assert autocast_dtype(precision, "cpu") is expected


def test_auto_on_this_cpu_follows_its_bf16_units():
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if cpu_has_bf16() else None)


def test_fp16_on_cpu_and_unknown_precisions_are_refused():
    with pytest.raises(ValueError, match="'fp16' is for GPUs; use 'bf16'"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="'fp16' is for GPUs"):
        autocast_dtype("fp16", torch.device("cpu"))
    for bad in ("float16", "FP32", "fp8", "", 1):
        with pytest.raises(ValueError, match="precision must be one of"):
            autocast_dtype(bad, "cuda")


def test_precision_names_round_trip():
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    for name in ("fp32", "bf16", "fp16"):
        assert precision_name(autocast_dtype(name, "cuda")) == name
    assert precision_name(None) == "fp32"
    assert precision_name(torch.float32) == "fp32"


@pytest.fixture
def fresh_bf16_check():
    precision_module.cpu_has_bf16.cache_clear()
    yield
    precision_module.cpu_has_bf16.cache_clear()  # the next caller sees this machine again


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [("flags : fpu sse avx512f avx512_bf16\n", True), ("flags : fpu amx_bf16 amx_tile\n", True)]
    + [("flags : fpu sse avx2 avx512f\n", False), (None, False)],
)
def test_cpu_has_bf16_falls_back_to_cpuinfo_flags(monkeypatch, fresh_bf16_check, cpuinfo, expected):
    def no_onednn_check():
        raise RuntimeError("not built with oneDNN")

    class FakePath:
        def __init__(self, path: str) -> None:
            assert path == "/proc/cpuinfo"

        def read_text(self) -> str:
            if cpuinfo is None:
                raise OSError("no /proc here")
            return cpuinfo

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", no_onednn_check, raising=False)
    monkeypatch.setattr(precision_module, "Path", FakePath)
    assert precision_module.cpu_has_bf16() is expected


def test_cpu_has_bf16_is_a_cached_bool():
    assert isinstance(cpu_has_bf16(), bool)
    assert cpu_has_bf16() is cpu_has_bf16()


def test_autocast_context():
    with autocast(None, "cpu"):
        assert not cpu_autocast()[0]
    with autocast(torch.bfloat16, torch.device("cpu")):
        assert cpu_autocast() == (True, torch.bfloat16)
        assert nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    assert not cpu_autocast()[0]


@pytest.mark.parametrize("kind", ["tensor", "list", "dict"])
def test_autocast_inferer_runs_bf16_and_returns_float32(kind):
    torch.manual_seed(0)
    net = Recorder(kind)
    x = torch.rand(2, 1, 8, 8)
    out = AutocastInferer(SimpleInferer(), precision="bf16")(x, net)
    assert net.seen == [(True, torch.bfloat16, torch.bfloat16)]  # the network ran in bfloat16
    assert not cpu_autocast()[0]  # and only inside the call
    if kind == "tensor":
        parts = [out]
    elif kind == "list":
        assert isinstance(out, list) and len(out) == 2
        parts = out
    else:
        assert isinstance(out, dict) and set(out) == {"logits", "aux", "index"}
        assert isinstance(out["aux"], tuple)
        assert out["index"].dtype == torch.long
        parts = [out["logits"], *out["aux"]]
    assert all(p.dtype == torch.float32 for p in parts)
    with torch.no_grad():
        reference = net.conv(x)
    torch.testing.assert_close(parts[0], reference, atol=0.05, rtol=0.05)  # bfloat16 rounding only


@pytest.mark.parametrize("precision", ["fp32", False, None])
def test_autocast_inferer_fp32_is_a_plain_call(precision):
    net = Recorder("dict")
    out = AutocastInferer(SimpleInferer(), precision=precision)(torch.rand(1, 1, 8, 8), net)
    [(enabled, _, dtype)] = net.seen
    assert not enabled and dtype == torch.float32
    assert out["logits"].dtype == torch.float32


@needs_bf16
@pytest.mark.parametrize("precision", ["auto", True])
def test_autocast_inferer_auto_is_bf16_on_this_cpu(precision):
    net = Recorder()
    assert AutocastInferer(SimpleInferer(), precision)(torch.rand(1, 1, 8, 8), net).dtype == torch.float32
    assert net.seen[0][:2] == (True, torch.bfloat16)


def test_autocast_inferer_wraps_a_sliding_window_inferer():
    sliding = SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2, overlap=0.25)
    inferer = AutocastInferer(sliding, precision="bf16")
    assert inferer.roi_size == (8, 8) and inferer.sw_batch_size == 2 and inferer.overlap == 0.25
    inferer.sw_batch_size = 3  # set on the wrapped inferer, where it takes effect
    assert sliding.sw_batch_size == 3 and "sw_batch_size" not in inferer.__dict__
    with pytest.raises(AttributeError):
        inferer.no_such_setting  # noqa: B018
    net = Recorder()
    out = inferer(torch.rand(1, 1, 20, 12), net)
    assert out.shape == (1, 2, 20, 12) and out.dtype == torch.float32
    assert net.seen and all(s == (True, torch.bfloat16, torch.bfloat16) for s in net.seen)


def test_autocast_inferer_rejects_unknown_precisions_and_fp16_on_cpu():
    for bad in ("fp8", "float32", "yes"):
        with pytest.raises(ValueError, match="precision must be one of"):
            AutocastInferer(SimpleInferer(), precision=bad)
    inferer = AutocastInferer(SimpleInferer(), precision="fp16")  # resolved per call: fine for a GPU input
    with pytest.raises(ValueError, match="'fp16' is for GPUs"):
        inferer(torch.rand(1, 1, 8, 8), Recorder())


def test_memory_format_per_dimensionality():
    assert memory_format(2) == torch.channels_last and memory_format(3) == torch.channels_last_3d
    assert memory_format(3, channels_last=False) == torch.contiguous_format
    with pytest.raises(ValueError, match="spatial_dims"):
        memory_format(1)
    x = to_channels_last(torch.rand(2, 3, 4, 5, 6), 3)
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
