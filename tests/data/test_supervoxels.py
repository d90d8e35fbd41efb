"""Tests for custom/data/supervoxels.py and scripts/make_supervoxels.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from custom.data.supervoxels import (
    achievable_segmentation_accuracy,
    compute_supervoxels,
    relabel_contiguous_numpy,
    supervoxel_grid_step,
    supervoxel_label_counts,
    supervoxel_quality,
    undersegmentation_error,
)
from custom.io import load_nifti, save_nifti

REPO = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("make_supervoxels", REPO / "scripts" / "make_supervoxels.py")
    module = importlib.util.module_from_spec(spec)
    # registered so that the process pool can pickle the worker functions by module name
    sys.modules["make_supervoxels"] = module
    spec.loader.exec_module(module)
    return module


def _two_region_volume(shape=(16, 16, 12), seed=0):
    """A bright box in a dark volume with mild noise; the label is the box."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:11, 5:12, 3:9] = 1
    image = label * 3.0 + rng.normal(0, 0.1, shape)
    return image.astype(np.float32), label


# ---- quality metrics, hand-computed --------------------------------------------------------------------------

# shape: (8,) supervoxel 0 = voxels 0-2 (labels 0, 0, 1), supervoxel 1 = voxels 3-7 (all label 1)
SV_8 = np.array([0, 0, 0, 1, 1, 1, 1, 1])
LABEL_8 = np.array([0, 0, 1, 1, 1, 1, 1, 1])


def test_label_counts_by_hand():
    np.testing.assert_array_equal(supervoxel_label_counts(SV_8, LABEL_8), [[2, 1], [0, 5]])


def test_asa_by_hand():
    # majority labels: supervoxel 0 -> 0 (2 of 3 right), supervoxel 1 -> 1 (5 of 5): 7 / 8
    assert achievable_segmentation_accuracy(SV_8, LABEL_8) == pytest.approx(7 / 8)


def test_undersegmentation_error_corrected_by_hand():
    # supervoxel 0 touches label 0 (2 voxels, other side 1) and label 1 (1 voxel, other side 2): 1 + 1
    assert undersegmentation_error(SV_8, LABEL_8) == pytest.approx(2 / 8)
    # binary labels: equals 2 * (1 - ASA)
    assert undersegmentation_error(SV_8, LABEL_8) == pytest.approx(2 * (1 - 7 / 8))


def test_undersegmentation_error_levinshtein_by_hand():
    # label 0 is touched by supervoxel 0 (3 voxels); label 1 by supervoxels 0 and 1 (3 + 5): (3 + 8 - 8) / 8
    assert undersegmentation_error(SV_8, LABEL_8, "levinshtein") == pytest.approx(3 / 8)


def test_perfect_supervoxels_score_one_and_zero():
    label = np.array([[0, 0, 1], [2, 2, 1]])
    supervoxels = np.array([[3, 3, 0], [1, 1, 0]])
    assert achievable_segmentation_accuracy(supervoxels, label) == 1.0
    assert undersegmentation_error(supervoxels, label) == 0.0
    assert undersegmentation_error(supervoxels, label, "levinshtein") == 0.0


@pytest.mark.parametrize(
    "supervoxels, label",
    [
        (np.zeros(4, int), np.zeros(5, int)),  # shape mismatch
        (np.array([0, -1]), np.array([0, 1])),  # negative id
        (np.array([0.5, 1.0]), np.array([0, 1])),  # fractional id
        (np.zeros(0, int), np.zeros(0, int)),  # empty
    ],
)
def test_metrics_reject_bad_input(supervoxels, label):
    with pytest.raises(ValueError):
        achievable_segmentation_accuracy(supervoxels, label)


def test_undersegmentation_error_rejects_unknown_definition():
    with pytest.raises(ValueError, match="definition"):
        undersegmentation_error(SV_8, LABEL_8, "boundary")


# ---- grid step and relabelling ------------------------------------------------------------------------------


