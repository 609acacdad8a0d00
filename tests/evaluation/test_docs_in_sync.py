"""The result tables in README.md and docs/RESULTS.md are the scripts' output for the raw results kept in the repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eunets_monai.evaluation.compare import (
    ablation_rows,
    format_ablation_table,
    format_table,
    load_ablation,
    load_results,
    summarize,
)
from eunets_monai.evaluation.shipping import format_models_table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
STUDIES = sorted(p.name for p in RESULTS.iterdir() if (p / "raw").is_dir())


def _rows(table: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]


@pytest.mark.parametrize("doc", ["README.md", "docs/RESULTS.md"])
def test_shipped_models_table_is_the_json(doc):
    models = json.loads((ROOT / "bundles" / "_shared" / "hippocampus_models.json").read_text())
    text = (ROOT / doc).read_text()
    assert format_models_table(models) in text, f"{doc}: shipped-model table stale, rerun compare_networks.py models"


@pytest.mark.parametrize("study", STUDIES)
def test_study_tables_are_the_raw_results(study):
    # Every row of the study's table appears in RESULTS.md verbatim (the page may split one study into tables).
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    rows = _rows(format_table(summarize(load_results(RESULTS / study))))
    stale = [row for row in rows if row not in text]
    assert not stale, f"docs/RESULTS.md: rows of {study} stale, rerun compare_networks.py table --out {study}"


@pytest.mark.parametrize("manifest", sorted(RESULTS.glob("*/ablation.json")), ids=lambda p: p.parent.name)
def test_ablation_tables_are_the_raw_results(manifest):
    plain, variants = load_ablation(manifest)
    assert plain and all(variants.values()), f"{manifest}: a folder it names has no runs"
    table = format_ablation_table(ablation_rows(plain, variants))
    stale = [row for row in _rows(table) if row not in (ROOT / "docs" / "RESULTS.md").read_text()]
    assert not stale, f"docs/RESULTS.md: ablation rows stale, rerun compare_networks.py ablation --manifest {manifest}"
