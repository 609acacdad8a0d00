"""
Write every EU-Net MONAI bundle under ``bundles/`` from the one template in ``eunets_monai.bundles``, or check that
the committed bundles match it.

    python scripts/generate_bundles.py          # (re)write bundles/<name>/...
    python scripts/generate_bundles.py --check  # exit 1 and list the files that differ
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eunets_monai.bundles import bundle_variants, render_all

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def _show(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the committed bundles are in sync")
    args = parser.parse_args(argv)
    files = render_all(BUNDLES)
    if args.check:
        stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
        for p in stale:
            print(f"out of sync: {_show(p)}")
        if stale:
            print("run: python scripts/generate_bundles.py")
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} files in {len(bundle_variants(BUNDLES))} bundles under {_show(BUNDLES)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
