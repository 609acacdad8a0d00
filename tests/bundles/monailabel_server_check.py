"""
The bundles in a real MONAI Label server (its own ``monaibundle`` sample app, each bundle copied unchanged to
``<app>/model/<name>/``): ``GET /info/`` lists them with the metadata's labels and 3 dimensions, ``POST /infer``
returns a gzip NIfTI label map with the input's shape and affine, voxel for voxel equal to the contract pipeline
(``contract.py``) run in this process, and one short ``POST /train`` (1 epoch) finishes and writes ``model.pt``.
First, the contract of ``test_monailabel_contract.py`` on every bundle under this environment's MONAI (1.5.2).

Runs in the MONAI Label environment of ``scripts/monailabel_env.sh`` (MONAI 1.5.2), with the clone on PYTHONPATH;
``.ci/run`` runs it as its own step:

    PYTHONPATH=$PWD "$(scripts/monailabel_env.sh)/bin/python" tests/bundles/monailabel_server_check.py

Bundles that ship no ``models/model.pt`` get seeded random weights in the app copy (MONAI Label only serves a
bundle that has weights): the check is the serving contract (geometry, types, labels, training), not accuracy.
Exits 0 when every check passes, else 1 with one line per failure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from eunets_monai.bundles import bundle_variants  # noqa: E402
from tests.bundles.contract import (  # noqa: E402
    check_all,
    ct_crop,
    infer_like_monailabel,
    labels_of,
    parse_like_monailabel,
    reoriented_anisotropic,
)
from tests.fixtures import CT_SAMPLE, HIPPOCAMPUS  # noqa: E402

VARIANTS = bundle_variants(REPO / "bundles")

TASKS = {v.name: v.task for v in VARIANTS}

DEFAULT_BUNDLES = "eunet_hippocampus,efen_eu_hippocampus,eunet_spleen"
TRAIN_BUNDLE = "eunet_hippocampus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None, timeout=600):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def make_app(work: Path, bundles: list[str]) -> Path:
    """The monaibundle sample app shipped with MONAI Label, with our bundles under model/."""
    sample = Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle"
    if not sample.is_dir():
        sys.exit(f"error: MONAI Label's monaibundle sample app not found at {sample}")
    app = work / "app"
    shutil.copytree(sample, app, ignore=shutil.ignore_patterns("__pycache__"))
    for name in bundles:
        dst = app / "model" / name
        shutil.copytree(REPO / "bundles" / name, dst, ignore=shutil.ignore_patterns("eval", "logs", "*.ts"))
        ckpt = dst / "models" / "model.pt"
        if not ckpt.is_file():
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            net = parse_like_monailabel(dst).get_parsed_content("network_def")
            torch.save(net.state_dict(), ckpt)
    return app


def make_studies(work: Path) -> tuple[Path, dict[str, list[Path]]]:
    """4 labelled hippocampus cases (labels/final, as MONAI Label's datastore expects) and unlabelled test images
    per task: a hippocampus case, the same re-oriented and anisotropic, a crop of the real CT."""
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for image in sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:4]:
        shutil.copy(image, studies / image.name)
        shutil.copy(HIPPOCAMPUS / "labelsTr" / image.name, studies / "labels" / "final" / image.name)
    hippo = [studies / "test_025.nii.gz", studies / "test_reoriented.nii.gz"]
    shutil.copy(HIPPOCAMPUS / "imagesTs" / "hippocampus_025.nii.gz", hippo[0])
    reoriented_anisotropic(HIPPOCAMPUS / "imagesTs" / "hippocampus_025.nii.gz", hippo[1])
    ct = ct_crop(CT_SAMPLE / "imagesTr" / "example_ct.nii.gz", studies / "test_ct_crop.nii.gz")
    return studies, {"hippocampus": hippo, "spleen": [ct]}


class Server:
    def __init__(self, app: Path, studies: Path, bundles: list[str], log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            str(Path(sys.prefix) / "bin" / "monailabel"),
            "start_server",
            "--app",
            str(app),
            "--studies",
            str(studies),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--conf",
            "models",
            ",".join(bundles),
            "--conf",
            "zoo_source",
            "github",
            "--conf",
            "sam2",
            "false",
        ]
        # The monailabel launcher runs `python -m monailabel.main`: this environment's python must come first.
        env = dict(
            os.environ,
            PATH=os.pathsep.join([str(Path(sys.prefix) / "bin"), os.environ.get("PATH", "")]),
            VIRTUAL_ENV=sys.prefix,
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        )
        print("$", " ".join(cmd), flush=True)
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=app.parent)

    def wait(self, timeout: float = 600) -> dict:
        start = time.time()
        while time.time() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}; log: {self.log}")
            try:
                return json.loads(_request(self.url + "/info/", timeout=10)[1])
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        raise RuntimeError(f"server not up after {timeout:.0f} s; log: {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def check_info(info: dict, bundles: list[str], failures: list[str]) -> None:
    models = info.get("models", {})
    for name in bundles:
        if name not in models:
            failures.append(f"/info/: model {name} missing (have {sorted(models)})")
            continue
        want = {k: v for k, v in labels_of(REPO / "bundles" / name).items() if k != "background"}
        got = models[name].get("labels")
        if got != want:
            failures.append(f"/info/: {name} labels {got} != metadata {want}")
        if models[name].get("dimension") != 3:
            failures.append(f"/info/: {name} dimension {models[name].get('dimension')} != 3")


def check_infer(server: Server, app: Path, name: str, image: Path, work: Path, failures: list[str]) -> None:
    url = f"{server.url}/infer/{name}?image={image.name[: -len('.nii.gz')]}&output=image"
    boundary = "eunetsboundary"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n--{boundary}--\r\n'
    status, data = _request(url, "POST", body.encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    what = f"/infer {name} {image.name}"
    if status != 200 or data[:2] != b"\x1f\x8b":
        failures.append(f"{what}: status {status}, not a gzip file (starts {data[:8]!r})")
        return
    out = work / f"{name}_{image.name}"
    out.write_bytes(data)
    try:
        gzip.decompress(data)
        seg_img = nib.load(str(out))
    except Exception as e:  # noqa: BLE001 - reported as one line
        failures.append(f"{what}: response is not a NIfTI: {e}")
        return
    ref = nib.load(str(image))
    seg = np.asarray(seg_img.dataobj)
    if seg.shape != ref.shape:
        failures.append(f"{what}: shape {seg.shape} != image {ref.shape}")
        return
    if not np.allclose(seg_img.affine, ref.affine, atol=1e-4):
        failures.append(f"{what}: affine\n{seg_img.affine}\n!= image affine\n{ref.affine}")
    allowed = set(labels_of(REPO / "bundles" / name).values())
    if not set(np.unique(seg).astype(int).tolist()) <= allowed or not np.issubdtype(seg.dtype, np.integer):
        failures.append(f"{what}: dtype {seg.dtype}, values {np.unique(seg)[:10]} not labels {sorted(allowed)}")
    expected, _ = infer_like_monailabel(app / "model" / name, image)
    if not np.array_equal(seg, expected):
        failures.append(f"{what}: {int((seg != expected).sum())} voxels differ from the contract pipeline")
    print(f"{what}: {seg.dtype} {seg.shape}, labels {sorted(np.unique(seg).tolist())}", flush=True)


def check_train(server: Server, app: Path, name: str, failures: list[str]) -> None:
    ckpt = app / "model" / name / "models" / "model.pt"
    before = ckpt.stat().st_mtime
    params = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "train_batch_size": 1}
    body = json.dumps(params).encode()
    try:
        status, data = _request(
            f"{server.url}/train/{name}?run_sync=true", "POST", body, {"Content-Type": "application/json"}, 900
        )
    except urllib.error.HTTPError as e:
        failures.append(f"/train {name}: HTTP {e.code}: {e.read()[-500:]!r}")
        return
    if status != 200:
        failures.append(f"/train {name}: status {status}: {data[-500:]!r}")
        return
    if not ckpt.is_file() or ckpt.stat().st_mtime <= before:
        failures.append(f"/train {name}: finished but {ckpt} was not rewritten")
    print(f"/train {name}: done, {ckpt.name} rewritten", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--bundles", default=DEFAULT_BUNDLES, help=f"comma-separated bundles (default {DEFAULT_BUNDLES})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (app, studies, server log)")
    args = parser.parse_args(argv)
    bundles = [b.strip() for b in args.bundles.split(",") if b.strip()]
    work = Path(tempfile.mkdtemp(prefix="eunets_monailabel_"))
    start = time.time()
    import monai
    import monailabel

    print(f"MONAI Label {monailabel.__version__}, MONAI {monai.__version__}, torch {torch.__version__}; in {work}")
    # The in-process contract on every bundle, under this environment's MONAI (the other end of the range the
    # normal suite tests).
    failures: list[str] = check_all(REPO / "bundles", TASKS, work)
    print(f"contract on {len(VARIANTS)} bundles under MONAI {monai.__version__}: {len(failures)} failures", flush=True)
    app = make_app(work, bundles)
    studies, tests = make_studies(work)
    server = Server(app, studies, bundles, work / "server.log")
    try:
        info = server.wait()
        print(f"/info/: up at {time.time() - start:.0f} s; models {sorted(info.get('models', {}))}", flush=True)
        check_info(info, bundles, failures)
        for name in bundles:
            for image in tests[TASKS[name]]:
                check_infer(server, app, name, image, work, failures)
        if TRAIN_BUNDLE in bundles:
            check_train(server, app, TRAIN_BUNDLE, failures)
    except Exception as e:  # noqa: BLE001 - one line, the server log has the rest
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        server.stop()
    for f in failures:
        print(f"FAIL {f}")
    if failures:
        print(f"server log: {work / 'server.log'}")
        print("".join(Path(work / "server.log").read_text().splitlines(keepends=True)[-40:]))
    elif not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"MONAI Label server check: {'FAILED' if failures else 'passed'} in {time.time() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
