"""The one atomic-write helper every writer of the package goes through."""

from __future__ import annotations

import pytest
import torch

from eunets_monai.utils import TMP_TAG, atomic_torch_save, atomic_write, atomic_write_text, temporary_name


def test_temporary_name_is_hidden_tagged_and_keeps_the_extension(tmp_path):
    tmp = temporary_name(tmp_path / "case_seg.nii.gz")
    assert tmp.parent == tmp_path and tmp.name.startswith(".case_seg.nii.gz" + TMP_TAG)
    assert tmp.name.endswith(".nii.gz")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "summary.json", "old")
    assert path.read_text() == "old"

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_torch_save_round_trip(tmp_path):
    path = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "model.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
