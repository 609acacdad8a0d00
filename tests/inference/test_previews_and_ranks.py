"""``--previews`` (PNG per case and index.html), ``--set`` bundle overrides and the 2-rank torchrun split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from eunets_monai.inference.cli import main
from eunets_monai.inference.previews import preview_planes
from tests.fixtures import HIPPOCAMPUS
from tests.inference.conftest import REPO

HELD_BACK = sorted((HIPPOCAMPUS / "imagesTs").glob("*.nii.gz"))


def test_previews_and_index(tmp_path, tiny_bundle):
    pytest.importorskip("matplotlib")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(HELD_BACK[0], src / "a.nii.gz")
    (src / "broken.nii.gz").write_text("not an image")
    assert main([str(tiny_bundle), str(src), "-o", str(out), "--previews", "--quiet"]) == 1
    png = out / "previews" / "a.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    index = (out / "index.html").read_text()
    assert 'src="previews/a.png"' in index and "broken" in index and "failed" in index
    assert not list((out / "previews").glob(".*"))


def test_preview_planes_go_through_the_largest_structure():
    seg = np.zeros((20, 30, 10), np.uint8)
    seg[2:4, 2:4, 2:4] = 1  # 8 voxels
    seg[10:15, 20:26, 5:8] = 2  # 90 voxels: the largest
    assert preview_planes(seg) == (12, 22, 6, 2)
    assert preview_planes(np.zeros((8, 6, 4), np.uint8)) == (4, 3, 2, 0)


def test_set_overrides_the_bundle_config(tmp_path, tiny_bundle, capsys):
    out = str(tmp_path / "out")
    # The checkpoint holds a 3-class network: a 2-class one no longer matches it, which proves the override applied.
    assert main([str(tiny_bundle), str(HELD_BACK[0]), "-o", out, "--set", "out_channels=2"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main([str(tiny_bundle), str(HELD_BACK[0]), "-o", out, "--set", "spatial_dims"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_cover_every_case_once(tmp_path, tiny_bundle):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(5):
        shutil.copy(HELD_BACK[i % len(HELD_BACK)], src / f"case{i}.nii.gz")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "eunets_monai.infer", str(tiny_bundle), str(src), "-o", str(out), "--outputs", "seg", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "summary.json").read_text())
    assert sorted(r["case"] for r in rows) == [f"case{i}" for i in range(5)]
    assert {r["status"] for r in rows} == {"ok"}
    assert len(list(out.glob("*_seg.nii.gz"))) == 5 and not list(out.glob(".*"))
