"""The five bundles are generated from one template (scripts/generate_bundles.py): committed files must match it."""

from __future__ import annotations

import json

from tests.bundles.helpers import BUNDLES, REPO, generate_bundles


def test_committed_bundles_match_the_generator():
    files = generate_bundles.render_all()
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
    for variant in generate_bundles.VARIANTS:
        root = BUNDLES / variant.name
        for name in required:
            assert (root / "configs" / name).is_file(), root / "configs" / name
        assert (root / "docs" / "README.md").is_file() and (root / "LICENSE").is_file()
        train = json.loads((root / "configs" / "train.json").read_text())
        assert train["network_def"]["_target_"] == variant.target
        assert train["mhex"] is True  # EU variant by default; --mhex false is the plain baseline


def test_bundles_differ_only_in_their_network_and_texts():
    trains = []
    for v in generate_bundles.VARIANTS:
        cfg = json.loads((BUNDLES / v.name / "configs" / "train.json").read_text())
        cfg["network_def"].pop("_target_")
        for key, _ in v.network_args:  # network-specific arguments (e.g. attention), also overridable at top level
            assert cfg["network_def"].pop(key) == f"@{key}"
            cfg.pop(key)
        trains.append(cfg)
    assert all(cfg == trains[0] for cfg in trains[1:])


def test_check_mode_reports_a_drifted_file(tmp_path, monkeypatch):
    monkeypatch.setattr(generate_bundles, "BUNDLES", tmp_path)
    assert generate_bundles.main([]) == 0  # writes a fresh copy into tmp_path
    assert generate_bundles.main(["--check"]) == 0
    train = tmp_path / "eunet_spleen" / "configs" / "train.json"
    train.write_text(train.read_text().replace('"max_epochs": 50', '"max_epochs": 51'))
    assert generate_bundles.main(["--check"]) == 1
