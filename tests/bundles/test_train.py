"""
The user commands of ``eunet_hippocampus`` end to end, on the embedded real hippocampus subset with tiny widths: the
missing-data error, a short training run that lowers the loss and writes best/last checkpoints and TensorBoard
logs, resuming from the last checkpoint, evaluate.json, and inference.json on the held-back cases (outputs on the
input's grid). Every command runs from a scratch working directory: bundles find their folder themselves.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tests.bundles.helpers import SAMPLE, TINY, cli, configs, overrides, tiny_patch, train_losses

# One training run (module fixture) serves all tests here: keep them on one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("bundle_train")

BUNDLE = "eunet_hippocampus"
HIPPO = {"dataset_dir": SAMPLE, "learning_rate": 0.01, **TINY, "patch_size": tiny_patch(BUNDLE)}


def run_train(workdir, *extra, config="train.json", **kwargs):
    args = {**HIPPO, "ckpt_dir": workdir / "models", "output_dir": workdir / "eval", **kwargs}
    return cli(["run", "--config_file", configs(BUNDLE) / config, *overrides(**args), *extra], cwd=workdir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("train")
    result = run_train(workdir, max_epochs=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result.stdout + result.stderr


def test_missing_data_stops_with_one_line(tmp_path):
    missing = tmp_path / "no_such_dir" / "Task09_Spleen"
    result = cli(["run", "--config_file", configs(BUNDLE) / "train.json", "--dataset_dir", missing], cwd=tmp_path)
    assert result.returncode == 1
    last = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert last.startswith("error: MSD data not found:") and str(missing / "dataset.json") in last
    assert "medicaldecathlon.com" in last and "--dataset_dir" in last
    assert "Traceback" not in result.stderr


def test_training_lowers_the_loss_and_saves_checkpoints(trained):
    workdir, log = trained
    losses = train_losses(log)
    assert len(losses) == 10, log[-2000:]  # 9 training cases of 12 (5-fold split), batch 2: 5 iterations x 2 epochs
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert "val_mean_dice" in log
    assert (workdir / "models" / "model.pt").is_file()  # best validation Dice
    assert (workdir / "models" / "checkpoint_epoch=2.pt").is_file()  # last epoch, full state
    assert list((workdir / "eval").glob("events.out.tfevents.*"))


def test_resume_continues_from_the_last_checkpoint(trained):
    workdir, _ = trained
    result = run_train(workdir, max_epochs=3, resume=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    epochs = {line.split("Epoch: ", 1)[1].split(",")[0] for line in log.splitlines() if "Epoch: " in line}
    assert epochs == {"3/3"}, epochs  # epochs 1 and 2 were not trained again
    assert (workdir / "models" / "checkpoint_epoch=3.pt").is_file()


def test_evaluate_writes_per_case_dice(trained):
    workdir, _ = trained
    result = cli(
        [
            "run",
            "--config_file",
            json.dumps([str(configs(BUNDLE) / "train.json"), str(configs(BUNDLE) / "evaluate.json")]),
            *overrides(**HIPPO, ckpt_dir=workdir / "models", output_dir=workdir / "evaluation"),
        ],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = (workdir / "evaluation" / "val_mean_dice_raw.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + the 3 validation cases of fold 0


def test_inference_writes_outputs_aligned_with_the_inputs(trained, tmp_path):
    workdir, _ = trained
    out = tmp_path / "pred"
    args = {**HIPPO, "input_dir": SAMPLE / "imagesTs", "ckpt_path": workdir / "models" / "model.pt", "output_dir": out}
    result = cli(["run", "--config_file", configs(BUNDLE) / "inference.json", *overrides(**args)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    images = sorted((SAMPLE / "imagesTs").glob("*.nii.gz"))
    assert len(images) == 4
    for image_path in images:
        case = image_path.name[: -len(".nii.gz")]
        image = nib.load(image_path)
        for suffix, channels in (("seg", None), ("cam", 3), ("uncertainty", None)):
            out_img = nib.load(out / f"{case}_{suffix}.nii.gz")
            expected = image.shape if channels is None else (*image.shape, channels)
            assert out_img.shape == expected, (suffix, out_img.shape)
            np.testing.assert_allclose(out_img.affine, image.affine, atol=1e-4)
        seg = np.asarray(nib.load(out / f"{case}_seg.nii.gz").dataobj)
        assert set(np.unique(seg)) <= {0, 1, 2}
        unc = np.asarray(nib.load(out / f"{case}_uncertainty.nii.gz").dataobj)
        assert unc.min() >= 0 and unc.max() <= 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
