"""Small helpers shared across the package: writing files so that no reader ever sees a half-written one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["TMP_TAG", "temporary_name", "atomic_write", "atomic_write_text", "atomic_torch_save"]

# Every temporary file carries this tag and the writer's pid, so a later run can tell a dead run's leftovers
# (eunets_monai.inference.io.clean_stale_temps) from a live run's.
TMP_TAG = ".eunets-tmp-"


def temporary_name(final: Path) -> Path:
    """The hidden temporary name ``final`` is written under, keeping its extension (nibabel reads the format off it)."""
    return final.with_name(f".{final.name}{TMP_TAG}{os.getpid()}{''.join(final.suffixes[-2:])}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """
    ``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: ``path`` is either the old file
    or the complete new one, never a partial write; the temporary is removed if ``write`` fails.

    Examples::

        atomic_write("out/model.pt", lambda tmp: torch.save(state, tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (see :py:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (see :py:func:`atomic_write`)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform.processor()`` or the machine type)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
