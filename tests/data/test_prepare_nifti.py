from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from custom.data import load_datalist, read_datalist_meta
from custom.data.prepare_cli import main_nifti
from custom.data.sources import read_dataset_labels
from custom.io import DataError, load_nifti, save_nifti
from custom.transforms.resampling import downsample_affine

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "prepare_nifti.py"
CASES = ["p1", "p2", "p3", "p4", "p5"]
SHAPE = (16, 14, 10)
AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
LABELS = {"0": "background", "1": "heart", "2": "vessel"}


def _label(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, dtype=np.uint8)
    x = int(rng.integers(3, 6))
    label[x : x + 8, 3:11, 2:8] = 1
    label[x + 8 : x + 10, 5:9, 3:7] = 2
    return label


def _write_pair(root: Path, split: str, case_id: str, seed: int, image_name: str | None = None) -> None:
    label = _label(seed)
    image = (np.random.default_rng(seed).standard_normal(SHAPE) + label).astype(np.float32)
    save_nifti(image, AFFINE, root / f"images{split}" / (image_name or f"{case_id}.nii.gz"))
    save_nifti(label, AFFINE, root / f"labels{split}" / f"{case_id}.nii.gz")


@pytest.fixture()
def root(tmp_path) -> Path:
    folder = tmp_path / "Task99_Toy"
    for index, case_id in enumerate(CASES):
        _write_pair(folder, "Tr", case_id, index)
    (folder / "dataset.json").write_text(json.dumps({"name": "toy", "labels": LABELS}))
    return folder


def _args(root: Path, out: Path, *extra: str, noise: tuple[str, ...] = ("--noise", "symmetric", "--param", "rate=0.1")):
    return ["--root", str(root), "--out", str(out), "--val-count", "1", "--hq-count", "1", *noise, *extra]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- success


def test_cli_builds_the_datalist_from_an_msd_folder(root, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *_args(root, out, "--test-count", "1")], capture_output=True, text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "mean noisy Dice on the 2 LQ cases" in run.stdout
    path = out / "datalist.json"
    meta = read_datalist_meta(path)
    assert meta["labels"] == LABELS and meta["num_classes"] == 3 and meta["name"] == "Task99_Toy"
    assert meta["spacing"] == [0.8, 0.8, 2.0]
    training = load_datalist(path)
    assert sorted(i["quality"] for i in training) == ["hq", "lq", "lq"]
    test = load_datalist(path, "test")
    assert len(test) == 1 and test[0]["image"].endswith(f"imagesTs/{test[0]['case_id']}.nii.gz")
    assert len(load_datalist(path, "validation")) == 1
    item = load_datalist(path, quality="lq")[0]
    image, affine, _ = load_nifti(item["image"])
    noisy, noisy_affine, _ = load_nifti(item["label"])
    clean = load_nifti(item["label_clean"])[0]
    np.testing.assert_allclose(affine, AFFINE)
    np.testing.assert_allclose(noisy_affine, AFFINE)
    source = load_nifti(root / "labelsTr" / f"{item['case_id']}.nii.gz")[0]
    np.testing.assert_array_equal(clean, source)
    assert 0.0 < float(np.mean(noisy != clean)) < 0.25 and set(np.unique(noisy).tolist()) <= {0, 1, 2}
    # a rerun is byte-identical
    assert main_nifti(_args(root, tmp_path / "again", "--test-count", "1")) == 0
    assert _files(out) == _files(tmp_path / "again")


def test_dedicated_test_split(root, tmp_path, capsys):
    _write_pair(root, "Ts", "t1", 11)
    _write_pair(root, "Ts", "t2", 12)
    out = tmp_path / "out"
    assert main_nifti(_args(root, out)) == 0
    assert [i["case_id"] for i in load_datalist(out / "datalist.json", "test")] == ["t1", "t2"]
    assert len(load_datalist(out / "datalist.json")) == 4  # all 5 cases minus 1 validation
    # giving test cases twice is refused
    assert main_nifti(_args(root, tmp_path / "other", "--test-count", "1")) == 2
    assert "test_count must be 0" in capsys.readouterr().err


def test_images_ts_without_labels_is_ignored(root, tmp_path, capsys):
    save_nifti(np.zeros(SHAPE, np.float32), AFFINE, root / "imagesTs" / "hidden.nii.gz")
    out = tmp_path / "out"
    assert main_nifti(_args(root, out)) == 0
    assert "has no labelsTs/ beside it and is ignored" in capsys.readouterr().out
    assert load_datalist(out / "datalist.json", "test") == []


