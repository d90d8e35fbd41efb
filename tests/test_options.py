"""Start-up option checks (issue 19): patch sizes the network can take, rotation only in square planes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from custom.errors import OptionError
from custom.options import (
    check_device,
    check_options,
    check_overrides,
    check_patch_size,
    positive_int,
    rotation_prob,
    size_divisor,
)

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


# ------------------------------------------------------------------------------------------- overrides

SUPERVISED = ["configs/supervised_la.json", "configs/quick.json"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_epoch": 3}, "--max_epoch: unknown option; did you mean --max_epochs?"),
        ({"learnig_rate": 0.1}, "--learnig_rate: unknown option; did you mean --learning_rate?"),
        ({"data#max_voxel": 5}, "--data#max_voxel: unknown option; did you mean --data#max_voxels?"),
        ({"zzz_qqq": 1}, "--zzz_qqq: unknown option (no such id in configs/supervised_la.json, configs/quick.json)"),
        ({"amp": "maybe"}, "--amp: must be true or false, got 'maybe'"),
        ({"resume": 1}, "--resume: must be true or false, got 1"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(OptionError) as info:
        check_overrides(overrides, SUPERVISED)
    assert str(info.value) == message


def test_good_overrides_and_boolean_words():
    checked = check_overrides({"max_epochs": 3, "amp": "false", "resume": "True", "data::max_voxels": 10,
                               "init_from": "x", "workflow_type": "train"}, SUPERVISED)
    assert checked == {"max_epochs": 3, "amp": False, "resume": True, "data#max_voxels": 10, "init_from": "x"}
    assert check_overrides() == {}  # not started through monai.bundle's run: nothing to check


@pytest.mark.parametrize(
    "options, message",
    [
        ({"network_width": 0}, "--network_width: must be an integer >= 1, got 0"),
        ({"network_width": 1024}, "--network_width: must be at most 256, got 1024"),
        ({"learning_rate": 1e6}, "--learning_rate: 1000000.0 is above the sane range (0, 1.0] for SGD"),
        ({"dropout": 1.0}, "--dropout: must be below 1"),
        ({"max_voxels": "many"}, "--max_voxels: must be an integer >= 1, got 'many'"),
        ({"device": "gpu7"}, "--device: 'gpu7' is no device name"),
        ({"device": "cuda:99"}, "--device: 'cuda"),
    ],
)
def test_numeric_ranges_and_device(options, message):
    with pytest.raises(OptionError) as info:
        check_options(options)
    assert str(info.value).startswith(message), str(info.value)


def test_device_cuda_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="--device: 'cuda' asks for a GPU, but CUDA is not available here"):
        check_device("cuda")
    assert check_device("cpu") == "cpu"


def _run(run_id: str, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NOISYSEG_TRACEBACK", None)
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(SUPERVISED).replace(" ", ""),
               *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "run_id, override, last",
    [
        ("training", ("--max_epoch", "3"), "--max_epoch: unknown option; did you mean --max_epochs?"),
        ("training", ("--amp", "maybe"), "--amp: must be true or false, got 'maybe'"),
        ("training", ("--network_width", "0"), "--network_width: must be an integer >= 1, got 0"),
        ("evaluating", ("--device", "cuda:99"), "--device: 'cuda:99'"),
        ("trainig", (), "run trainig: no such run id in the config; did you mean training? "
                        "(run ids: evaluating, inference, training)"),
    ],
)
def test_option_errors_end_with_one_line(run_id, override, last, demo_dataset, tmp_path):
    out = tmp_path / "bundle"
    proc = _run(run_id, "--dataset_dir", str(demo_dataset.parent), "--datalist", str(demo_dataset),
                "--output_dir", str(out), *override)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("noisyseg: error: " + last), lines[-1]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_memory_format_is_checked_with_the_other_options():
    from custom.options import check_options

    assert check_options({"memory_format": "contiguous"}) == {"memory_format": "contiguous"}
    with pytest.raises(OptionError, match=r"^--memory_format: expected one of \['channels_last_3d', 'contiguous'\]"):
        check_options({"memory_format": "channels_last"})
