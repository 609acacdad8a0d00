from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from urllib.error import URLError

import pytest
from monai.apps import DecathlonDataset

from eunets_monai.data import datalists
from eunets_monai.data.datalists import (
    DATA_ENV,
    MSDDownloadError,
    default_data_root,
    download_msd,
    holdout_split,
    kfold_split,
    msd_datalist,
    msd_task_name,
    resolve_task_dir,
)
from tests.fixtures import HIPPOCAMPUS

HIPPO = HIPPOCAMPUS  # the embedded real MSD Task04 subset: an MSD folder with training and test sections


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- msd_datalist on a real MSD Task04 folder (the embedded subset) --------------------------------------------


def test_msd_datalist_hippocampus():
    dl = msd_datalist(HIPPO)
    listed = json.loads((HIPPO / "dataset.json").read_text())["training"]
    assert len(dl) == len(listed) == 12
    for item, raw in zip(dl, listed):
        assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file()
        assert Path(item["label"]).is_file()
        assert Path(item["image"]).name == Path(raw["image"]).name
        assert Path(item["label"]).name == Path(raw["label"]).name
    test = msd_datalist(HIPPO, section="test")
    assert len(test) == 4 and all(Path(d["image"]).is_file() for d in test)


def test_msd_datalist_missing_dir(tmp_path):
    missing = tmp_path / "Task09_Spleen"
    with pytest.raises(FileNotFoundError) as e:
        msd_datalist(missing)
    msg = one_line(e)
    assert str(missing) in msg and "medicaldecathlon.com" in msg and "Task09_Spleen.tar" in msg


def test_msd_datalist_missing_json(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        msd_datalist(tmp_path)
    assert str(tmp_path / "dataset.json") in one_line(e)


def test_msd_datalist_listed_file_missing(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "a.nii.gz").write_bytes(b"x")
    spec = {"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(FileNotFoundError) as e:
        msd_datalist(tmp_path)
    msg = one_line(e)
    assert str(tmp_path / "labelsTr" / "a.nii.gz") in msg and "dataset.json" in msg


def test_msd_datalist_corrupt_json(tmp_path):
    (tmp_path / "dataset.json").write_text('{"training": [')
    with pytest.raises(ValueError) as e:
        msd_datalist(tmp_path)
    assert str(tmp_path / "dataset.json") in one_line(e) and "JSON" in str(e.value)


def test_msd_datalist_empty_or_missing_section(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [], "test": []}))
    with pytest.raises(ValueError, match="empty"):
        msd_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"test": []}))
    with pytest.raises(ValueError, match="validation"):
        msd_datalist(tmp_path, section="validation")


# --- download_msd: never touches the network ----------------------------------------------------------------


def test_task_names():
    assert msd_task_name("spleen") == "Task09_Spleen"
    assert msd_task_name("heart") == "Task02_Heart"
    assert msd_task_name("hippocampus") == "Task04_Hippocampus"
    assert msd_task_name("Task05_Prostate") == "Task05_Prostate"
    with pytest.raises(ValueError, match="unknown MSD task"):
        msd_task_name("liverx")


