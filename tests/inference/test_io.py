"""Case-as-a-unit writes, stale temporaries, safe output names."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from eunets_monai.inference import io as io_module
from eunets_monai.inference.io import (
    TMP_TAG,
    CaseInput,
    case_complete,
    clean_stale_temps,
    output_paths,
    read_volume,
    write_case,
)
from tests.fixtures import HIPPOCAMPUS

HIPPO = sorted((HIPPOCAMPUS / "imagesTs").glob("*.nii.gz"))[0]


def test_a_failure_while_writing_a_case_leaves_the_old_case_whole(tmp_path, monkeypatch):
    volume = read_volume(CaseInput("h", str(HIPPO)))
    seg = np.zeros((1, *volume.spatial_shape), np.uint8)
    unc = np.zeros((1, *volume.spatial_shape), np.float32)
    write_case(tmp_path, "h", {"seg": (seg, np.uint8), "uncertainty": (unc, np.float32)}, volume)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save, calls = nib.save, []

    def failing_second_save(image, filename):
        calls.append(filename)
        if len(calls) == 2:
            open(filename, "wb").close()  # killed mid-write: an empty temporary
            raise OSError("disk full")
        real_save(image, filename)

    monkeypatch.setattr(io_module.nib, "save", failing_second_save)
    with pytest.raises(OSError, match="disk full"):
        write_case(tmp_path, "h", {"seg": (seg + 1, np.uint8), "uncertainty": (unc, np.float32)}, volume)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old case intact, no temporaries
    assert case_complete(tmp_path, "h", ("seg", "uncertainty"))


def test_stale_temporaries_of_dead_runs_only_are_removed(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = tmp_path / f".a_seg.nii.gz{TMP_TAG}{dead}.nii.gz"
    live = tmp_path / f".b_seg.nii.gz{TMP_TAG}{os.getppid()}.nii.gz"
    stale.write_bytes(b"")
    live.write_bytes(b"")
    assert clean_stale_temps(tmp_path) == 1
    assert not stale.exists() and live.exists()


def test_output_names_never_leave_the_output_folder(tmp_path):
    assert output_paths(tmp_path, "case_1", ["seg"])["seg"] == tmp_path.resolve() / "case_1_seg.nii.gz"
    for bad in ("../x", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="unsafe case name"):
            output_paths(tmp_path, bad, ["seg"])
