"""Start-up option checks (issue 19): patch sizes the network can take, rotation only in square planes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from custom.errors import OptionError
from custom.options import check_options, check_patch_size, positive_int, rotation_prob, size_divisor

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_size_divisor_of_the_networks():
    assert size_divisor("PaperVNet") == 16 and size_divisor("JcasVNet") == 16
    assert size_divisor("NnUNetDynUNet") == 1 and size_divisor(None) == 1


@pytest.mark.parametrize(
    "patch, message",
    [
        ("abc", "must be a list of 3 positive integers"),
        ([16, 16], "must have 3 sizes"),
        ([16, 16, 0], "must be 3 positive integers"),
        ([16, 16.5, 16], "must be 3 positive integers"),
        ([40, 40, 24], r"divisible by 16 .* nearest valid sizes: \[32, 32, 16\] or \[48, 48, 32\]"),
    ],
)
def test_bad_patch_sizes(patch, message):
    with pytest.raises(OptionError, match=message) as info:
        check_patch_size(patch, 16)
    assert str(info.value).startswith("--patch_size: ")


def test_good_patch_sizes_and_numbers():
    assert check_patch_size([48, 48, 32], 16) == [48, 48, 32]
    assert check_patch_size((40.0, 40, 24), 1) == [40, 40, 24]
    assert positive_int("max_epochs", 3) == 3 and positive_int("seed", 0, minimum=0) == 0
    for bad in ("abc", 0, True, 1.5, None):
        with pytest.raises(OptionError, match="--max_epochs: must be an integer >= 1"):
            positive_int("max_epochs", bad)
    assert check_options({"epoch_length": None, "cache_rate": 1.0, "learning_rate": 0.01})
    with pytest.raises(OptionError, match=r"--cache_rate: must be in \[0.0, 1.0\], got 1.5"):
        check_options({"cache_rate": 1.5})


def test_rotation_only_in_square_planes(caplog):
    assert rotation_prob([48, 48, 32], 0.5) == 0.5
    with caplog.at_level(logging.WARNING, logger="custom.options"):
        assert rotation_prob([48, 32, 32], 0.5) == 0.0
    assert "random 90-degree rotation is off" in caplog.text
    assert rotation_prob("abc", 0.5) == 0.5  # reported by check_patch_size instead


def test_non_square_patch_trains(demo_dataset, tmp_path):
    """``--patch_size [32,16,16]`` used to fail in the DataLoader's collate (the x-y rotation swapped the sizes)."""
    out = tmp_path / "bundle"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               "['configs/supervised_la.json','configs/quick.json']", "--device", "cpu",
               "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset), "--output_dir", str(out),
               "--patch_size", "[32,16,16]", "--batch_size", "4", "--epoch_length", "3"]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "models" / "model.pt").is_file()
    assert "random 90-degree rotation is off" in proc.stdout + proc.stderr
