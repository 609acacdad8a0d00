from pathlib import Path

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


parameter_table = load_script("parameter_table")


def test_readme_parameter_table_is_the_scripts_output():
    table = parameter_table.table()
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "the parameter table in README.md is stale: rerun scripts/parameter_table.py"


def test_every_eu_variant_adds_under_0_1m_parameters():
    script = parameter_table
    for name in script.PAPER:
        assert 0 < script.count(name, True) - script.count(name, False) < 100_000
