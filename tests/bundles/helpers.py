"""Shared paths, tiny overrides and runners for the bundle tests (small widths and patches: 2 CPU cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from eunets_monai.bundles import bundle_variants
from tests.fixtures import HIPPOCAMPUS

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
SCHEMA = BUNDLES / "_shared" / "meta_schema_20240725.json"
SAMPLE = HIPPOCAMPUS

ALL_VARIANTS = bundle_variants(BUNDLES)
BUNDLE_NAMES = [v.name for v in ALL_VARIANTS]
NETWORK_TARGETS = {v.name: v.target for v in ALL_VARIANTS}

# Tiny but real: 3 levels (2 MHEX+ heads, so the uncertainty map exists), widths divisible by the transformer's
# 8 attention heads, 16^3 patches, one patch per volume.
TINY = {
    "channels": "[8, 16, 32]",
    "patch_size": "[16, 16, 16]",
    "num_samples": 1,
    "batch_size": 2,
    "num_workers": 0,
    "cache_rate": 1.0,
}


def configs(bundle: str) -> Path:
    return BUNDLES / bundle / "configs"


def cli(
    args: list[str], cwd: Path, timeout: int = 300, launcher: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` (or ``launcher + args``) and return the finished process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = (launcher or [sys.executable, "-m", "monai.bundle"]) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def overrides(**kwargs) -> list[str]:
    """``--key value`` CLI overrides."""
    out: list[str] = []
    for key, value in kwargs.items():
        out += [f"--{key}", str(value)]
    return out


def train_losses(log: str) -> list[float]:
    """Per-iteration training losses printed by the bundle's StatsHandler."""
    return [float(line.rsplit("train_loss:", 1)[1].split()[0]) for line in log.splitlines() if "train_loss:" in line]


def tiny_patch(bundle: str) -> str:
    """A 16-voxel patch in the bundle's own dimensionality (its configs fix 2D or 3D)."""
    dims = next(v.spatial_dims for v in ALL_VARIANTS if v.name == bundle)
    return str([16] * dims)
