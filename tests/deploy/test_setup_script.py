"""``scripts/setup_monailabel_env.sh --print``: which torch build the MONAI Label environment gets on which machine
(fast suite; ``--print`` installs nothing). ``nvidia-smi`` and ``uname`` are stand-ins on a private PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "setup_monailabel_env.sh"


def _fake_bin(tmp_path: Path, gpu: bool, arch: str) -> Path:
    """A PATH folder with the real basic tools, a fake ``uname -m`` and, for ``gpu``, a fake ``nvidia-smi -L``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("bash", "dirname", "grep", "cat", "env"):
        real = shutil.which(tool)
        if real is None:
            pytest.skip(f"{tool} not found")
        (folder / tool).symlink_to(real)
    scripts = {"uname": f"#!/bin/sh\necho {arch}\n"}
    if gpu:
        scripts["nvidia-smi"] = "#!/bin/sh\necho 'GPU 0: NVIDIA Test GPU (UUID: GPU-0)'\n"
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def _print(tmp_path: Path, gpu: bool, arch: str = "x86_64", **env: str) -> str:
    folder = _fake_bin(tmp_path, gpu, arch)
    clean = {k: v for k, v in os.environ.items() if k not in ("NOISYSEG_TORCH_BUILD", "TORCH_INDEX_URL")}
    proc = subprocess.run([str(folder / "bash"), str(SCRIPT), "--print", str(tmp_path / "venv")],
                          env={**clean, "PATH": str(folder), **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "venv").exists()  # --print builds nothing
    return proc.stdout


def test_cpu_x86_64_with_a_cpu_index_gets_the_cpu_torch(tmp_path):
    out = _print(tmp_path, gpu=False, TORCH_INDEX_URL="https://example.invalid/whl/cpu")
    assert "torch build: cpu" in out and "torch==2.13.0 torchvision==0.28.0" in out
    assert "note:" not in out
    assert "index for torch: https://example.invalid/whl/cpu" in out


def test_cpu_x86_64_without_an_index_says_why_it_takes_the_cuda_build(tmp_path):
    # PyPI has no CPU torchvision for x86_64, and MONAI Label imports torchvision at start-up
    out = _print(tmp_path, gpu=False)
    assert "torch==2.14.1 torchvision==0.29.1" in out
    assert "no CPU torchvision" in out and "TORCH_INDEX_URL" in out
    # the plain first line: what it installs, why, how big, and the CPU index that avoids it
    note = out.splitlines()[0]
    assert note.startswith("note: no CUDA GPU to use")
    for part in ("torch 2.14.1 + torchvision 0.29.1", "about 8 GB", "no CPU torchvision",
                 "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"):
        assert part in note


def test_cpu_aarch64_gets_pypi_cpu_wheels(tmp_path):
    out = _print(tmp_path, gpu=False, arch="aarch64")
    assert "torch build: cpu" in out and "torch==2.9.1 torchvision==0.24.1" in out


def test_gpu_gets_the_cuda_build(tmp_path):
    out = _print(tmp_path, gpu=True)
    assert "torch build: cuda" in out and "torch==2.14.1 torchvision==0.29.1" in out
    assert "note:" not in out


def test_override_and_bad_value(tmp_path):
    assert "torch build: cuda" in _print(tmp_path, gpu=False, NOISYSEG_TORCH_BUILD="cuda")
    proc = subprocess.run(["bash", str(SCRIPT), "--print"], env={**os.environ, "NOISYSEG_TORCH_BUILD": "rocm"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cpu or cuda" in proc.stderr
