"""The thin command line over the study: table rebuilt from raw JSON, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script

compare_networks = load_script("compare_networks")


def _raw(tmp_path: Path, name: str, mhex: bool, dice: dict) -> None:
    run = {"network": "unet", "display": "EU-Net" if mhex else "U-Net", "mhex": mhex, "fold": 0}
    run |= {"spatial_dims": 2, "params": 10, "per_case": dice, "seconds": 30.0}
    (tmp_path / "raw").mkdir(exist_ok=True)
    (tmp_path / "raw" / f"{name}.json").write_text(json.dumps(run))


def test_table_and_figures_from_raw_results(tmp_path, capsys):
    _raw(tmp_path, "unet_plain_2d_fold0", False, {"a": [0.8, 0.7], "b": [0.6, 0.7]})
    _raw(tmp_path, "unet_eu_2d_fold0", True, {"a": [0.85, 0.75], "b": [0.7, 0.7]})
    compare_networks.main(["table", "--out", str(tmp_path), "--figures", str(tmp_path / "fig"), "--prefix", "t"])
    out = capsys.readouterr().out
    assert "| U-Net | 2D |" in out and "| EU-Net | 2D |" in out
    assert (tmp_path / "fig" / "t_dice_per_fold.png").is_file() and (tmp_path / "fig" / "t_eu_vs_plain.png").is_file()


def test_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        compare_networks.main(["table", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"^error: .*dataset\.json"):
        compare_networks.main(["study", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