def test_out_as_a_json_path(root, tmp_path):
    datalist = tmp_path / "lists" / "toy_noisy.json"
    assert main_nifti(_args(root, datalist)) == 0
    assert datalist.is_file() and (tmp_path / "lists" / "toy_noisy" / "noise_report.csv").is_file()
    raw = json.loads(datalist.read_text())
    assert raw["training"][0]["image"].startswith("toy_noisy/imagesTr/")
    assert all(Path(i["image"]).is_file() for i in load_datalist(datalist))
    assert oct(datalist.stat().st_mode & 0o044) == oct(0o044)  # readable by others like any ordinary file


def test_classes_inferred_without_dataset_json_and_nnunet_names(tmp_path):
    root = tmp_path / "raw"
    for index, case_id in enumerate(CASES):
        _write_pair(root, "Tr", case_id, index, image_name=f"{case_id}_0000.nii.gz")
    out = tmp_path / "out"
    assert main_nifti(_args(root, out)) == 0
    meta = read_datalist_meta(out / "datalist.json")
    assert meta["num_classes"] == 3 and meta["labels"] == {"0": "background", "1": "class_1", "2": "class_2"}
    assert {i["case_id"] for i in load_datalist(out / "datalist.json")} <= set(CASES)


def test_downsampled_nifti(root, tmp_path):
    out = tmp_path / "out"
    assert main_nifti(_args(root, out, "--downsample", "2")) == 0
    item = load_datalist(out / "datalist.json")[0]
    image, affine, _ = load_nifti(item["image"])
    assert image.shape == (8, 7, 5)
    np.testing.assert_allclose(affine, downsample_affine(AFFINE, 2))
    assert read_datalist_meta(out / "datalist.json")["spacing"] == [1.6, 1.6, 4.0]


def test_read_dataset_labels_formats(tmp_path):
    path = tmp_path / "dataset.json"
    assert read_dataset_labels(path) is None
    path.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))  # nnU-Net v2
    assert read_dataset_labels(path) == {"0": "background", "1": "liver", "2": "tumour"}
    path.write_text(json.dumps({"name": "x"}))
    assert read_dataset_labels(path) is None
    path.write_text(json.dumps({"labels": {"0": "background", "2": "gap"}}))
    with pytest.raises(DataError, match="contiguous"):
        read_dataset_labels(path)
    path.write_text(json.dumps({"labels": {"background": [0], "x": [1, 2]}}))
    with pytest.raises(DataError, match="must map indices"):
        read_dataset_labels(path)


# ----- errors


def _missing_images_tr(root: Path) -> Path:
    for path in (root / "imagesTr").iterdir():
        path.unlink()
    (root / "imagesTr").rmdir()
    return root / "imagesTr"


def _empty_labels_tr(root: Path) -> Path:
    for path in (root / "labelsTr").iterdir():
        path.unlink()
    return root / "labelsTr"


def _image_without_label(root: Path) -> Path:
    (root / "labelsTr" / "p2.nii.gz").unlink()
    return root / "imagesTr" / "p2.nii.gz"


def _label_without_image(root: Path) -> Path:
    save_nifti(_label(7), AFFINE, root / "labelsTr" / "zz.nii.gz")
    return root / "labelsTr" / "zz.nii.gz"


def _shape_mismatch(root: Path) -> Path:
    save_nifti(np.zeros((16, 14, 9), np.uint8), AFFINE, root / "labelsTr" / "p3.nii.gz")
    return root / "labelsTr" / "p3.nii.gz"


def _affine_mismatch(root: Path) -> Path:
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.01
    save_nifti(_label(2), shifted, root / "labelsTr" / "p3.nii.gz")
    return root / "labelsTr" / "p3.nii.gz"


def _undeclared_class(root: Path) -> Path:
    label = _label(4)
    label[0, 0, 0] = 3
    save_nifti(label, AFFINE, root / "labelsTr" / "p5.nii.gz")
    return root / "labelsTr" / "p5.nii.gz"


def _fractional_label(root: Path) -> Path:
    save_nifti(_label(1).astype(np.float32) * 0.5, AFFINE, root / "labelsTr" / "p2.nii.gz")
    return root / "labelsTr" / "p2.nii.gz"


def _corrupt_image(root: Path) -> Path:
    (root / "imagesTr" / "p4.nii.gz").write_bytes(b"\x1f\x8b garbage")
    return root / "imagesTr" / "p4.nii.gz"


def _image_4d(root: Path) -> Path:
    save_nifti(np.zeros((*SHAPE, 2), np.float32), AFFINE, root / "imagesTr" / "p1.nii.gz")
    return root / "imagesTr" / "p1.nii.gz"


