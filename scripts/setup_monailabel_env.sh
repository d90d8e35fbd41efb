#!/usr/bin/env bash
# Build the Python environment that serves trained noisyseg bundles with MONAI Label 0.8.5.
#
# Usage: scripts/setup_monailabel_env.sh [--print] [VENV_DIR]     (default: <repo>/.venv-monailabel)
#   --print   print the torch build it picks and the packages it would install, then exit (installs nothing)
#
# MONAI Label pins its own torch/monai stack, so it gets a virtualenv of its own. Nothing from this
# repository is installed into it: a served bundle must run from its own folder (its scripts/ carry the
# network and inference code). Idempotent: an environment that already imports monailabel 0.8.5 and
# monai 1.6.1 is left as it is.
#
# The torch build follows the machine (docs/deploy.md):
#   - a CUDA GPU (nvidia-smi lists one): torch 2.14.1 + torchvision 0.29.1, PyPI's CUDA builds (about 8 GB);
#   - no CUDA, aarch64: torch 2.9.1 + torchvision 0.24.1, PyPI's aarch64 wheels, which are CPU builds;
#   - no CUDA, x86_64, TORCH_INDEX_URL set (e.g. PyTorch's CPU wheel index): torch 2.13.0 + torchvision 0.28.0,
#     the CPU builds from that index;
#   - no CUDA, x86_64, no TORCH_INDEX_URL: the CUDA builds as on a GPU machine (they run on the CPU). There is no CPU
#     torchvision for x86_64 on PyPI: PyPI's torchvision 0.28.0 (made for torch 2.13.0) is a CUDA build whose
#     extension needs libtorch_cuda.so, so beside the CPU torch 2.13.0 it does not import ("operator
#     torchvision::nms does not exist"), and MONAI Label needs it (monailabel.transform.post imports
#     torchvision.utils when the monaibundle app starts; seen here: the server exits at start-up).
# Environment variables: PYTHON (interpreter for the venv, default python3); NOISYSEG_TORCH_BUILD=cpu|cuda to
# override the detection; TORCH_INDEX_URL (a wheel index for torch and torchvision, e.g. PyTorch's CPU index).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRINT_ONLY=0
if [ "${1:-}" = "--print" ]; then
    PRINT_ONLY=1
    shift
fi
VENV_DIR="${1:-${REPO_ROOT}/.venv-monailabel}"
PYTHON="${PYTHON:-python3}"

has_cuda() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU "
}

BUILD="${NOISYSEG_TORCH_BUILD:-}"
if [ -z "${BUILD}" ]; then
    if has_cuda; then BUILD=cuda; else BUILD=cpu; fi
fi
ARCH="$(uname -m)"
NOTE=""  # one plain line for the CPU machine that gets the CUDA builds (printed by --print and before building)
case "${BUILD}" in
    cuda)
        TORCH_PACKAGES=("torch==2.14.1" "torchvision==0.29.1")
        WHY="CUDA GPU: PyPI's CUDA builds"
        ;;
    cpu)
        if [ "${ARCH}" = "aarch64" ] || [ "${ARCH}" = "arm64" ]; then
            TORCH_PACKAGES=("torch==2.9.1" "torchvision==0.24.1")
            WHY="no CUDA, ${ARCH}: PyPI's CPU builds"
        elif [ -n "${TORCH_INDEX_URL:-}" ]; then
            TORCH_PACKAGES=("torch==2.13.0" "torchvision==0.28.0")
            WHY="no CUDA, ${ARCH}: CPU builds from ${TORCH_INDEX_URL}"
        else
            BUILD=cuda
            TORCH_PACKAGES=("torch==2.14.1" "torchvision==0.29.1")
            WHY="no CUDA, ${ARCH}, no TORCH_INDEX_URL: PyPI has no CPU torchvision for ${ARCH}, so the CUDA builds"
            WHY="${WHY} (about 8 GB; they run on the CPU). For CPU builds set TORCH_INDEX_URL to PyTorch's CPU index"
            NOTE="note: no CUDA GPU to use (nvidia-smi lists none, or NOISYSEG_TORCH_BUILD=cpu), yet this installs torch"
            NOTE="${NOTE} 2.14.1 + torchvision 0.29.1, the CUDA builds (about 8 GB; they run on the CPU), because the package indexes pip uses have no CPU"
            NOTE="${NOTE} torchvision for ${ARCH} that imports beside the CPU torch 2.13.0 (MONAI Label needs"
            NOTE="${NOTE} torchvision); TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU builds"
            NOTE="${NOTE} (torch 2.13.0 + torchvision 0.28.0, about 3.5 GB) where that index is reachable"
        fi
        ;;
    *)
        echo "error: NOISYSEG_TORCH_BUILD must be cpu or cuda, got '${BUILD}'" >&2
        exit 2
        ;;
esac

# MONAI Label 0.8.5 needs pydicom < 3 and the DICOMweb/DIMSE clients of its time; the torch pins are repeated in
# the second step so that no dependency can move torch to another build.
PACKAGES=(
    "${TORCH_PACKAGES[@]}"
    "monai==1.6.1"
    "monailabel==0.8.5"
    "pydicom<3"
    "dicomweb-client==0.59.1"
    "pynetdicom==2.0.2"
    "nibabel>=5.0"
    "tqdm>=4.60"
)

if [ "${PRINT_ONLY}" = 1 ]; then
    if [ -n "${NOTE}" ]; then echo "${NOTE}"; fi
    echo "torch build: ${BUILD} (${WHY})"
    echo "venv: ${VENV_DIR}"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "index for torch: ${TORCH_INDEX_URL}"; fi
    echo "packages: ${PACKAGES[*]}"
    exit 0
fi

ready() {
    # torchvision too: the monaibundle app imports it when the server starts
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

if [ -n "${NOTE}" ]; then echo "${NOTE}"; fi
echo "building the MONAI Label environment in ${VENV_DIR} (torch build: ${WHY}; several minutes)"
"${PYTHON}" -m venv "${VENV_DIR}"
"${VENV_DIR}/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${VENV_DIR}/bin/python" -m pip install --quiet --index-url "${TORCH_INDEX_URL}" "${TORCH_PACKAGES[@]}"
else
    "${VENV_DIR}/bin/python" -m pip install --quiet "${TORCH_PACKAGES[@]}"
fi
"${VENV_DIR}/bin/python" -m pip install --quiet "${PACKAGES[@]}"

if ! ready; then
    echo "error: ${VENV_DIR} was built but does not import monailabel 0.8.5 with monai 1.6.1" >&2
    exit 1
fi
"${VENV_DIR}/bin/python" -c "import monailabel, monai, torch; print('monailabel', monailabel.__version__, \
'monai', monai.__version__, 'torch', torch.__version__)"
echo "MONAI Label environment ready: ${VENV_DIR}"
