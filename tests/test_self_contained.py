"""
The repository stands on its own: no code, config or test points at data outside the clone (this building keeps
real data in ``../shared/data``; a user's clone has nothing there). Documentation may still name such folders as
examples of where to put data, so only code and configs are searched.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEARCHED = ("eunets_monai", "scripts", "bundles", "tests", ".ci")
SUFFIXES = {".py", ".json", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".conf"}
OUTSIDE = re.compile(r"\.\./shared\b|[\"'/]shared[\"']?\s*/\s*[\"']?data\b")


def code_files() -> list[Path]:
    files = [p for d in SEARCHED for p in (REPO / d).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return [p for p in files if ".venv" not in p.parts and p != Path(__file__).resolve()]


def test_no_code_or_config_points_outside_the_clone():
    hits = []
    for path in code_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_the_search_finds_what_it_should():
    # the pattern itself: it must catch the forms used before this test existed, and pass ordinary code
    assert OUTSIDE.search('DATA = REPO / ".." / "shared" / "data"')
    assert OUTSIDE.search('msd_datalist("../shared/data/Task04_Hippocampus")')
    assert not OUTSIDE.search('SCHEMA = BUNDLES / "_shared" / "meta_schema.json"')
    assert not OUTSIDE.search("shared by the U-Net family")