def test_download_msd_existing_folder_is_used(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("download attempted although the data is there")

    monkeypatch.setattr(datalists, "download_url", no_network)
    (tmp_path / "Task04_Hippocampus").symlink_to(HIPPO, target_is_directory=True)
    assert download_msd("hippocampus", tmp_path) == tmp_path.resolve() / "Task04_Hippocampus"


def test_download_msd_offline_urlerror(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datalists, "download_url", offline)
    with pytest.raises(MSDDownloadError) as e:
        download_msd("spleen", tmp_path)
    msg = one_line(e)
    assert "medicaldecathlon.com" in msg and str(tmp_path / "Task09_Spleen" / "dataset.json") in msg
    assert "URLError" in msg
    assert not (tmp_path / "Task09_Spleen").exists() and not (tmp_path / "Task09_Spleen.tar").exists()


def test_download_msd_unreachable_url(tmp_path, monkeypatch):
    # MONAI's real download code against a closed local port: fails like an offline machine, without a network.
    monkeypatch.setitem(DecathlonDataset.resource, "Task02_Heart", "http://127.0.0.1:9/Task02_Heart.tar")
    with pytest.raises(MSDDownloadError) as e:
        download_msd("heart", tmp_path, progress=False, timeout=5)
    msg = one_line(e)
    assert str(tmp_path / "Task02_Heart" / "dataset.json") in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def _make_archive(tmp_path: Path, name: str) -> tuple[Path, str]:
    src = tmp_path / "src" / name
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    (src / "imagesTr" / "c1.nii.gz").write_bytes(b"img")
    (src / "labelsTr" / "c1.nii.gz").write_bytes(b"lbl")
    spec = {"training": [{"image": "./imagesTr/c1.nii.gz", "label": "./labelsTr/c1.nii.gz"}], "test": []}
    (src / "dataset.json").write_text(json.dumps(spec))
    tar_path = tmp_path / f"{name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src, arcname=name)
    return tar_path, hashlib.md5(tar_path.read_bytes()).hexdigest()


def test_download_msd_extracts_archive(tmp_path, monkeypatch):
    # The full download -> md5 -> extract -> rename path, served from a local file:// URL.
    name = "Task04_Hippocampus"
    tar_path, md5 = _make_archive(tmp_path, name)
    monkeypatch.setitem(DecathlonDataset.resource, name, tar_path.as_uri())
    monkeypatch.setitem(DecathlonDataset.md5, name, md5)
    root = tmp_path / "root"
    task_dir = download_msd("hippocampus", root, progress=False)
    assert task_dir == root / name
    dl = msd_datalist(task_dir)
    assert len(dl) == 1 and Path(dl[0]["label"]).read_bytes() == b"lbl"
    assert sorted(p.name for p in root.iterdir()) == [name, f"{name}.tar"]  # no temporary folder left


def test_download_msd_bad_md5(tmp_path, monkeypatch):
    name = "Task04_Hippocampus"
    tar_path, _ = _make_archive(tmp_path, name)
    monkeypatch.setitem(DecathlonDataset.resource, name, tar_path.as_uri())
    monkeypatch.setitem(DecathlonDataset.md5, name, "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(MSDDownloadError) as e:
        download_msd("hippocampus", root, progress=False)
    # MONAI words it "hash ..." (1.6) or "md5 check ... failed" (1.5): either names the checksum
    assert any(word in one_line(e).lower() for word in ("hash", "md5 check"))
    assert not (root / name).exists()


# --- splits -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 7, 23, 208])
def test_kfold_disjoint_covering_deterministic(n):
    items = [{"image": f"img{i}", "label": f"lbl{i}"} for i in range(n)]
    vals = []
    for fold in range(5):
        train, val = kfold_split(items, n_folds=5, fold=fold, seed=0)
        assert (train, val) == kfold_split(items, n_folds=5, fold=fold, seed=0)
        names_t, names_v = {d["image"] for d in train}, {d["image"] for d in val}
        assert not names_t & names_v and len(names_t | names_v) == n
        assert [d for d in items if d in val] == val  # datalist order kept
        vals.append(names_v)
    sizes = [len(v) for v in vals]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    assert set().union(*vals) == {d["image"] for d in items}
    if n >= 23:
        assert kfold_split(items, fold=0, seed=1)[1] != kfold_split(items, fold=0, seed=0)[1]


def test_kfold_bad_arguments():
    items = list(range(10))
    with pytest.raises(ValueError, match="fold"):
        kfold_split(items, n_folds=5, fold=5)
    with pytest.raises(ValueError, match="n_folds"):
        kfold_split(items, n_folds=1)
    with pytest.raises(ValueError, match="at least 5"):
        kfold_split(items[:3], n_folds=5)


@pytest.mark.parametrize(("n", "expected"), [(208, (166, 21, 21)), (10, (8, 1, 1)), (3, (1, 1, 1)), (11, (9, 1, 1))])
def test_holdout_split_sizes(n, expected):
    items = list(range(n))
    parts = holdout_split(items, (0.8, 0.1, 0.1), seed=0)
    assert tuple(len(p) for p in parts) == expected
    assert sorted(parts[0] + parts[1] + parts[2]) == items
    assert holdout_split(items, seed=0) == parts
    assert all(p == sorted(p) for p in parts)


def test_holdout_split_real_datalist():
    dl = msd_datalist(HIPPO)
    train, val, test = holdout_split(dl, seed=0)
    names = [{d["image"] for d in p} for p in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set.union(*names) == {d["image"] for d in dl}
    assert holdout_split(dl, seed=1)[2] != test


def test_holdout_split_bad_arguments():
    with pytest.raises(ValueError, match="summing to 1"):
        holdout_split(list(range(10)), (0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match="summing to 1"):
        holdout_split(list(range(10)), (0.9, 0.1))
    with pytest.raises(ValueError, match="at least 3"):
        holdout_split([1, 2], (0.8, 0.1, 0.1))
    assert holdout_split(list(range(10)), (0.9, 0.1, 0.0))[2] == []


# --- where scripts look for data: what the user has, never this repository's neighbours --------------------------


def test_default_data_root_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "mine"))
    assert default_data_root() == (tmp_path / "mine").resolve()
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_root() == (tmp_path / "cache" / "eunets_monai").resolve()


def test_resolve_task_dir_given_folder_or_parent(tmp_path):
    assert resolve_task_dir("hippocampus", HIPPO) == HIPPO.resolve()
    (tmp_path / "Task04_Hippocampus").symlink_to(HIPPO, target_is_directory=True)
    assert resolve_task_dir("hippocampus", tmp_path) == tmp_path.resolve() / "Task04_Hippocampus"
    with pytest.raises(FileNotFoundError) as e:
        resolve_task_dir("spleen", tmp_path)
    assert "Task09_Spleen" in one_line(e) and "dataset.json" in one_line(e)


def test_resolve_task_dir_default_root_downloads_once(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    calls = []

    def fake_download(name, root):
        calls.append((name, root))
        (root / name).symlink_to(HIPPO, target_is_directory=True)
        return root / name

    monkeypatch.setattr(datalists, "download_msd", fake_download)
    with pytest.raises(FileNotFoundError, match=DATA_ENV):
        resolve_task_dir("hippocampus", download=False)
    assert resolve_task_dir("hippocampus") == tmp_path.resolve() / "Task04_Hippocampus"
    assert resolve_task_dir("hippocampus") == tmp_path.resolve() / "Task04_Hippocampus"
    assert calls == [("Task04_Hippocampus", tmp_path.resolve())]
