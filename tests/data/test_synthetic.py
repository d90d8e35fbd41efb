from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import custom.data.synthetic as synthetic
from custom.data import ensure_dataset, load_datalist, make_synthetic_dataset, read_datalist_meta
from custom.io import DataError, load_nifti

SMALL = dict(num_cases=6, shape=(16, 16, 12), val_count=1, test_count=1)  # 4 training cases: 1 HQ, 3 LQ


def test_label_classes_shapes_and_determinism():
    for num_classes in (2, 3, 4):
        label = synthetic.synthetic_label((20, 18, 16), num_classes, np.random.default_rng(3))
        assert label.shape == (20, 18, 16) and label.dtype == np.uint8
        assert np.unique(label).tolist() == list(range(num_classes))  # every class present
    first = synthetic.synthetic_label((20, 18, 16), 2, np.random.default_rng(7))
    again = synthetic.synthetic_label((20, 18, 16), 2, np.random.default_rng(7))
    other = synthetic.synthetic_label((20, 18, 16), 2, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_class_one_is_a_single_blob_away_from_the_border():
    from scipy import ndimage

    label = synthetic.synthetic_label((32, 32, 24), 2, np.random.default_rng(0))
    assert ndimage.label(label == 1)[1] == 1
    assert 0.01 < (label == 1).mean() < 0.25  # an organ, not the whole field of view


def test_further_classes_touch_class_one():
    from scipy import ndimage

    label = synthetic.synthetic_label((32, 32, 24), 3, np.random.default_rng(1))
    assert np.any(ndimage.binary_dilation(label == 2) & (label == 1))  # adjacent structure


def test_image_is_z_scored_and_classes_are_ordered_by_brightness():
    image, label = synthetic.synthetic_case("c1", shape=(32, 32, 24), num_classes=3, seed=0)
    assert image.dtype == np.float32 and image.shape == label.shape
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1.0) < 1e-3
    means = [float(image[label == c].mean()) for c in range(3)]
    assert means[0] < means[1] < means[2]  # background < class 1 < class 2
    # learnable but not trivial: the classes overlap in intensity
    assert means[1] - means[0] > 1.0
    assert float(image[label == 0].max()) > float(image[label == 1].min())