def test_grid_step_isotropic_n_segments():
    # 1000 mm^3 / 8 segments = 125 mm^3 -> 5 mm edges -> 5 voxels
    np.testing.assert_array_equal(supervoxel_grid_step((10, 10, 10), 1.0, n_segments=8), [5, 5, 5])


def test_grid_step_is_spacing_aware():
    # a 64-voxel supervoxel of 1x1x4 mm voxels is 256 mm^3: edge 6.35 mm -> 6, 6 and 1.59 -> 2 voxels
    np.testing.assert_array_equal(supervoxel_grid_step((100, 100, 25), (1, 1, 4), voxels_per_segment=64), [6, 6, 2])


def test_grid_step_clipped_to_shape_and_validated():
    # 4800 mm^3 / 2 = 2400 mm^3 -> 13.4 mm edge -> 13 voxels, but axis 0 only has 3
    np.testing.assert_array_equal(supervoxel_grid_step((3, 40, 40), 1.0, n_segments=2), [3, 13, 13])
    with pytest.raises(ValueError):
        supervoxel_grid_step((10, 10, 10), (1, 0, 1))
    with pytest.raises(ValueError):
        supervoxel_grid_step((10, 10, 10), 1.0, n_segments=0)
    with pytest.raises(ValueError):
        supervoxel_grid_step((10, 10, 10), 1.0, voxels_per_segment=-1)


def test_relabel_contiguous_numpy_keeps_order():
    out = relabel_contiguous_numpy(np.array([[7, 7], [2, 40]]))
    np.testing.assert_array_equal(out, [[1, 1], [0, 2]])
    assert out.dtype == np.int32


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.uint64, np.int16, np.float64])
def test_relabel_contiguous_numpy_matches_unique(dtype):
    rng = np.random.default_rng(3)
    ids = rng.choice(np.array([0, 3, 4, 9, 200, 201]), size=(5, 6, 7)).astype(dtype)
    expected = np.unique(ids.ravel(), return_inverse=True)[1].reshape(ids.shape)
    out = relabel_contiguous_numpy(ids)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int32
    # already contiguous: equal values, a new array
    contiguous = expected.astype(dtype)
    again = relabel_contiguous_numpy(contiguous)
    np.testing.assert_array_equal(again, expected)
    assert not np.shares_memory(again, contiguous)
    # negative and huge ids take the sorting path
    np.testing.assert_array_equal(relabel_contiguous_numpy(np.array([-5, 10**12, -5, 3])), [0, 2, 0, 1])


def test_supervoxel_quality_equals_the_separate_metrics():
    rng = np.random.default_rng(1)
    supervoxels = rng.integers(0, 20, size=(6, 7, 8))
    label = rng.integers(0, 3, size=(6, 7, 8))
    quality = supervoxel_quality(supervoxels, label)
    assert quality["asa"] == pytest.approx(achievable_segmentation_accuracy(supervoxels, label), abs=1e-12)
    assert quality["ue"] == pytest.approx(undersegmentation_error(supervoxels, label, "corrected"), abs=1e-12)
    assert quality["ue_levinshtein"] == pytest.approx(
        undersegmentation_error(supervoxels, label, "levinshtein"), abs=1e-12
    )
    assert supervoxel_quality(SV_8, LABEL_8) == pytest.approx({"asa": 7 / 8, "ue": 2 / 8, "ue_levinshtein": 3 / 8})


# ---- SLIC -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sitk", "skimage"])
def test_compute_supervoxels_contiguous_and_accurate(backend):
    image, label = _two_region_volume()
    supervoxels = compute_supervoxels(image, (1.0, 1.0, 1.0), voxels_per_segment=27, compactness=0.5, backend=backend)
    assert supervoxels.shape == image.shape and supervoxels.dtype == np.int32
    ids = np.unique(supervoxels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))
    # about 16*16*12 / 27 = 114 supervoxels requested
    assert 40 <= ids.size <= 300
    # the box edge is sharp: SLIC should follow it almost everywhere
    assert achievable_segmentation_accuracy(supervoxels, label) > 0.97


