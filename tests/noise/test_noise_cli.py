"""scripts/make_noisy_labels.py end to end on tiny NIfTI files, and its error paths."""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.noise import foreground_dice, select_corrupted_cases, simulate_noise

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_noisy_labels.py"
AFFINE = np.diag([0.5, 0.5, 1.0, 1.0])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cli_main():
    """The script's ``main`` loaded from its file (fast in-process runs of the error paths)."""
    return runpy.run_path(str(SCRIPT))["main"]


def write_label(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def make_cases(folder: Path, count: int = 4, three_class: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.indices((16, 16, 16)).astype(np.float64)
    cases = {}
    for i in range(count):
        label = ((grid - 7.5 - 0.5 * i) ** 2).sum(axis=0) <= 5.0**2
        label = label.astype(np.uint8)
        if three_class:
            label[label.shape[0] // 2 :][label[label.shape[0] // 2 :] == 1] = 2
        name = f"case{i}.nii.gz" if i % 2 == 0 else f"case{i}.nii"
        write_label(folder / name, label)
        cases[f"case{i}"] = label
    return cases


def read_report(folder: Path) -> list[dict[str, str]]:
    with open(folder / "noise_report.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_end_to_end_writes_noisy_maps_and_report(tmp_path):
    cases = make_cases(tmp_path / "labels")
    out = tmp_path / "noisy"
    result = run_cli("--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "sp_dilate",
                     "--seed", "1", "--param", "beta=0.5")
    assert result.returncode == 0, result.stderr
    assert "mean noisy Dice" in result.stdout and "[4/4]" in result.stdout
    rows = read_report(out)
    assert [row["case_id"] for row in rows] == sorted(cases)
    assert list(rows[0]) == [
        "case_id", "noise", "params", "noisy_dice", "label_clean", "label_noisy", "dice_1",
        "lost_classes", "attempts", "rejected_draws", "size_mm", "size_voxels",
    ]
    for row in rows:
        clean = cases[row["case_id"]]
        image = nib.load(row["label_noisy"])
        noisy = np.asarray(image.dataobj)
        assert noisy.dtype == np.uint8
        np.testing.assert_allclose(image.affine, AFFINE)
        # the header's voxel size (0.5, 0.5, 1) is the spacing
        expected = simulate_noise("sp_dilate", clean, seed=1, case_id=row["case_id"], num_classes=2,
                                  spacing=(0.5, 0.5, 1.0), beta=0.5)
        np.testing.assert_array_equal(noisy, expected.noisy)
        assert json.loads(row["params"]) == expected.params
        assert float(row["noisy_dice"]) == pytest.approx(foreground_dice(noisy, clean), abs=1e-6)
        assert float(row["dice_1"]) == pytest.approx(float(row["noisy_dice"]), abs=1e-6)  # binary: one class
        assert row["lost_classes"] == "[]" and row["attempts"] == "1" and row["rejected_draws"] == "[]"
        # sp_dilate reports its per-class boundary displacement in mm and in voxels of each axis
        (distance,) = json.loads(row["size_mm"])
        assert json.loads(row["size_voxels"]) == [pytest.approx([distance / 0.5, distance / 0.5, distance], abs=1e-4)]
    assert "per class (Dice, cases that lost the class): class 1" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["case0.nii.gz", "case1.nii", "case2.nii.gz", "case3.nii", "noise_report.csv"]
    )


def test_alpha_corrupts_a_fraction_and_copies_the_rest(tmp_path, cli_main):
    cases = make_cases(tmp_path / "labels")
    out = tmp_path / "noisy"
    code = cli_main(["--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "mtcl",
                     "--alpha", "0.5", "--seed", "3"])
    assert code == 0
    chosen = set(select_corrupted_cases(list(cases), 0.5, 3))
    rows = read_report(out)
    assert {row["case_id"] for row in rows if row["noise"] == "mtcl"} == chosen
    for row in rows:
        if row["noise"] == "none":
            np.testing.assert_array_equal(np.asarray(nib.load(row["label_noisy"]).dataobj), cases[row["case_id"]])
            assert float(row["noisy_dice"]) == 1.0 and json.loads(row["params"]) == {"noise": "none"}


def test_json_params_and_num_classes(tmp_path, cli_main):
    cases = make_cases(tmp_path / "labels", count=2, three_class=True)
    out = tmp_path / "noisy"
    matrix = "[[0.9,0.05,0.05],[0.1,0.8,0.1],[0,0,1]]"
    code = cli_main(["--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "class_conditional",
                     "--param", f"matrix={matrix}"])
    assert code == 0
    for row in read_report(out):
        assert json.loads(row["params"])["matrix"] == json.loads(matrix)
        noisy = np.asarray(nib.load(row["label_noisy"]).dataobj)
        assert np.all(noisy[cases[row["case_id"]] == 2] == 2)  # row 2 of the matrix keeps class 2


def test_unknown_noise_fails_before_writing(tmp_path):
    make_cases(tmp_path / "labels", count=1)
    out = tmp_path / "noisy"
    result = run_cli("--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "speckle")
    assert result.returncode == 2
    assert "speckle" in result.stderr and "mtcl" in result.stderr
    assert not out.exists()


def test_corrupt_file_is_named_and_nothing_is_written(tmp_path):
    make_cases(tmp_path / "labels", count=2)
    (tmp_path / "labels" / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "noisy"
    out.mkdir()
    (out / "keep.txt").write_text("already here")
    result = run_cli("--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "mtcl")
    assert result.returncode == 2
    assert "broken.nii.gz" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_empty_folder(tmp_path, cli_main, capsys):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "notes.txt").write_text("no labels here")
    code = cli_main(["--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "noisy"), "--noise", "mtcl"])
    assert code == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "labels") in error and "no NIfTI" in error
    assert not (tmp_path / "noisy").exists()


@pytest.mark.parametrize(
    "bad_value, extra, problem",
    [(2, ["--num-classes", "2"], "outside 0..1"), (-1, [], "negative"), (0.5, [], "integer")],
)
def test_bad_label_values_are_named(tmp_path, cli_main, capsys, bad_value, extra, problem):
    make_cases(tmp_path / "labels", count=2)
    bad = np.zeros((8, 8, 8), dtype=np.float32 if isinstance(bad_value, float) else np.int16)
    bad[1, 1, 1] = bad_value
    write_label(tmp_path / "labels" / "zbad.nii.gz", bad)
    out = tmp_path / "noisy"
    code = cli_main(["--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "mtcl", *extra])
    assert code == 2
    error = capsys.readouterr().err
    assert "zbad.nii.gz" in error and problem in error
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--noise", "symmetric", "--param", "rate=1.5"],  # invalid value: caught by the dry run
        ["--noise", "mtcl", "--param", "beta=0.5"],  # parameter of another noise
        ["--noise", "mtcl", "--alpha", "2"],
    ],
)
def test_bad_parameters_fail_before_writing(tmp_path, cli_main, args):
    make_cases(tmp_path / "labels", count=1)
    out = tmp_path / "noisy"
    assert cli_main(["--labels", str(tmp_path / "labels"), "--out", str(out), *args]) == 2
    assert not out.exists()


def test_out_must_differ_from_labels(tmp_path, cli_main):
    make_cases(tmp_path / "labels", count=1)
    labels = str(tmp_path / "labels")
    assert cli_main(["--labels", labels, "--out", labels, "--noise", "mtcl"]) == 2


def test_duplicate_case_ids_are_refused(tmp_path, cli_main, capsys):
    cases = make_cases(tmp_path / "labels", count=1)
    write_label(tmp_path / "labels" / "case0.nii", cases["case0"])
    assert cli_main(["--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "noisy"), "--noise", "mtcl"]) == 2
    assert "case0" in capsys.readouterr().err


def test_mtcl_sizes_in_mm_use_the_header_spacing(tmp_path, cli_main):
    cases = make_cases(tmp_path / "labels", count=2)
    out = tmp_path / "noisy"
    assert cli_main(["--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "mtcl", "--seed", "2"]) == 0
    for row in read_report(out):
        params = json.loads(row["params"])
        # spacing (0.5, 0.5, 1.0) mm: sides on the 0.5 mm grid, 1.875 / 0.5 -> 4 .. 9.375 / 0.5 -> 19 voxels
        assert params["units"] == "mm" and params["r_range_voxels"] == [4, 19]
        assert json.loads(row["size_voxels"]) == params["r_voxels"] and json.loads(row["size_mm"]) == params["r_mm"]
        expected = simulate_noise("mtcl", cases[row["case_id"]], seed=2, case_id=row["case_id"], num_classes=2,
                                  spacing=(0.5, 0.5, 1.0), attempt=params.get("attempt", 0))
        np.testing.assert_array_equal(np.asarray(nib.load(row["label_noisy"]).dataobj), expected.noisy)


def test_ignore_spacing_needs_voxel_sizes_for_mtcl(tmp_path, cli_main, capsys):
    make_cases(tmp_path / "labels", count=1)
    out = tmp_path / "noisy"
    args = ["--labels", str(tmp_path / "labels"), "--out", str(out), "--noise", "mtcl", "--ignore-spacing"]
    assert cli_main(args) == 2
    assert "r_min / r_max" in capsys.readouterr().err and not out.exists()
    assert cli_main([*args, "--param", "r_min=3", "--param", "r_max=5"]) == 0
    assert json.loads(read_report(out)[0]["size_voxels"]) in ([3, 3, 3], [4, 4, 4], [5, 5, 5])
    assert read_report(out)[0]["size_mm"] == ""  # no spacing: no mm


def _thin_cases(folder: Path) -> dict[str, np.ndarray]:
    # class 1 a block, class 2 a 2-voxel-thick plate: an erosion with a side >= 3 voxels erases class 2
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    for i in range(4):
        label = np.zeros((16, 16, 16), np.uint8)
        label[3:12, 3:12, 3:12] = 1
        label[3:12, 3:12, 12:14] = 2
        write_label(folder / f"thin{i}.nii.gz", label)
        cases[f"thin{i}"] = label
    return cases


def test_on_empty_modes(tmp_path, cli_main, capsys):
    _thin_cases(tmp_path / "labels")
    base = ["--labels", str(tmp_path / "labels"), "--noise", "mtcl", "--param", "r_min=3", "--param", "r_max=3",
            "--seed", "0"]
    # r = 3 voxels: every erosion erases the plate; keep counts it, redraw draws until a dilation
    assert cli_main([*base, "--out", str(tmp_path / "keep"), "--on-empty", "keep"]) == 0
    kept = read_report(tmp_path / "keep")
    eroded = [row for row in kept if json.loads(row["params"])["op"] == "erode"]
    assert eroded and all(row["lost_classes"] == "[2]" and row["dice_2"] == "0.0" for row in eroded)
    assert "LOST classes [2] (kept)" in capsys.readouterr().out
    assert cli_main([*base, "--out", str(tmp_path / "redraw")]) == 0
    for row in read_report(tmp_path / "redraw"):
        assert row["lost_classes"] == "[]" and json.loads(row["params"])["op"] == "dilate"
        assert len(json.loads(row["rejected_draws"])) == int(row["attempts"]) - 1
    assert any(row["attempts"] != "1" for row in read_report(tmp_path / "redraw"))
    capsys.readouterr()
    assert cli_main([*base, "--out", str(tmp_path / "error"), "--on-empty", "error"]) == 2
    error = capsys.readouterr().err
    assert "erased class(es) 2" in error and "thin" in error and not (tmp_path / "error").exists()
