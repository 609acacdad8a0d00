"""
The bundles this project ships: one :py:class:`Arch` per EU-Net architecture, one :py:class:`Variant` (bundle) per
architecture and task, and the versions and references every bundle's metadata states.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = "0.2.0"
CHANGELOG = {
    "0.2.0": "servable unchanged by MONAI Label: inference postprocessing (uint8 label map on the input grid), "
    "transforms spelled out in the configs, one bundle per task and setting (hippocampus bundles), data checked "
    "only where the datalist is built, resume explicit (--resume true), bundle_root '.'",
    "0.1.0": "first release: EU variant (MHEX+ heads) and plain baseline, 3D and 2D, any MSD task",
}
# Versions the bundles were generated and tested with (metadata.json).
# MONAI 1.5.2 is what MONAI Label 0.8.5 runs on (1.6 breaks its image-path input in Spacingd); the project's own
# tests also pass on MONAI 1.6.1 / torch 2.13.0 (pyproject.toml: monai>=1.5.2,<1.7).
VERSIONS = {"monai_version": "1.5.2", "pytorch_version": "2.14.1", "numpy_version": "1.26.4"}
SUPPORTED_APPS = {"monailabel": "0.8.5"}
# As in the MONAI Label environment the bundles are tested in (scripts/monailabel_constraints.txt).
REQUIRED_PACKAGES = {"eunets-monai": "0.1.0", "nibabel": "5.4.2", "pytorch-ignite": "0.4.11", "tensorboard": "2.21.0"}

PAPER = (
    "Sun, Lio: Explainable U-Nets (EU-Nets) with MHEX+ heads, equivalent-kernel CAMs and collaboration-gradient "
    "uncertainty (see the eunets-monai README)"
)
MSD = "Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 13, 4128 (2022)"


@dataclass(frozen=True)
class Arch:
    """One EU-Net architecture (a bundle per task is generated from it)."""

    prefix: str  # bundle folder is <prefix>_<task>
    target: str  # network class, importable from the installed eunets_monai
    arch: str  # plain architecture name
    eu: str  # EU name
    reference: str
    # Extra network arguments of this architecture, for every bundle of it: each is a top-level config key (so
    # ``--attention global`` overrides it) that network_def refers to.
    network_kwargs: dict = field(default_factory=dict, compare=False)


# Skip attention of the attention networks: "auto" = the papers' global attention in 2D, the linear-cost "reduced"
# (keys/values pooled onto 8^3 cells) in 3D, where global attention over a 96^3 patch's 48^3 skip is unaffordable.
ATTENTION = {"attention": "auto"}


ARCHS: tuple[Arch, ...] = (
    Arch("eunet", "eunets_monai.networks.nets.unet.UNet", "U-Net", "EU-Net", "Ronneberger et al., U-Net, MICCAI 2015"),
    Arch(
        "eunetpp",
        "eunets_monai.networks.nets.unetplusplus.UNetPlusPlus",
        "U-Net++",
        "EU-Net++",
        "Zhou et al., UNet++, DLMIA 2018",
    ),
    Arch(
        "ahf_eunet",
        "eunets_monai.networks.nets.ahf_unet.AHFUNet",
        "AHF-U-Net",
        "AHF-EU-Net",
        "AHF-U-Net (attention + hybrid fusion U-Net), see the eunets-monai papers folder",
    ),
    Arch(
        "eunet_transformer",
        "eunets_monai.networks.nets.unet_transformer.UNetTransformer",
        "U-Net Transformer",
        "EU-Net Transformer",
        "Petit et al., U-Net Transformer, MLMI 2021",
        ATTENTION,
    ),
    Arch(
        "efen_eu",
        "eunets_monai.networks.nets.efen.EFEN",
        "EFEN",
        "EFEN-EU",
        "EFEN (edge-feature enhancement network), see the eunets-monai papers folder",
        ATTENTION,
    ),
)


@dataclass(frozen=True)
class Variant:
    """One bundle: an architecture on one task, with the network setting it is served with (no CLI overrides)."""

    arch: Arch
    task: str  # eunets_monai.data.presets task name
    spatial_dims: int
    channels: tuple[int, ...]
    patch_size: tuple[int, ...]  # training patch = inference window (2 values for a 2D network)
    measured: dict = field(default_factory=dict, compare=False)  # from hippocampus_models.json, else empty

    @property
    def name(self) -> str:
        return f"{self.arch.prefix}_{self.task}"

    @property
    def target(self) -> str:
        return self.arch.target


# Written by the network study (``scripts/compare_networks.py ship``): per hippocampus bundle the trained setting and
# its measured validation Dice, e.g. {"eunet_hippocampus": {"spatial_dims": 2, "channels": [16, 32, 64, 128],
# "patch_size": [40, 56], "val_dice": {"mean": 0.9, "anterior": 0.9, "posterior": 0.9}, "fold": 0, "n_val": 42,
# "command": "...", "machine": "..."}}. Bundles without an entry get HIPPOCAMPUS_DEFAULT and "not yet measured".
MODELS_FILE = Path("_shared") / "hippocampus_models.json"  # relative to the bundles folder
# A small, fast model: the paper's 2D setting (axial slices, SliceInferer on the volume), widths 16-128, the
# preset's 40x56 slice window (the volumes are about 35x50x36 voxels at 1 mm).
HIPPOCAMPUS_DEFAULT = {"spatial_dims": 2, "channels": [16, 32, 64, 128], "patch_size": [40, 56]}
SPLEEN = {"spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "patch_size": [96, 96, 96]}


def load_models(bundles_dir: str | Path) -> dict:
    """``<bundles_dir>/_shared/hippocampus_models.json`` (the shipped hippocampus models), or {} when absent."""
    path = Path(bundles_dir) / MODELS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# Recipe options whose default changed after models were shipped, and the flag that gives the value those models
# were trained with (a recipe written before the option existed does not name it).
LEGACY_FLAGS = {"head_lr": "--head-lr 1", "precision": "--precision fp32"}


def training_calls(entry: dict) -> list[str]:
    """
    The command lines that trained a ``hippocampus_models.json`` entry, in order: a resumed run was made by every
    call since its start (entries written before ``"commands"`` existed have one ``"command"``). Calls of an entry
    whose recipe predates an option in ``LEGACY_FLAGS`` get that option's flag, so they rerun as they ran.
    """
    calls = entry.get("commands") or ([entry["command"]] if "command" in entry else [])
    recipe = entry.get("recipe", {})
    extra = [flag for key, flag in LEGACY_FLAGS.items() if recipe and key not in recipe]
    return [" ".join([call, *(f for f in extra if f.split()[0] not in call.split())]) for call in calls]


def make_variants(models: dict) -> tuple[Variant, ...]:
    """
    Every bundle: the spleen configurations to train on Task09, and the hippocampus models (shipped weights).

    Args:
        models: :py:func:`load_models`' content; a hippocampus bundle without an entry gets the small default.
    """
    out = []
    for task in ("spleen", "hippocampus"):
        for a in ARCHS:
            name = f"{a.prefix}_{task}"
            setting = SPLEEN if task == "spleen" else {**HIPPOCAMPUS_DEFAULT, **models.get(name, {})}
            out.append(
                Variant(
                    a,
                    task,
                    int(setting["spatial_dims"]),
                    tuple(setting["channels"]),
                    tuple(setting["patch_size"]),
                    measured=models.get(name, {}) if task == "hippocampus" else {},
                )
            )
    return tuple(out)