@pytest.mark.parametrize("backend", ["sitk", "skimage"])
def test_compute_supervoxels_deterministic(backend):
    image, _ = _two_region_volume(seed=1)
    first = compute_supervoxels(image, 1.0, n_segments=20, backend=backend)
    second = compute_supervoxels(image, 1.0, n_segments=20, backend=backend)
    np.testing.assert_array_equal(first, second)


def test_compute_supervoxels_normalization_makes_compactness_scale_free():
    image, _ = _two_region_volume(seed=2)
    raw = compute_supervoxels(image, 1.0, n_segments=30)
    scaled = compute_supervoxels(image * 250.0 + 1000.0, 1.0, n_segments=30)
    np.testing.assert_array_equal(raw, scaled)


def test_compute_supervoxels_size_follows_voxels_per_segment():
    image, _ = _two_region_volume(seed=3)
    coarse = compute_supervoxels(image, 1.0, voxels_per_segment=125).max() + 1
    fine = compute_supervoxels(image, 1.0, voxels_per_segment=27).max() + 1
    assert fine > 2 * coarse


@pytest.mark.parametrize(
    "kwargs",
    [{"backend": "felzenszwalb"}, {"compactness": 0.0}, {"max_iterations": 0}, {"num_threads": 0}],
)
def test_compute_supervoxels_rejects_bad_arguments(kwargs):
    image, _ = _two_region_volume()
    with pytest.raises(ValueError):
        compute_supervoxels(image, 1.0, **kwargs)


def test_compute_supervoxels_rejects_bad_images():
    with pytest.raises(ValueError, match="NaN"):
        compute_supervoxels(np.full((6, 6, 6), np.nan), 1.0)
    with pytest.raises(ValueError, match="2D or 3D"):
        compute_supervoxels(np.zeros((2, 6, 6, 6)), 1.0)


# ---- the script ---------------------------------------------------------------------------------------------


def _write_case(root: Path, case_id: str, seed: int, spacing=(1.0, 1.0, 2.0)):
    image, label = _two_region_volume(shape=(12, 12, 8), seed=seed)
    affine = np.diag(list(spacing) + [1.0])
    save_nifti(image, affine, root / "images" / f"{case_id}.nii.gz")
    noisy = label.copy()
    noisy[4, 5:12, 3:9] = 0  # the noisy label differs; metrics must use the clean one
    save_nifti(noisy, affine, root / "labels" / f"{case_id}.nii.gz", dtype=np.uint8)
    save_nifti(label, affine, root / "labels_clean" / f"{case_id}.nii.gz", dtype=np.uint8)
    return {
        "case_id": case_id,
        "image": f"images/{case_id}.nii.gz",
        "label": f"labels/{case_id}.nii.gz",
        "label_clean": f"labels_clean/{case_id}.nii.gz",
        "quality": "lq",
    }


@pytest.fixture
def tiny_datalist(tmp_path):
    items = [_write_case(tmp_path, f"case{i}", seed=i) for i in range(2)]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"name": "tiny", "training": items, "test": []}))
    return path


