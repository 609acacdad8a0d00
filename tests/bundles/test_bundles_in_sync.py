"""The bundles are generated from one template (eunets_monai.bundles): committed files must match it."""

from __future__ import annotations

import json

from eunets_monai.bundles import make_variants, render_all
from eunets_monai.bundles.configs import inference_config
from eunets_monai.bundles.docs import metadata, readme
from eunets_monai.bundles.variants import training_calls
from tests.bundles.helpers import ALL_VARIANTS, BUNDLES, REPO
from tests.scripts import load_script


def test_committed_bundles_match_the_generator():
    files = render_all(BUNDLES)
    stale = [str(p.relative_to(REPO)) for p, text in files.items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"bundles out of sync with scripts/generate_bundles.py (run it): {stale}"


def test_every_bundle_has_the_required_files():
    required = [
        "train.json",
        "inference.json",
        "evaluate.json",
        "multi_gpu_train.json",
        "metadata.json",
        "logging.conf",
    ]
    for variant in ALL_VARIANTS:
        root = BUNDLES / variant.name
        for name in required:
            assert (root / "configs" / name).is_file(), root / "configs" / name
        assert (root / "docs" / "README.md").is_file() and (root / "LICENSE").is_file()
        train = json.loads((root / "configs" / "train.json").read_text())
        assert train["network_def"]["_target_"] == variant.target
        assert train["mhex"] is True  # EU variant by default; --mhex false is the plain baseline


def test_bundles_of_one_setting_differ_only_in_their_network_and_texts():
    groups: dict = {}
    for v in ALL_VARIANTS:
        cfg = json.loads((BUNDLES / v.name / "configs" / "train.json").read_text())
        cfg["network_def"].pop("_target_")
        for key in v.arch.network_kwargs:  # network-specific arguments (e.g. attention), also overridable at top level
            assert cfg["network_def"].pop(key) == f"@{key}"
            cfg.pop(key)
        groups.setdefault((v.task, v.spatial_dims, v.channels, v.patch_size), []).append(cfg)
    for cfgs in groups.values():
        assert all(cfg == cfgs[0] for cfg in cfgs[1:])


def test_dice_in_docs_comes_only_from_the_models_file():
    v = {x.name: x for x in make_variants({})}["eunet_hippocampus"]
    assert "Not yet measured" in readme(v) and metadata(v)["eval_metrics"] == {}
    models = {
        "eunet_hippocampus": {
            "spatial_dims": 3,
            "channels": [8, 16],
            "patch_size": [32, 32, 32],
            "val_dice": {"mean": 0.5, "anterior": 0.25, "posterior": 0.75},
        }
    }
    v = {x.name: x for x in make_variants(models)}["eunet_hippocampus"]
    assert metadata(v)["eval_metrics"] == {
        "val_dice_mean": 0.5,
        "val_dice_anterior": 0.25,
        "val_dice_posterior": 0.75,
    }
    assert "| anterior | 0.250 |" in readme(v)
    assert inference_config(v)["inferer"]["_target_"] == "SlidingWindowInferer"


def test_docs_list_every_call_of_a_resumed_training_run():
    calls = ["python scripts/compare_networks.py ship eunet_hippocampus --max-iters 10", "... --max-iters 20"]
    models = {"eunet_hippocampus": {"spatial_dims": 3, "channels": [8, 16], "patch_size": [32, 32, 32]}}
    models["eunet_hippocampus"] |= {"val_dice": {"mean": 0.5}, "command": calls[-1], "commands": calls}
    text = readme({x.name: x for x in make_variants(models)}["eunet_hippocampus"])
    assert "\n".join(calls) in text


def test_calls_of_models_shipped_before_an_option_rerun_with_the_value_they_had():
    call = "python scripts/compare_networks.py ship eunet_hippocampus --max-iters 10"
    legacy = {"command": call, "recipe": {"learning_rate": 0.003}}
    assert training_calls(legacy) == [call + " --head-lr 1 --precision fp32"]
    current = {"commands": [call], "recipe": {"head_lr": 0.01, "precision": "bf16"}}
    assert training_calls(current) == [call]
    named = {"command": call + " --head-lr 10", "recipe": {"learning_rate": 0.003}}  # a flag given stays as given
    assert training_calls(named) == [call + " --head-lr 10 --precision fp32"]


def test_check_mode_reports_a_drifted_file(tmp_path, monkeypatch):
    script = load_script("generate_bundles")
    (tmp_path / "_shared").mkdir()
    (tmp_path / "_shared" / "APACHE-2.0.txt").write_text((BUNDLES / "_shared" / "APACHE-2.0.txt").read_text())
    monkeypatch.setattr(script, "BUNDLES", tmp_path)
    assert script.main([]) == 0  # writes a fresh copy into tmp_path
    assert script.main(["--check"]) == 0
    train = tmp_path / "eunet_spleen" / "configs" / "train.json"
    train.write_text(train.read_text().replace('"max_epochs": 50', '"max_epochs": 51'))
    assert script.main(["--check"]) == 1


def test_shipped_weights_are_not_ignored_by_git():
    import subprocess

    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "bundles/eunet_hippocampus/models/model.pt"], cwd=REPO, capture_output=True
    )
    assert ignored.returncode == 1  # not ignored
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "bundles/eunet_spleen/models/model.pt"], cwd=REPO, capture_output=True
    )
    assert ignored.returncode == 0
