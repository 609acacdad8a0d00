"""
The MONAI Label contract of a bundle, checked without MONAI Label: ``inference.json`` parsed as MONAI Label's
``BundleInferTask`` parses it (``bundle_root`` and, without a GPU, ``device`` overridden; ``LoadImaged`` switched to
``image_only=False``; the image given as a path string), then its ``preprocessing`` -> ``inferer`` (on the network,
with ``models/model.pt`` when the bundle ships one) -> ``postprocessing``; the result must be an integer label map
with the input image's shape and affine, whose values are among the labels of ``metadata.json``'s ``channel_def``.

Plain functions (no pytest) so that the MONAI Label environment's check (``monailabel_server_check.py``, MONAI 1.5.2)
runs the same contract as the normal suite (``test_monailabel_contract.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged

# The spleen networks (widths to 256, 96^3 windows) take minutes per window on 2 shared CPU cores: the contract runs
# them narrower with smaller windows (same transforms, inversion and label handling; the full-size networks are
# checked in test_bundle_checks.py).
SMALL_3D = {"channels": [8, 16, 32, 64], "patch_size": [32, 32, 32]}


def parse_like_monailabel(bundle_dir: Path) -> ConfigParser:
    """``BundleInferTask._load_bundle_config``: read inference.json, set bundle_root, CPU device without a GPU."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser.config.update({"bundle_root": str(bundle_dir)})
    if "device" in parser.config and not torch.cuda.is_available():
        parser.config.update({"device": "$torch.device('cpu')"})
    return parser


def labels_of(bundle_dir: Path) -> dict[str, int]:
    """Label name -> value from metadata.json, as MONAI Label reads them (outputs/pred/channel_def)."""
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    return {name: int(k) for k, name in channel_def.items()}


def infer_like_monailabel(
    bundle_dir: Path, image_path: Path, seed: int = 0, overrides: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """
    One image through the bundle as MONAI Label runs it.

    Args:
        overrides: config keys to change after parsing (e.g. smaller ``channels`` on 2 CPU cores; not with weights).

    Returns:
        (label map (X, Y, Z) of the input's shape, its affine 4x4), from the postprocessed ``"pred"``.
    """
    parser = parse_like_monailabel(bundle_dir)
    parser.update(overrides or {})
    network = parser.get_parsed_content("network_def", instantiate=True)
    ckpt = bundle_dir / "models" / "model.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state, strict=True)
    else:  # no shipped weights: seeded random ones (the contract is about geometry and types, not accuracy)
        torch.manual_seed(seed)
    network.eval()

    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    pre_list = list(pre.transforms) if isinstance(pre, Compose) else list(pre)
    for t in pre_list:
        if isinstance(t, LoadImaged):  # what BundleInferTask.pre_transforms does
            t._loader.image_only = False
    data: dict = {"image": str(image_path)}
    for t in pre_list:
        data = t(data)

    inferer = parser.get_parsed_content("inferer", instantiate=True)
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].to("cpu"), network)[0]

    post = parser.get_parsed_content("postprocessing", instantiate=True)
    for t in list(post.transforms) if isinstance(post, Compose) else list(post):
        data = t(data)
    pred = data["pred"]
    if pred.ndim != 4 or pred.shape[0] != 1:
        raise AssertionError(
            f"{bundle_dir.name}: postprocessed pred has shape {tuple(pred.shape)}, expected (1, X, Y, Z)"
        )
    return np.asarray(pred[0].cpu()), np.asarray(pred.affine, dtype=np.float64)


def check_contract(bundle_dir: Path, image_path: Path, overrides: dict | None = None) -> np.ndarray:
    """Raise AssertionError naming the bundle and what is wrong; return the label map when the contract holds."""
    seg, affine = infer_like_monailabel(bundle_dir, image_path, overrides=overrides)
    image = nib.load(str(image_path))
    name = f"{bundle_dir.name} on {Path(image_path).name}"
    if seg.shape != image.shape[:3]:
        raise AssertionError(f"{name}: label map shape {seg.shape} != image shape {image.shape[:3]}")
    if not np.allclose(affine, image.affine, atol=1e-4):
        raise AssertionError(f"{name}: label map affine\n{affine}\n!= image affine\n{image.affine}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise AssertionError(f"{name}: label map dtype {seg.dtype} is not an integer type")
    values = set(np.unique(seg).tolist())
    allowed = set(labels_of(bundle_dir).values())
    if not values <= allowed:
        raise AssertionError(f"{name}: label values {sorted(values)} not among the metadata's {sorted(allowed)}")
    return seg


def reoriented_anisotropic(image_path: Path, out_path: Path) -> Path:
    """The same voxels as an LPS-like, anisotropic (0.8 x 1.3 x 2.1 mm), axis-permuted volume: a harder inversion."""
    image = nib.load(str(image_path))
    data = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 0, 1)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.0, 0.0, -1.3, 20.0], [2.1, 0.0, 0.0, -5.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(data, affine), str(out_path))
    return out_path


def ct_crop(image_path: Path, out_path: Path) -> Path:
    """A 32x32x24-voxel crop of the real CT around the spleen, with its own affine (seconds on CPU)."""
    image = nib.load(str(image_path))
    crop = image.slicer[20:52, 30:62, 80:104]  # a label file gives the matching label crop
    nib.save(nib.Nifti1Image(np.asarray(crop.dataobj, dtype=np.float32), crop.affine), str(out_path))
    return out_path


def contract_cases(tmp: Path) -> dict[str, list[Path]]:
    """Task -> in-repo images for the contract: a hippocampus case and its re-oriented anisotropic copy; a CT crop."""
    from tests.fixtures import CT_SAMPLE, HIPPOCAMPUS

    hippo = HIPPOCAMPUS / "imagesTs" / "hippocampus_025.nii.gz"
    return {
        "hippocampus": [hippo, reoriented_anisotropic(hippo, tmp / "reoriented.nii.gz")],
        "spleen": [ct_crop(CT_SAMPLE / "imagesTr" / "example_ct.nii.gz", tmp / "ct_crop.nii.gz")],
    }


def check_all(bundles_dir: Path, tasks: dict[str, str], tmp: Path) -> list[str]:
    """The contract for every bundle (name -> task); one line per failure, the other bundles still checked."""
    cases = contract_cases(tmp)
    failures = []
    for name, task in tasks.items():
        for image in cases[task]:
            try:
                check_contract(bundles_dir / name, image, overrides=SMALL_3D if task == "spleen" else None)
            except Exception as e:  # noqa: BLE001 - one line per bundle and image
                failures.append(f"contract {name} on {image.name}: {type(e).__name__}: {e}")
    return failures