def _labels_ts_alone(root: Path) -> Path:
    save_nifti(_label(0), AFFINE, root / "labelsTs" / "t1.nii.gz")
    return root / "labelsTs"


def _case_in_both_splits(root: Path) -> Path:
    _write_pair(root, "Ts", "p1", 0)
    return root / "imagesTs"


def _stored_twice(root: Path) -> Path:
    save_nifti(_label(1), AFFINE, root / "labelsTr" / "p1.nii")
    return root / "labelsTr" / "p1.nii.gz"


def _bad_dataset_json(root: Path) -> Path:
    (root / "dataset.json").write_text("{labels: }")
    return root / "dataset.json"


def _dataset_json_label_key(root: Path) -> Path:
    (root / "dataset.json").write_text(json.dumps({"name": "toy", "label": LABELS}))
    return root / "dataset.json"


def _dataset_json_list(root: Path) -> Path:
    (root / "dataset.json").write_text(json.dumps([LABELS]))
    return root / "dataset.json"


def _dataset_json_null_labels(root: Path) -> Path:
    (root / "dataset.json").write_text(json.dumps({"labels": None}))
    return root / "dataset.json"


def _stray_value_without_dataset_json(root: Path) -> Path:
    (root / "dataset.json").unlink()
    label = _label(2)
    label[0, 0, 0] = 7  # classes 0, 1, 2 and a stray 7: not an 8-class task
    save_nifti(label, AFFINE, root / "labelsTr" / "p3.nii.gz")
    return root / "labelsTr" / "p3.nii.gz"


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_dataset_json_label_key, "has 'label' but no 'labels' entry"),
        (_dataset_json_list, "must be a JSON object with a 'labels' entry, got a list"),
        (_dataset_json_null_labels, "'labels' must be a non-empty object"),
        (_stray_value_without_dataset_json, "label value 7 implies 8 classes, but classes [3, 4, 5, 6] occur in no"),
        (_missing_images_tr, "folder not found"),
        (_empty_labels_tr, "folder holds no NIfTI files"),
        (_image_without_label, "no matching label p2.nii.gz"),
        (_label_without_image, "no matching image"),
        (_shape_mismatch, "label shape (16, 14, 9) differs from image shape (16, 14, 10)"),
        (_affine_mismatch, "label affine differs from the image's"),
        (_undeclared_class, "label values [3] are outside the declared classes 0..2"),
        (_fractional_label, "non-integer values"),
        (_corrupt_image, "cannot read NIfTI"),
        (_image_4d, "expected a 3D image"),
        (_labels_ts_alone, "labelsTs/ exists but imagesTs/ does not"),
        (_case_in_both_splits, "cases also in imagesTr/: ['p1']"),
        (_stored_twice, "is stored twice"),
        (_bad_dataset_json, "cannot read JSON"),
    ],
)
def test_bad_input_exits_2_names_the_file_and_writes_nothing(root, tmp_path, capsys, damage, problem):
    culprit = damage(root)
    results = tmp_path / "results"
    results.mkdir()
    assert main_nifti(_args(root, results / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {culprit}: "), err
    assert problem in err
    assert list(results.iterdir()) == []  # neither the output nor a temporary folder


def test_missing_root(tmp_path, capsys):
    assert main_nifti(_args(tmp_path / "nowhere", tmp_path / "out")) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nowhere'}: dataset folder not found")


def test_unknown_noise_is_refused_before_reading_data(root, tmp_path, capsys):
    _corrupt_image(root)
    with pytest.raises(SystemExit) as info:
        main_nifti(_args(root, tmp_path / "out", "--noise", "salt"))
    assert info.value.code == 2
    assert "unknown noise 'salt'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_bad_noise_parameter_value_names_the_label(root, tmp_path, capsys):
    assert main_nifti(_args(root, tmp_path / "out", noise=("--noise", "symmetric", "--param", "rate=2"))) == 2
    err = capsys.readouterr().err
    assert "labelsTr/" in err and "noise 'symmetric' failed" in err and not (tmp_path / "out").exists()


def test_existing_outputs_are_kept(root, tmp_path, capsys):
    datalist = tmp_path / "list.json"
    datalist.write_text("{}")
    assert main_nifti(_args(root, datalist)) == 2
    assert "datalist exists" in capsys.readouterr().err and datalist.read_text() == "{}"


def test_output_containing_the_input_is_refused(root, tmp_path, capsys):
    before = _files(root)
    assert main_nifti(_args(root, root, "--overwrite")) == 2
    assert main_nifti(_args(root, root.parent, "--overwrite")) == 2
    assert "must not contain the input folder" in capsys.readouterr().err
    assert _files(root) == before


def test_script_exit_code_and_stderr(root, tmp_path):
    culprit = _shape_mismatch(root)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *_args(root, tmp_path / "out")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {culprit}: label shape")
    assert not (tmp_path / "out").exists()


# ----- noise sizes in mm and lost classes (issue 21)

THIN_SHAPE = (40, 40, 30)
THIN_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels, like the brain MRI of issue 21
THIN_LABELS = {"0": "background", "1": "white matter", "2": "grey matter"}
THIN_CASES = [f"sub{i}" for i in range(8)]


def _thin_label(index: int) -> np.ndarray:
    """Class 1 a ball of radius 18 mm, class 2 a shell 4 mm (2 voxels) thick around it: any erosion with a box of
    side >= 3 voxels erases class 2 (checked in the test), a side of 2 keeps part of it."""
    grid = np.indices(THIN_SHAPE).astype(np.float64)
    centre = np.array([19.5 + index % 3 - 1, 19.5 - index % 2, 14.5]).reshape(3, 1, 1, 1)
    radius = np.sqrt(((grid - centre) ** 2).sum(axis=0))
    label = np.zeros(THIN_SHAPE, np.uint8)
    label[radius <= 9.0] = 1
    label[(radius > 9.0) & (radius <= 11.0)] = 2
    return label


@pytest.fixture()
def thin_root(tmp_path) -> Path:
    folder = tmp_path / "Task98_Brain2mm"
    for index, case_id in enumerate(THIN_CASES):
        label = _thin_label(index)
        image = (np.random.default_rng(index).standard_normal(THIN_SHAPE) + label).astype(np.float32)
        save_nifti(image, THIN_AFFINE, folder / "imagesTr" / f"{case_id}.nii.gz")
        save_nifti(label, THIN_AFFINE, folder / "labelsTr" / f"{case_id}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"name": "brain2mm", "labels": THIN_LABELS}))
    return folder


def _thin_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "--out", str(out), "--noise", "mtcl", "--hq-count", "2", "--val-count", "0",
            "--seed", "7", *extra]


def _report_rows(out: Path) -> list[dict]:
    import csv

    with open(out / "noise_report.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_thin_class_is_the_case_of_issue_21():
    from custom.noise import cube_morphology

    label = _thin_label(0)
    for side in (3, 4, 5):
        assert 2 not in np.unique(cube_morphology(label, side, "erode"))
    assert 2 in np.unique(cube_morphology(label, 2, "erode"))


def test_mtcl_at_2mm_keeps_every_class_and_reports_the_sizes(thin_root, tmp_path, capsys):
    from custom.noise import simulate_noise

    out = tmp_path / "out"
    assert main_nifti(_thin_args(thin_root, out)) == 0  # default options: sizes in mm, --on-empty redraw
    stdout = capsys.readouterr().out
    rows = _report_rows(out)
    assert list(rows[0]) == [
        "case_id", "quality", "noise", "params", "noisy_dice", "dice_1_white_matter", "dice_2_grey_matter",
        "lost_classes", "attempts", "rejected_draws", "size_mm", "size_voxels",
    ]
    lq = [row for row in rows if row["quality"] == "lq"]
    assert len(lq) == 6
    for row in lq:
        noisy = load_nifti(out / "labelsTr_noisy" / f"{row['case_id']}.nii.gz")[0]
        assert set(np.unique(noisy).tolist()) == {0, 1, 2}, row  # no class erased
        params = json.loads(row["params"])
        # 1.875..9.375 mm at 2 mm: cube sides 1..5 voxels (rounded half up), not the 3..15 of the LA's 0.625 mm
        assert params["units"] == "mm" and params["r_range_mm"] == [1.875, 9.375]
        assert params["r_range_voxels"] == [1, 5] and 1 <= params["r"] <= 5
        assert json.loads(row["size_voxels"]) == params["r_voxels"] == [params["r"]] * 3
        assert json.loads(row["size_mm"]) == params["r_mm"] == [2.0 * params["r"]] * 3
        assert row["lost_classes"] == "[]" and float(row["dice_2_grey_matter"]) > 0.0
        rejected = json.loads(row["rejected_draws"])
        assert int(row["attempts"]) == len(rejected) + 1
        assert all(r["lost"] == [2] and r["params"]["op"] == "erode" and r["params"]["r"] >= 3 for r in rejected)
        # the kept draw is reproducible from (seed, case, attempt) alone
        clean = load_nifti(thin_root / "labelsTr" / f"{row['case_id']}.nii.gz")[0].astype(np.uint8)
        again = simulate_noise("mtcl", clean, seed=7, case_id=row["case_id"], num_classes=3, spacing=(2, 2, 2),
                               attempt=params.get("attempt", 0))
        np.testing.assert_array_equal(noisy, again.noisy)
    redrawn = [row["case_id"] for row in lq if row["rejected_draws"] != "[]"]
    assert redrawn, "seed 7 should need a redraw for some case (the first draw erased the shell)"
    meta = read_datalist_meta(out / "datalist.json")
    check = meta["noise_check"]
    assert check["on_empty"] == "redraw" and check["redrawn_cases"] == redrawn and check["cases_with_lost_class"] == []
    assert check["per_class"]["2"]["name"] == "grey matter" and check["per_class"]["2"]["lq_cases_lost"] == 0
    assert check["per_class"]["2"]["lq_cases_redrawn"] == len(redrawn)
    assert "per class (LQ noisy-vs-clean Dice, LQ cases that lost the class): white matter " in stdout
    assert "grey matter " in stdout and ", lost 0" in stdout
    assert f"lost-class check (--on-empty redraw): {len(redrawn)} of 6 LQ cases redrawn" in stdout


def test_voxel_sizes_of_the_la_erase_the_thin_class_and_keep_counts_it(thin_root, tmp_path, capsys):
    # the behaviour before issue 21 (3..15 voxels whatever the spacing), kept on purpose: the losses are counted
    out = tmp_path / "out"
    argv = _thin_args(thin_root, out, "--param", "r_min=3", "--param", "r_max=15", "--on-empty", "keep")
    assert main_nifti(argv) == 0
    stdout = capsys.readouterr().out
    lq = [row for row in _report_rows(out) if row["quality"] == "lq"]
    lost = [row for row in lq if row["lost_classes"] != "[]"]
    assert lost and all(json.loads(row["params"])["op"] == "erode" for row in lost)
    assert all(row["dice_2_grey_matter"] == "0.000000" and row["attempts"] == "1" for row in lost)
    assert all(json.loads(row["params"])["units"] == "voxel" for row in lq)
    meta = read_datalist_meta(out / "datalist.json")
    check = meta["noise_check"]
    assert sorted(check["cases_with_lost_class"]) == sorted(row["case_id"] for row in lost)
    lost_grey = sum("2" in row["lost_classes"] for row in lost)
    assert check["per_class"]["2"]["lq_cases_lost"] == lost_grey
    assert f"grey matter {check['per_class']['2']['mean_noisy_dice_lq']:.4f}, lost {lost_grey}" in stdout
    assert f"{len(lost)} kept with a lost class" in stdout and "warning: " in stdout


def test_on_empty_error_names_the_case_and_class(thin_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main_nifti(_thin_args(thin_root, out, "--on-empty", "error")) == 2
    err = capsys.readouterr().err
    assert "labelsTr/sub" in err and "erased class(es) 2 (grey matter)" in err and "--on-empty error" in err
    assert not out.exists()


def test_redraw_is_bounded(thin_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main_nifti(_thin_args(thin_root, out, "--redraw-attempts", "1")) == 2
    assert "each of 1 draws of noise 'mtcl' erased a class" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main_nifti(_thin_args(thin_root, out, "--redraw-attempts", "0"))
    with pytest.raises(SystemExit):
        main_nifti(_thin_args(thin_root, out, "--on-empty", "ignore"))


def test_mtcl_sizes_per_axis_on_anisotropic_spacing(root, tmp_path):
    # the toy set: 0.8 x 0.8 x 2.0 mm; sides drawn on the 0.8 mm grid (2..12 voxels), the 2 mm axis rounded half up
    out = tmp_path / "out"
    assert main_nifti(_args(root, out, noise=("--noise", "mtcl"))) == 0
    for row in _report_rows(out):
        if row["quality"] != "lq":
            assert row["attempts"] == "0" and row["size_mm"] == "" and row["lost_classes"] == "[]"
            continue
        params = json.loads(row["params"])
        k = params["r"]
        z = max(1, int(np.floor(k * 0.8 / 2.0 + 0.5 + 1e-9)))
        assert params["r_range_voxels"] == [2, 12] and json.loads(row["size_voxels"]) == [k, k, z]
        assert json.loads(row["size_mm"]) == pytest.approx([0.8 * k, 0.8 * k, 2.0 * z])
