import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("parameter_table", ROOT / "scripts" / "parameter_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_parameter_table_is_the_scripts_output():
    table = load_script().table()
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "the parameter table in README.md is stale: rerun scripts/parameter_table.py"


def test_every_eu_variant_adds_under_0_1m_parameters():
    script = load_script()
    for name in script.PAPER:
        assert 0 < script.count(name, True) - script.count(name, False) < 100_000
