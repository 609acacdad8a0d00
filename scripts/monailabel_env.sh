#!/usr/bin/env bash
# Build, once, the MONAI Label virtual environment used by the real-server bundle test, and print its path.
#
#   venv=$(scripts/monailabel_env.sh)     # ~9 min and ~8 GB the first time, instant afterwards
#   "$venv/bin/monailabel" --help
#
# The environment lives outside the clone, in ${EUNETS_MONAILABEL_CACHE:-~/.cache/eunets_monai/monailabel-venv}/<hash>,
# keyed by the SHA-256 of scripts/monailabel_constraints.txt: it is rebuilt only when those pins change. The project
# itself is not installed there (the test puts the clone on PYTHONPATH), so one environment serves every clone.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
constraints=$repo/scripts/monailabel_constraints.txt
key=$(sha256sum "$constraints" | cut -c1-16)
cache=${EUNETS_MONAILABEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eunets_monai/monailabel-venv}
venv=$cache/$key
if [ -f "$venv/.complete" ]; then
    echo "$venv"
    exit 0
fi
# A venv's scripts hard-code its path, so it is built in place; .complete marks a finished build and a partial one
# (interrupted) is started over.
rm -rf "$venv"
mkdir -p "$cache"
{
    echo "building the MONAI Label environment in $venv (pins: $constraints); about 9 minutes and 8 GB"
    "${PYTHON:-python3}" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install --quiet -c "$constraints")
    "${pip[@]}" --upgrade pip
    # torch first, so nothing later resolves to another (CUDA) build.
    "${pip[@]}" torch torchvision
    # monailabel brings monai with its extras; the rest are eunets-monai's own dependencies (installed without it).
    "${pip[@]}" monailabel monai pydicom pytorch-ignite nibabel itk pyyaml scipy tensorboard
} >&2
"$venv/bin/python" -c "import monailabel, monai, torch; print('monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__)" >&2
touch "$venv/.complete"
echo "$venv"
