"""The uncertainty study's CLI end to end on the in-repo hippocampus sample (tiny models, one fold, two cases)."""

from __future__ import annotations

import json

import pytest

from eunets_monai.evaluation import uncertainty_study as study
from tests.fixtures import HIPPOCAMPUS
from tests.scripts import load_script

cli = load_script("uncertainty_study")


@pytest.mark.slow
def test_quick_run_end_to_end_on_the_sample(tmp_path):
    docs, cache = tmp_path / "docs", tmp_path / "cache"
    argv = ["--quick", "--data-dir", str(HIPPOCAMPUS), "--docs-dir", str(docs), "--cache-dir", str(cache)]
    out = cli.main([*argv, "--folds", "0", "--val-cases", "2", "--members", "2"])
    md = (docs / "uncertainty.md").read_text()
    for needle in ("| heads_mi |", "| exact |", "sketch k=4", "beyond entropy", "failed-case AUROC", "Default map"):
        assert needle in md
    assert "--quick --folds 0 --val-cases 2 --members 2" in md  # the rerun line quotes the flags
    figs = sorted(p.name for p in (docs / "figures").iterdir())
    assert figs == [f"uncertainty_study_{n}.png" for n in ("collaboration", "explanations", "uncertainty")]
    assert not list(docs.rglob("*.tmp"))  # no half-written file left behind
    u = out["summary"]["usefulness"]
    assert set(u) == set(study.METHODS) and out["summary"]["winner"] in study.SINGLE_PASS
    for row in u.values():
        assert 0.0 <= row["auroc"][0] <= 1.0 and 0.0 <= row["ueo"][0] <= 1.0
    comp = out["collaboration"]
    assert comp["methods"]["exact"]["pearson_exact"] == 1.0 and set(comp["methods"]) >= {"summed", "sketch k=4"}
    assert tuple(out["config"]["folds"]) == (0,) and len(out["cases"]) == 2
    # the report can be rewritten from the saved results alone
    results = cache / "results.json"
    json.loads(results.read_text())
    (docs / "uncertainty.md").unlink()
    cli.main(["--from-results", str(results), "--docs-dir", str(docs)])
    assert (docs / "uncertainty.md").read_text() == md


def test_missing_data_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MSD dataset.json"):
        cli.main(["--quick", "--data-dir", str(tmp_path / "nope"), "--docs-dir", str(tmp_path)])
