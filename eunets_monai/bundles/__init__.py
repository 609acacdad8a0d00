"""
Generating this project's MONAI bundles from one template: every bundle under ``bundles/`` is :py:func:`render_all`'s
output (``scripts/generate_bundles.py`` writes or checks them; ``tests/bundles/test_bundles_in_sync.py`` fails when
the committed files drift).

Each bundle gets ``configs/{train,evaluate,multi_gpu_train,inference,metadata}.json``, ``configs/logging.conf``,
``docs/README.md`` and ``LICENSE``. Two bundles per architecture: ``<arch>_spleen`` (3D, the configuration to train
on MSD Task09) and ``<arch>_hippocampus`` (shipped weights). A hippocampus bundle's network setting and measured Dice
come from ``bundles/_shared/hippocampus_models.json`` (written by the network study) when it has an entry;
otherwise a small default is used and its docs say "not yet measured".

Examples::

    files = render_all("bundles")  # absolute path -> content
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
"""

from __future__ import annotations

import json
from pathlib import Path

from eunets_monai.bundles.configs import evaluate_config, inference_config, multi_gpu_config, train_config
from eunets_monai.bundles.docs import LOGGING_CONF, license_text, metadata, readme
from eunets_monai.bundles.variants import ARCHS, Arch, Variant, load_models, make_variants

__all__ = ["ARCHS", "Arch", "Variant", "bundle_variants", "load_models", "make_variants", "render", "render_all"]


def render(v: Variant, shared_dir: str | Path) -> dict[str, str]:
    """
    Every file of one bundle.

    Args:
        v: the bundle.
        shared_dir: the bundles' ``_shared`` folder (its ``APACHE-2.0.txt`` goes into ``LICENSE``).

    Returns:
        path relative to the bundle folder -> content.
    """

    def dump(obj: dict) -> str:
        return json.dumps(obj, indent=4) + "\n"

    return {
        "configs/train.json": dump(train_config(v)),
        "configs/multi_gpu_train.json": dump(multi_gpu_config()),
        "configs/evaluate.json": dump(evaluate_config()),
        "configs/inference.json": dump(inference_config(v)),
        "configs/metadata.json": dump(metadata(v)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(v),
        "LICENSE": license_text(shared_dir),
    }


def bundle_variants(bundles_dir: str | Path) -> tuple[Variant, ...]:
    """The bundles of ``bundles_dir``, with the hippocampus models recorded in its ``_shared`` folder."""
    return make_variants(load_models(bundles_dir))


def render_all(bundles_dir: str | Path) -> dict[Path, str]:
    """Every generated file of every bundle under ``bundles_dir``: path -> content."""
    bundles_dir = Path(bundles_dir)
    return {
        bundles_dir / v.name / rel: text
        for v in bundle_variants(bundles_dir)
        for rel, text in render(v, bundles_dir / "_shared").items()
    }