def test_script_writes_supervoxels_params_and_datalist(tiny_datalist, capsys):
    script = _load_script()
    assert script.main(["--datalist", str(tiny_datalist), "--voxels-per-segment", "27", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "ASA=" in out and "mean over 2 cases" in out and "total wall time" in out

    root = tiny_datalist.parent
    datalist = json.loads(tiny_datalist.read_text())
    for item in datalist["training"]:
        assert item["superpixel"] == f"supervoxels/{item['case_id']}_supervoxels.nii.gz"
        supervoxels, affine, _ = load_nifti(root / item["superpixel"])
        _, image_affine, _ = load_nifti(root / item["image"])
        assert supervoxels.dtype == np.int32
        np.testing.assert_allclose(affine, image_affine)
        np.testing.assert_array_equal(np.unique(supervoxels), np.arange(supervoxels.max() + 1))
    record = json.loads((root / "supervoxels" / "params.json").read_text())
    assert record["params"]["voxels_per_segment"] == 27 and record["params"]["backend"] == "sitk"
    assert set(record["cases"]) == {"case0", "case1"}
    clean, _, _ = load_nifti(root / "labels_clean" / "case0.nii.gz")
    case0, _, _ = load_nifti(root / "supervoxels" / "case0_supervoxels.nii.gz")
    assert record["cases"]["case0"]["asa"] == pytest.approx(achievable_segmentation_accuracy(case0, clean))


def test_script_skips_matching_cache_and_recomputes_on_change(tiny_datalist, capsys):
    script = _load_script()
    args = ["--datalist", str(tiny_datalist), "--voxels-per-segment", "27", "--workers", "1"]
    assert script.main(args) == 0
    capsys.readouterr()
    assert script.main(args) == 0
    assert capsys.readouterr().out.count("cached (parameters match)") == 2
    assert script.main(args + ["--force"]) == 0
    assert "cached" not in capsys.readouterr().out
    assert script.main(args[:-2] + ["--workers", "1", "--compactness", "2.0"]) == 0
    assert "cached" not in capsys.readouterr().out
    record = json.loads((tiny_datalist.parent / "supervoxels" / "params.json").read_text())
    assert record["params"]["compactness"] == 2.0


def test_script_reports_missing_image_and_keeps_datalist(tiny_datalist, capsys):
    script = _load_script()
    before = tiny_datalist.read_text()
    (tiny_datalist.parent / "images" / "case1.nii.gz").unlink()
    assert script.main(["--datalist", str(tiny_datalist), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "case1.nii.gz: file not found" in err
    assert tiny_datalist.read_text() == before


def test_script_h5_mode_reports_without_writing(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    for i in range(2):
        image, label = _two_region_volume(shape=(12, 12, 8), seed=i)
        with h5py.File(tmp_path / f"ID{i}.h5", "w") as f:
            f["image"] = image
            f["label"] = label
    before = sorted(p.name for p in tmp_path.iterdir())
    script = _load_script()
    assert script.main(["--h5-dir", str(tmp_path), "--workers", "1", "--voxels-per-segment", "27"]) == 0
    out = capsys.readouterr().out
    assert "ID0" in out and "ID1" in out and "mean over 2 cases: ASA=" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_script_h5_mode_needs_files(tmp_path, capsys):
    assert _load_script().main(["--h5-dir", str(tmp_path)]) == 1
    assert "no *.h5 files" in capsys.readouterr().err


def test_script_keeps_cache_beside_symlinked_images(tmp_path):
    # images linked from elsewhere (e.g. shared data): the cache goes beside the link, never into the target
    shared = tmp_path / "shared"
    item = _write_case(shared, "case0", seed=0)
    project = tmp_path / "project"
    (project / "images").mkdir(parents=True)
    (project / "images" / "case0.nii.gz").symlink_to(shared / "images" / "case0.nii.gz")
    item["label_clean"] = str(shared / "labels_clean" / "case0.nii.gz")
    item["label"] = str(shared / "labels" / "case0.nii.gz")
    datalist = project / "datalist.json"
    datalist.write_text(json.dumps({"training": [item]}))
    assert _load_script().main(["--datalist", str(datalist), "--workers", "1"]) == 0
    assert (project / "supervoxels" / "case0_supervoxels.nii.gz").is_file()
    assert not (shared / "supervoxels").exists()


def test_script_h5_mode_names_a_bad_file_with_a_pool(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    image, label = _two_region_volume(shape=(12, 12, 8))
    with h5py.File(tmp_path / "good.h5", "w") as f:
        f["image"] = image
        f["label"] = label
    (tmp_path / "broken.h5").write_text("not hdf5")
    assert _load_script().main(["--h5-dir", str(tmp_path), "--workers", "2", "--voxels-per-segment", "27"]) == 1
    captured = capsys.readouterr()
    assert "mean over 1 cases" in captured.out
    assert "broken: " in captured.err and "broken.h5: cannot read image/label" in captured.err
