"""multi_gpu_train.json: DDP with torchrun, 2 CPU processes on the gloo backend, DistributedSampler."""

from __future__ import annotations

import json
import sys

from tests.bundles.helpers import SAMPLE, TINY, cli, configs, overrides, tiny_patch, train_losses

BUNDLE = "eunet_hippocampus"


def test_ddp_two_cpu_processes(tmp_path):
    config = json.dumps([str(configs(BUNDLE) / "train.json"), str(configs(BUNDLE) / "multi_gpu_train.json")])
    args = {"dataset_dir": SAMPLE, **TINY, "patch_size": tiny_patch(BUNDLE), "max_epochs": 1}
    args.update(ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
    ]
    result = cli(["run", "--config_file", config, *overrides(**args)], cwd=tmp_path, launcher=launcher, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # 9 training cases: the DistributedSampler gives each rank 5 (padded), so 3 iterations of batch 2 per rank
    # (5 without DDP); only rank 0 logs them and writes checkpoints.
    iterations = {line.split("Iter: ", 1)[1].split(" ")[0] for line in log.splitlines() if "Iter: " in line}
    assert iterations == {"1/3", "2/3", "3/3"}, iterations
    assert len(train_losses(log)) == 3
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").is_file()
    assert (tmp_path / "models" / "model.pt").is_file()
