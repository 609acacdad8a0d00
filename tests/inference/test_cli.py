"""The ``eunets-infer`` command: bad and foreign inputs, resume after SIGKILL, summary, up-front checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from eunets_monai.inference.cli import main
from eunets_monai.inference.io import TMP_TAG, collect_inputs, safe_case_name
from eunets_monai.networks.nets.unet import UNet
from eunets_monai.uncertainty import case_quality
from tests.fixtures import HIPPOCAMPUS
from tests.inference.conftest import REPO

HELD_BACK = sorted((HIPPOCAMPUS / "imagesTs").glob("*.nii.gz"))


def save(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> Path:
    affine = np.diag([*zooms[:3], 1.0]) if len(zooms) >= 3 else np.diag([*zooms, 1.0, 1.0])
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def summary(out: Path) -> dict[str, dict]:
    rows = json.loads((out / "summary.json").read_text())
    return {row["case"] or row["input"]: row for row in rows}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("eunets-infer: ")]


def test_bad_and_foreign_inputs_each_get_one_line_and_never_cost_the_others(tmp_path, tiny_bundle, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    hippo = nib.load(HELD_BACK[0])
    data = hippo.get_fdata(dtype=np.float32)
    shutil.copy(HELD_BACK[0], src / "good.nii.gz")
    (src / "empty.nii.gz").write_bytes(b"")
    (src / "truncated.nii.gz").write_bytes(HELD_BACK[0].read_bytes()[:5000])
    (src / "text.nii.gz").write_text("this is not an image\n")
    save(src / "twochannels.nii.gz", np.stack([data, data], -1))
    nan = data.copy()
    nan[3, 4, 5] = np.nan
    save(src / "nan.nii.gz", nan)
    save(src / "constant.nii.gz", np.full((20, 20, 20), 7.0))
    save(src / "microscopic.nii.gz", data, zooms=(0.001, 0.001, 0.001))
    save(src / "onevoxel.nii.gz", np.ones((1, 1, 1)))
    save(src / "small.nii.gz", data[10:20, 10:22, 10:19])  # smaller than the 32^3 window: padded
    save(src / "anisotropic.nii.gz", data[:, :, 10:16], zooms=(1.0, 1.0, 6.0))
    (src / "._good.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (src / "notes.txt").write_text("not an image")
    save(src / "twin.nii.gz", data)
    nib.save(nib.Nifti1Image(data, hippo.affine), str(src / "twin.nii"))
    code = main([str(tiny_bundle), str(src), str(tmp_path / "missing"), "-o", str(out), "--outputs", "seg", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    rows = summary(out)
    ok = {"good", "small", "anisotropic", "twin_nii_gz", "twin_nii"}
    assert {name for name, row in rows.items() if row["status"] == "ok"} == ok
    assert "._good" not in rows and "notes" not in rows
    expected = {
        "empty": "empty file",
        "truncated": "truncated or corrupt",
        "text": "not a readable NIfTI",
        "twochannels": "2 channel(s)",
        "nan": "1 NaN",
        "constant": "every voxel has the value 7",
        "microscopic": "implausible voxel spacing",
        "onevoxel": "not an image",
        str(tmp_path / "missing"): "no such file",
    }
    for name, reason in expected.items():
        assert rows[name]["status"] == "failed" and reason in rows[name]["error"], (name, rows[name])
        lines = [line for line in error_lines(err) if name in line]
        assert len(lines) == 1 and reason in lines[0], (name, lines)
    assert "--channel" in rows["twochannels"]["error"] and "wants 1" in rows["twochannels"]["error"]
    assert "anisotropic" in rows["anisotropic"]["warnings"]
    for name in ok:
        seg = nib.load(out / f"{name}_seg.nii.gz")
        assert seg.shape == nib.load(rows[name]["input"]).shape
    assert rows["good"]["volume_ml_anterior"] == pytest.approx(
        float((nib.load(out / "good_seg.nii.gz").get_fdata() == 1).sum()) * 1e-3
    )
    assert not list(out.glob(f".*{TMP_TAG}*"))


def test_channel_option_picks_one_channel_of_a_4d_image(tmp_path, tiny_bundle):
    data = nib.load(HELD_BACK[0]).get_fdata(dtype=np.float32)
    src = save(tmp_path / "multi.nii.gz", np.stack([np.zeros_like(data), data], -1))
    out = tmp_path / "out"
    assert main([str(tiny_bundle), str(src), "-o", str(out), "--outputs", "seg", "--channel", "1", "--quiet"]) == 0
    assert nib.load(out / "multi_seg.nii.gz").shape == data.shape


def test_summary_resume_and_overwrite(tmp_path, tiny_bundle):
    out = tmp_path / "out"
    inputs = [str(p) for p in HELD_BACK[:2]]
    assert main([str(tiny_bundle), *inputs, "-o", str(out), "--quiet"]) == 0
    first = summary(out)
    assert {r["status"] for r in first.values()} == {"ok"}
    names = sorted(first)
    for name in names:
        for key in ("seg", "cam", "uncertainty"):
            assert (out / f"{name}_{key}.nii.gz").is_file()
        unc = nib.load(out / f"{name}_uncertainty.nii.gz").get_fdata()
        assert unc.min() >= 0 and unc.max() <= 1
        assert set(first[name]) >= {"input", "status", "error", "seconds", "shape", "spacing", "volume_ml_anterior"}
        assert "mean_uncertainty_posterior" in first[name]
        seg = nib.load(out / f"{name}_seg.nii.gz").get_fdata()
        expected = case_quality(seg, unc)
        assert first[name]["quality_score"] == pytest.approx(expected["score"], abs=1e-5)
        assert first[name]["uncertainty_in_structure"] == pytest.approx(expected["mean_in_structure"], abs=1e-5)
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"case", "input", "status", "error", "seconds", "volume_ml_anterior"} <= set(header)
    (out / f"{names[1]}_cam.nii.gz").unlink()  # an incomplete case
    assert main([str(tiny_bundle), *inputs, "-o", str(out), "--quiet"]) == 0
    second = summary(out)
    assert second[names[0]]["status"] == "skipped" and second[names[1]]["status"] == "ok"
    assert second[names[0]]["volume_ml_anterior"] == first[names[0]]["volume_ml_anterior"]  # kept from the last run
    assert main([str(tiny_bundle), *inputs, "-o", str(out), "--quiet", "--overwrite"]) == 0
    assert {r["status"] for r in summary(out).values()} == {"ok"}


def test_sigkill_midway_then_resume_redoes_only_unfinished_cases(tmp_path, tiny_bundle):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        shutil.copy(HELD_BACK[i % len(HELD_BACK)], src / f"case{i}.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eunets_monai.infer", str(tiny_bundle), str(src), "-o", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*_uncertainty.nii.gz")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = {p.name[: -len("_uncertainty.nii.gz")] for p in out.glob("*_uncertainty.nii.gz")}
    assert 1 <= len(complete) < 6, "the run was not killed midway"
    # What a kill during a write leaves behind: a temporary of the dead process, and a case missing files.
    (out / f".case5_cam.nii.gz{TMP_TAG}{proc.pid}.nii.gz").write_bytes(b"")
    assert main([str(tiny_bundle), str(src), "-o", str(out), "--quiet"]) == 0
    rows = summary(out)
    assert {n for n, r in rows.items() if r["status"] == "skipped"} == complete
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {f"case{i}" for i in range(6)} - complete
    assert not list(out.glob(".*"))
    assert len(list(out.glob("*.nii.gz"))) == 18


def test_unwritable_output_is_refused_before_any_work(tmp_path, tiny_bundle, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main([str(tiny_bundle), str(HELD_BACK[0]), "-o", str(blocker / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not writable" in err[0] and str(blocker / "out") in err[0]


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders (the path-under-a-file test covers root)"
)
def test_read_only_output_folder_is_refused(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    assert main([str(tiny_bundle), str(HELD_BACK[0]), "-o", str(out)]) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_permission_denied_is_named(tmp_path, tiny_bundle):
    src = tmp_path / "locked.nii.gz"
    shutil.copy(HELD_BACK[0], src)
    src.chmod(0)
    assert main([str(tiny_bundle), str(src), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    assert "permission denied" in summary(tmp_path / "out")["locked"]["error"]


def test_missing_and_mismatched_checkpoints_give_one_line(tmp_path, tiny_bundle, capsys):
    out = str(tmp_path / "out")
    assert main([str(tiny_bundle), str(HELD_BACK[0]), "-o", out, "--ckpt", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint not found" in err[0]
    other = tmp_path / "other.pt"
    torch.save(UNet(3, 1, 3, channels=(4, 8, 16), mhex=True).state_dict(), other)
    assert main([str(tiny_bundle), str(HELD_BACK[0]), "-o", out, "--ckpt", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match" in err[0] and str(other) in err[0] and str(tiny_bundle) in err[0]
    assert "in the checkpoint" in err[0] and "in the network" in err[0]


def test_empty_folder_and_not_a_bundle(tmp_path, tiny_bundle, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tiny_bundle), str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no images in this folder" in err[0]
    assert main([str(tmp_path), str(HELD_BACK[0]), "-o", str(tmp_path / "out")]) == 2
    assert "is not a bundle folder" in capsys.readouterr().err


def test_output_folder_inside_input_folder_is_not_read_back(tmp_path, tiny_bundle):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(HELD_BACK[0], src / "a.nii.gz")
    for _ in range(2):
        assert main([str(tiny_bundle), str(src), "-o", str(src), "--outputs", "seg", "--quiet", "--overwrite"]) == 0
        assert list(summary(src)) == ["a"]


def test_collection_names_and_sources(tmp_path):
    d = tmp_path / "d"
    (d / "x").mkdir(parents=True)
    (d / "y").mkdir()
    data = np.random.default_rng(0).random((8, 8, 8))
    for p in (d / "x" / "img.nii.gz", d / "y" / "img.nii.gz", d / "a.nii.gz", d / "a.nii", d / "weird name!.nii.gz"):
        save(p, data)
    save(d / "a_seg.nii.gz", data)  # an output of an earlier run
    save(d / "._a.nii.gz", data)
    cases, problems = collect_inputs([str(d), str(d / "*.nii.gz")])
    names = sorted(c.name for c in cases)
    assert names == ["a_nii", "a_nii_gz", "weird_name", "x_img", "y_img"] and not problems
    assert safe_case_name("../../etc/passwd") == "etc_passwd" and safe_case_name("..") == "case"
    nrrd = tmp_path / "scan.nrrd"
    nrrd.write_text("NRRD0004\n")
    cases, _ = collect_inputs(str(nrrd))
    assert [c.name for c in cases] == ["scan"]  # an image path, not a JSON datalist
    cases, problems = collect_inputs([str(nrrd), str(tmp_path / "nothing*.nii.gz"), str(tmp_path / "f.txt")])
    assert len(cases) == 1 and [p for p, _ in problems] == [str(tmp_path / "nothing*.nii.gz"), str(tmp_path / "f.txt")]
    msd = {"test": ["imagesTs/hippocampus_025.nii.gz"], "training": [{"image": "imagesTr/hippocampus_004.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(msd))
    assert [c.name for c in collect_inputs(str(tmp_path / "dataset.json"))[0]] == ["hippocampus_025"]
    assert [c.name for c in collect_inputs(str(tmp_path / "dataset.json"), "training")[0]] == ["hippocampus_004"]


def test_help_lists_every_option_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    options = ("--output", "--outputs", "--overwrite", "--device", "--stitch-device", "--roi", "--precision", "--amp")
    for option in (*options, "--quiet"):
        assert option in out
    assert "example" in out


def test_2d_bundle_runs_slice_by_slice_with_all_outputs(tmp_path, tiny_bundle):
    from eunets_monai.inference.cli import load_bundle

    overrides = ["--set", "spatial_dims=2", "--set", "patch_size=[32,32]"]
    network = load_bundle(tiny_bundle, {"spatial_dims": 2, "patch_size": [32, 32]})["network"]
    torch.save(network.state_dict(), tmp_path / "model2d.pt")
    out = tmp_path / "out"
    args = [str(tiny_bundle), str(HELD_BACK[0]), "-o", str(out), "--ckpt", str(tmp_path / "model2d.pt"), "--quiet"]
    assert main(args + overrides) == 0
    shape = nib.load(HELD_BACK[0]).shape
    assert nib.load(out / f"{HELD_BACK[0].name[:-7]}_cam.nii.gz").shape == (*shape, 2)
    assert nib.load(out / f"{HELD_BACK[0].name[:-7]}_uncertainty.nii.gz").shape == shape


def test_window_and_device_options_reach_the_inferer(tmp_path, tiny_bundle, monkeypatch):
    from eunets_monai.inference import runner

    seen = {}
    real_call = runner.VolumePredictor.predict_network_grid

    def spy(self, image):
        seen.update(roi=tuple(self.inferer.roi_size), overlap=self.inferer.overlap, batch=self.inferer.sw_batch_size)
        seen.update(mode=self.inferer.mode, sw_device=str(self.inferer.sw_device), device=str(self.inferer.device))
        return real_call(self, image)

    monkeypatch.setattr(runner.VolumePredictor, "predict_network_grid", spy)
    args = ["--roi", "24", "24", "24", "--overlap", "0.5", "--sw-batch-size", "2", "--blend", "constant"]
    args += ["--device", "cpu", "--stitch-device", "cpu", "--outputs", "seg", "--quiet"]
    assert main([str(tiny_bundle), str(HELD_BACK[0]), "-o", str(tmp_path / "out"), *args]) == 0
    assert seen["roi"] == (24, 24, 24) and seen["batch"] == 2 and seen["mode"] == "constant"
    assert float(np.max(seen["overlap"])) == 0.5 and seen["sw_device"] == seen["device"] == "cpu"
