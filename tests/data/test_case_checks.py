"""Per-case checks of images and labels (custom/data/case_checks.py), on real NIfTI files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.data.case_checks import (
    check_case,
    check_case_arrays,
    check_cases,
    check_label_values,
    require_meta,
    require_streams,
)
from custom.io import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]
SPACING = np.diag([1.25, 1.25, 1.25, 1.0])


def _save(path: Path, array: np.ndarray, affine: np.ndarray = SPACING) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def _case(tmp_path: Path, label: np.ndarray | None = None, label_affine: np.ndarray = SPACING,
          image: np.ndarray | None = None, image_affine: np.ndarray = SPACING) -> dict:
    image = np.random.default_rng(0).random((16, 16, 12)).astype(np.float32) if image is None else image
    if label is None:
        label = np.zeros((16, 16, 12), np.uint8)
        label[4:8, 4:8, 4:8] = 1
    return {"image": _save(tmp_path / "img.nii.gz", image, image_affine),
            "label": _save(tmp_path / "lab.nii.gz", label, label_affine)}


def _problem(item: dict, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        check_case(item, num_classes=2, pixdim=[1.25, 1.25, 1.25], **kwargs)
    return str(info.value)


def test_a_good_case_passes(tmp_path):
    item = _case(tmp_path)
    assert check_cases([item, item], num_classes=2, pixdim=[1.25] * 3) == 2
    shifted = SPACING.copy()
    shifted[0, 3] += 0.01  # well within a voxel: rounding in the tool that wrote the label
    check_case(_case(tmp_path, label_affine=shifted), num_classes=2)


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([0, 0.5, 1], np.float32),
         "1 voxel(s) are not whole class numbers (e.g. [0.5]); a label holds the classes 0..1"),
        (np.array([0, np.nan], np.float32), "1 voxel(s) are not whole class numbers (e.g. [nan])"),
        (np.array([-1, 0, 1], np.int16), "label values [-1] are outside the task's classes 0..1"),
        (np.array([0, 255], np.uint8), "label values [255] are outside the task's classes 0..1"),
        (np.array([0, 7], np.uint8), "label values [7] are outside the task's classes 0..1"),
    ],
)
def test_label_values_are_the_task_classes(values, message):
    with pytest.raises(DataError) as info:
        check_label_values(values, 2, "/data/lab.nii.gz")
    assert str(info.value).startswith("/data/lab.nii.gz: " + message), str(info.value)


def test_label_values_in_files(tmp_path):
    label = np.zeros((16, 16, 12), np.float32)
    label[4:8, 4:8, 4:8] = 0.5
    assert _problem(_case(tmp_path, label=label)).startswith(
        f"{tmp_path / 'lab.nii.gz'}: 64 voxel(s) are not whole class numbers (e.g. [0.5])")


def test_label_grid_must_match_the_image(tmp_path):
    image = str(tmp_path / "img.nii.gz")
    assert _problem(_case(tmp_path, label=np.zeros((16, 16, 8), np.uint8))) == (
        f"{tmp_path / 'lab.nii.gz'}: shape [16, 16, 8] differs from its image's [16, 16, 12] ({image})")
    shifted = SPACING.copy()
    shifted[0, 3] += 20
    assert _problem(_case(tmp_path, label_affine=shifted)) == (
        f"{tmp_path / 'lab.nii.gz'}: position or orientation differs from its image's by up to 20 mm (affine; "
        f"{image}): the label does not lie on the image")
    coarse = np.diag([2.5, 2.5, 2.5, 1.0])
    assert _problem(_case(tmp_path, label_affine=coarse)).endswith(
        f"spacing [2.5, 2.5, 2.5] mm differs from its image's [1.25, 1.25, 1.25] mm ({image})")
    thick = np.diag([1.25, 1.25, 6.0, 1.0])
    assert "spacing [1.25, 1.25, 6.0] mm differs" in _problem(_case(tmp_path, label_affine=thick))
    flipped = SPACING.copy()
    flipped[0, 0] = -1.25
    assert "position or orientation differs" in _problem(_case(tmp_path, label_affine=flipped))


def test_image_must_be_3d_with_a_sane_spacing(tmp_path):
    rng = np.random.default_rng(0)
    image = str(tmp_path / "img.nii.gz")
    assert _problem(_case(tmp_path, image=rng.random((16, 16, 12, 2)).astype(np.float32))) == (
        f"{image}: expected a 3D volume, got a 4D (several channels or time points) one of shape [16, 16, 12, 2]")
    assert _problem(_case(tmp_path, image=rng.random((16, 16)).astype(np.float32))) == (
        f"{image}: expected a 3D volume, got a 2D one of shape [16, 16]")
    check_case(_case(tmp_path, image=rng.random((16, 16, 12, 1)).astype(np.float32)), num_classes=2)
    tiny = np.diag([0.0125, 0.0125, 0.0125, 1.0])
    assert _problem(_case(tmp_path, image_affine=tiny, label_affine=tiny)) == (
        f"{image}: spacing [0.0125, 0.0125, 0.0125] mm is outside the sane range [0.05, 50.0] mm; check the pixdim "
        "(or affine) in its header")
    small = np.diag([0.1, 0.1, 0.1, 1.0])
    assert "shrinks to [2, 2, 1] voxels at the training spacing [1.25, 1.25, 1.25] mm" in _problem(
        _case(tmp_path, image_affine=small, label_affine=small))
    assert "over the limit of 1,000 voxels (max_voxels)" in _problem(_case(tmp_path), max_voxels=1000)


def test_case_arrays_in_preparation(tmp_path):
    image = np.zeros((8, 8, 6), np.float32)
    label = np.zeros((8, 8, 6), np.uint8)
    check_case_arrays(image, label, SPACING, "img", "lab")
    image[1, 2, 3] = np.inf
    with pytest.raises(DataError, match=r"^img: 1 non-finite voxel\(s\) \(NaN or Inf\); replace them"):
        check_case_arrays(image, label, SPACING, "img", "lab")
    with pytest.raises(DataError, match=r"^lab: shape \[8, 8, 5\] differs from its image's \[8, 8, 6\] \(img\)"):
        check_case_arrays(image, label[:, :, :5], SPACING, "img", "lab")


def _msd(root: Path, nan_case: int | None) -> Path:
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.random((24, 24, 16)).astype(np.float32)
        label = np.zeros((24, 24, 16), np.uint8)
        label[8:14, 8:14, 4:10] = 1
        if i == nan_case:
            image[1, 2, 3] = np.nan
        _save(root / "imagesTr" / f"c{i}_0000.nii.gz", image, np.eye(4))
        _save(root / "labelsTr" / f"c{i}.nii.gz", label, np.eye(4))
    return root


def _prepare(root: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/prepare_nifti.py", "--root", str(root), "--out", str(out),
                           "--noise", "none"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_prepare_nifti_refuses_a_non_finite_image(tmp_path):
    root = _msd(tmp_path / "msd", nan_case=3)
    out = tmp_path / "prepared"
    proc = _prepare(root, out)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {root / 'imagesTr' / 'c3_0000.nii.gz'}: 1 non-finite voxel(s) (NaN or Inf); replace them (e.g. "
        "with 0) before preparing the dataset")
    assert not out.exists()


def test_datalist_entries_and_streams_the_configs_need():
    meta = {"num_classes": 2, "spacing": [1.0, 1.0, 1.0]}
    assert require_meta(meta, "d.json") is meta
    with pytest.raises(DataError, match=r"^d.json: lacks 'spacing' \(the training voxel size in mm"):
        require_meta({"num_classes": 2}, "d.json")
    split = ([{"quality": "hq"}], [{"quality": "lq"}])
    assert require_streams(split, "d.json") is split
    with pytest.raises(DataError, match=r"^d.json: the training split has no HQ case \(no item with 'quality': 'hq'\)"):
        require_streams(([], split[1]), "d.json")


def test_prepare_nifti_on_a_full_disk_exits_2_and_leaves_nothing(tmp_path, small_tmpfs):
    root = _msd(tmp_path / "msd", nan_case=None)
    small = small_tmpfs("120k")
    proc = _prepare(root, small / "prepared")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {small / 'prepared'}: cannot write the prepared dataset (No space left on device)")
    assert "Traceback" not in proc.stderr
    assert list(small.iterdir()) == []
