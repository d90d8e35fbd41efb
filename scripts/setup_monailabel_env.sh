#!/usr/bin/env bash
# Build the Python environment that serves trained noisyseg bundles with MONAI Label 0.8.5.
#
# Usage: scripts/setup_monailabel_env.sh [VENV_DIR]     (default: <repo>/.venv-monailabel)
#
# MONAI Label pins its own torch/monai stack, so it gets a virtualenv of its own. Nothing from this
# repository is installed into it: a served bundle must run from its own folder (its scripts/ carry the
# network and inference code). Idempotent: an environment that already imports monailabel 0.8.5 and
# monai 1.6.1 is left as it is. Environment variables: PYTHON (interpreter for the venv, default python3).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-${REPO_ROOT}/.venv-monailabel}"
PYTHON="${PYTHON:-python3}"

# torchvision must be the build made for the torch beside it (PyPI's newest torchvision does not import with
# an older torch), and MONAI Label 0.8.5 needs pydicom < 3 and the DICOMweb/DIMSE clients of its time.
PACKAGES=(
    "torch==2.14.1"
    "torchvision==0.29.1"
    "monai==1.6.1"
    "monailabel==0.8.5"
    "pydicom<3"
    "dicomweb-client==0.59.1"
    "pynetdicom==2.0.2"
    "nibabel>=5.0"
    "tqdm>=4.60"
)

ready() {
    "${VENV_DIR}/bin/python" - <<'EOF' >/dev/null 2>&1
import monai, monailabel, nibabel, torch, torchvision  # noqa: F401
assert monailabel.__version__.startswith("0.8.5"), monailabel.__version__
assert monai.__version__.startswith("1.6.1"), monai.__version__
EOF
}

if [ -x "${VENV_DIR}/bin/python" ] && ready; then
    echo "MONAI Label environment ready: ${VENV_DIR}"
    exit 0
fi

echo "building the MONAI Label environment in ${VENV_DIR} (several minutes, about 8 GB)"
"${PYTHON}" -m venv "${VENV_DIR}"
"${VENV_DIR}/bin/python" -m pip install --quiet --upgrade pip
"${VENV_DIR}/bin/python" -m pip install --quiet "${PACKAGES[@]}"

if ! ready; then
    echo "error: ${VENV_DIR} was built but does not import monailabel 0.8.5 with monai 1.6.1" >&2
    exit 1
fi
"${VENV_DIR}/bin/python" -c "import monailabel, monai, torch; print('monailabel', monailabel.__version__, \
'monai', monai.__version__, 'torch', torch.__version__)"
echo "MONAI Label environment ready: ${VENV_DIR}"