def test_case_depends_only_on_seed_and_case_id():
    a = synthetic.synthetic_case("c1", shape=(16, 16, 12), seed=0)
    b = synthetic.synthetic_case("c1", shape=(16, 16, 12), seed=0)
    c = synthetic.synthetic_case("c1", shape=(16, 16, 12), seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        synthetic.synthetic_label((4, 16, 16), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.synthetic_label((16, 16, 16), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_cases"):
        make_synthetic_dataset("unused", num_cases=0)


def test_make_dataset_files_splits_and_counts(tmp_path):
    path = Path(make_synthetic_dataset(tmp_path / "demo", seed=0, **SMALL))
    assert path == tmp_path / "demo" / "datalist.json"
    meta = read_datalist_meta(path)
    assert meta["num_classes"] == 2 and meta["spacing"] == [1.25, 1.25, 1.25] and meta["synthetic"] is True
    assert meta["noise"]["name"] == "mtcl"
    training = load_datalist(path)
    assert sum(i["quality"] == "hq" for i in training) == 1  # round(0.25 * 4)
    assert sum(i["quality"] == "lq" for i in training) == 3
    assert len(load_datalist(path, "validation")) == 1 and len(load_datalist(path, "test")) == 1
    ids = [i["case_id"] for split in ("training", "validation", "test") for i in load_datalist(path, split)]
    assert sorted(ids) == [f"synth_{k:03d}" for k in range(6)]
    for item in training:
        image, affine, _ = load_nifti(item["image"])
        label, _, _ = load_nifti(item["label"])
        clean, _, _ = load_nifti(item["label_clean"])
        assert image.shape == label.shape == clean.shape == (16, 16, 12)
        np.testing.assert_allclose(np.diag(affine), [1.25, 1.25, 1.25, 1.0])
        assert set(np.unique(clean).tolist()) == {0, 1}
        if item["quality"] == "hq":
            assert item["label"] == item["label_clean"] and item["noisy_dice"] == 1.0
        else:
            assert "labelsTr_noisy" in item["label"]
    report = (tmp_path / "demo" / "noise_report.csv").read_text().splitlines()
    assert report[0].startswith("case_id,quality,noise,params,noisy_dice,") and len(report) == 5
    assert "lost_classes" in report[0] and "size_voxels" in report[0]  # per-class outcome and sizes used


def test_three_class_variant_uses_symmetric_noise(tmp_path):
    path = make_synthetic_dataset(tmp_path / "demo3", num_classes=3, **SMALL)
    meta = read_datalist_meta(path)
    assert meta["num_classes"] == 3 and meta["labels"]["2"] == "structure_2"
    assert meta["noise"] == {"name": "symmetric", "params": {"rate": 0.3}, "alpha": None}
    lq = load_datalist(path, quality="lq")[0]
    clean, noisy = load_nifti(lq["label_clean"])[0], load_nifti(lq["label"])[0]
    assert set(np.unique(clean).tolist()) == {0, 1, 2}
    assert 0.2 < float(np.mean(clean != noisy)) < 0.4  # about the flip rate


def test_ensure_dataset_generates_once_and_reuses(tmp_path, monkeypatch):
    calls = []
    real = synthetic.make_synthetic_dataset

    def small(out_dir, **kwargs):
        calls.append(out_dir)
        return real(out_dir, **{**kwargs, **SMALL})

    monkeypatch.setattr(synthetic, "make_synthetic_dataset", small)
    folder = tmp_path / "data" / "demo"
    path = ensure_dataset(str(folder))
    assert Path(path) == folder / "datalist.json" and len(calls) == 1
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert ensure_dataset(str(folder)) == path  # cached: no second generation, nothing rewritten
    assert ensure_dataset(str(folder), datalist=str(folder / "datalist.json")) == path
    assert len(calls) == 1
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps
    assert [p.name for p in folder.parent.iterdir()] == ["demo"]  # no temporary folders left
    with pytest.raises(DataError, match="num_classes=2, requested 3"):
        ensure_dataset(str(folder), num_classes=3)


def test_ensure_dataset_fills_an_empty_folder(tmp_path, monkeypatch):
    real = synthetic.make_synthetic_dataset
    monkeypatch.setattr(synthetic, "make_synthetic_dataset", lambda out_dir, **kw: real(out_dir, **{**kw, **SMALL}))
    folder = tmp_path / "empty"
    folder.mkdir()
    assert Path(ensure_dataset(folder, make_demo=True)).is_file()


@pytest.mark.parametrize("name", ["dmeo", "la_data"])
def test_ensure_dataset_refuses_a_missing_or_empty_folder_that_is_no_demo_folder(tmp_path, name):
    """A mistyped --dataset_dir is an error naming it (issue 19); nothing is generated or created."""
    missing = tmp_path / "data" / name
    with pytest.raises(DataError, match="dataset folder not found") as info:
        ensure_dataset(missing)
    assert str(info.value).startswith(str(missing)) and "--dataset_dir" in str(info.value)
    assert not (tmp_path / "data").exists()
    missing.mkdir(parents=True)
    with pytest.raises(DataError, match="dataset folder is empty"):
        ensure_dataset(missing)
    assert list(missing.iterdir()) == []
    with pytest.raises(DataError, match="not found"):
        ensure_dataset(tmp_path / "demo_x", make_demo=False)


def test_ensure_dataset_reports_progress_per_case(tmp_path, monkeypatch, capsys):
    real = synthetic.make_synthetic_dataset
    monkeypatch.setattr(synthetic, "make_synthetic_dataset", lambda out_dir, **kw: real(out_dir, **{**kw, **SMALL}))
    monkeypatch.setattr(synthetic.logger, "hasHandlers", lambda: False)  # unconfigured logging: printed
    folder = tmp_path / "demo"
    ensure_dataset(folder)
    lines = capsys.readouterr().out.splitlines()
    assert "generating the synthetic demo dataset" in lines[0] and str(folder) in lines[0]
    case_lines = [line for line in lines if line.lstrip().startswith("[") and "synth_" in line]
    assert len(case_lines) == SMALL["num_cases"], lines
    ensure_dataset(folder)  # cached: silent
    assert capsys.readouterr().out == ""


def test_ensure_dataset_returns_an_existing_datalist_untouched(tmp_path):
    datalist = tmp_path / "mine.json"
    datalist.write_text(json.dumps({"training": []}))
    assert ensure_dataset(tmp_path / "unused", datalist=str(datalist)) == str(datalist)
    assert not (tmp_path / "unused").exists()


def test_ensure_dataset_errors(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "case.nii.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="holds files but no datalist.json") as info:
        ensure_dataset(folder)
    assert str(info.value).startswith(str(folder))
    with pytest.raises(DataError, match="datalist not found"):
        ensure_dataset(tmp_path / "other", datalist=str(tmp_path / "missing.json"))


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real_case = synthetic.synthetic_case
    count = []

    def failing(*args, **kwargs):
        count.append(1)
        if len(count) == 3:
            raise KeyboardInterrupt
        return real_case(*args, **kwargs)

    monkeypatch.setattr(synthetic, "synthetic_case", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one
