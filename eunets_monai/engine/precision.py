"""
Mixed precision on CPU and GPU: which dtype ``torch.autocast`` should use on a device, and an inferer wrapper that
runs any MONAI inferer under it.

- CUDA: float16 (with a ``GradScaler`` in training, as MONAI's engines do when ``amp=True``).
- CPU: bfloat16 where the CPU has native bf16 units (AVX512-BF16 or AMX), off elsewhere: emulated bf16 is slower
  than float32. bfloat16 has float32's exponent range, so CPU training needs no loss scaling.

Weights, optimiser state and losses stay float32 ("fp32 master weights"); only the network's forward (and so its
backward) runs in the low-precision dtype.

``precision`` arguments everywhere in this package take ``"auto"`` (the device's dtype where it has fast support,
else float32), ``"fp32"`` (off), ``"bf16"`` or ``"fp16"`` (forced).

Examples::

    dtype = autocast_dtype("auto", "cpu")          # torch.bfloat16 on a CPU with AVX512-BF16, else None
    with autocast(dtype, "cpu"):
        logits = net(x)
    inferer = AutocastInferer(SlidingWindowInferer((40, 56, 40)), precision="auto")
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = [
    "PRECISIONS",
    "cpu_has_bf16",
    "autocast_dtype",
    "autocast",
    "precision_name",
    "AutocastInferer",
    "memory_format",
    "to_channels_last",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of CPUs with native bfloat16 matrix/dot-product instructions.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's own check, else the AVX512-BF16/AMX cpuinfo flags)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in _BF16_FLAGS)


def autocast_dtype(precision: str | bool | None, device: str | torch.device) -> torch.dtype | None:
    """
    The ``torch.autocast`` dtype for ``precision`` on ``device``, or ``None`` for float32.

    Args:
        precision: one of ``PRECISIONS``; ``True`` means "auto" and ``False``/``None`` "fp32" (the ``amp`` flags of
            MONAI configs).
        device: where the network runs.

    Raises:
        ValueError: an unknown precision, or "fp16" on a CPU (no fast kernels there; "bf16" forced on a CPU without
            bf16 units runs, emulated and slow).
    """
    if precision is True:
        precision = "auto"
    if precision in (False, None):
        precision = "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return torch.float16
        return torch.bfloat16 if kind == "cpu" and cpu_has_bf16() else None
    if precision == "fp16" and kind == "cpu":
        raise ValueError("precision 'fp16' is for GPUs; use 'bf16' (or 'auto') on a CPU.")
    return _DTYPES.get(precision)


def precision_name(dtype: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for an :py:func:`autocast_dtype` result."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(dtype: torch.dtype | None, device: str | torch.device):
    """``torch.autocast`` on ``device``'s type with ``dtype``, or a no-op context for ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def memory_format(spatial_dims: int, channels_last: bool = True) -> torch.memory_format:
    """
    ``torch.channels_last`` (2D) / ``torch.channels_last_3d`` (3D), or ``torch.contiguous_format`` when
    ``channels_last`` is False. On this project's CPU, 2D training runs 1.2-1.3x faster channels-last, also under
    bfloat16; 3D gains nothing under bfloat16 (``scripts/benchmark_precision.py``).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def to_channels_last(obj: torch.nn.Module | torch.Tensor, spatial_dims: int) -> torch.nn.Module | torch.Tensor:
    """A network (in place, as ``nn.Module.to`` does) or a (B, C, *S) tensor in the channels-last memory format."""
    fmt = memory_format(spatial_dims)
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=fmt)
    return obj.to(memory_format=fmt)


def _to_float(out: Any) -> Any:
    """Cast low-precision floating tensors in (nested) network outputs back to float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float64 else out
    if isinstance(out, Mapping):
        return type(out)({k: _to_float(v) for k, v in out.items()})
    if isinstance(out, Sequence) and not isinstance(out, str):
        return type(out)(_to_float(v) for v in out)
    return out


class AutocastInferer(Inferer):
    """
    Runs another MONAI inferer under ``torch.autocast`` and returns float32 outputs, so the loss, metrics and
    post-processing after it stay in float32. MONAI's engines autocast on CUDA only (``amp=True``); this wrapper
    is how the bundles use bfloat16 on CPUs (``train#inferer`` and ``validate#inferer``).

    Args:
        inferer: the inferer to wrap (``SimpleInferer``, ``SlidingWindowInferer``, ``SliceInferer``, ...).
        precision: one of ``PRECISIONS`` (or a bool, see :py:func:`autocast_dtype`); resolved on the device of each
            call's input, so one config serves CPU and GPU.

    Examples::

        inferer = AutocastInferer(SimpleInferer(), precision="auto")
        logits = inferer(torch.rand(2, 1, 64, 64), net)    # bf16 compute on a bf16 CPU, float32 result
    """

    def __init__(self, inferer: Inferer, precision: str | bool | None = "auto") -> None:
        super().__init__()
        if precision not in (*PRECISIONS, True, False, None):
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        self.inferer = inferer
        self.precision = precision

    def __getattr__(self, name: str) -> Any:  # roi_size, overlap, progress, ... of the wrapped inferer
        if name in ("inferer", "precision"):
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in ("inferer", "precision") and "inferer" in self.__dict__ and hasattr(self.inferer, name):
            setattr(self.inferer, name, value)
        else:
            super().__setattr__(name, value)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = autocast_dtype(self.precision, inputs.device)
        with autocast(dtype, inputs.device):
            out = self.inferer(inputs, network, *args, **kwargs)
        return _to_float(out) if dtype is not None else out
