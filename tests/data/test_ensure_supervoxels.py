"""Tests for custom.data.supervoxels.ensure_supervoxels: supervoxels computed once at config time, cached on disk
in the layout of scripts/make_supervoxels.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.data.supervoxels import compute_supervoxels, ensure_supervoxels, supervoxel_cache_params

REPO = Path(__file__).resolve().parents[2]


def _datalist(tmp_path, with_clean=True):
    # shape: (16, 16, 12); a bright box in a dark volume, spacing 1.5 x 1.5 x 2 mm
    rng = np.random.default_rng(0)
    label = np.zeros((16, 16, 12), dtype=np.uint8)
    label[4:11, 5:12, 3:9] = 1
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    items = []
    for case_id in ("c0", "c1"):
        image = (label * 3.0 + rng.normal(0, 0.1, label.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "imagesTr" / f"{case_id}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "labelsTr" / f"{case_id}.nii.gz"))
        item = {"case_id": case_id, "image": f"imagesTr/{case_id}.nii.gz", "label": f"labelsTr/{case_id}.nii.gz",
                "quality": "lq"}
        if with_clean:
            item["label_clean"] = f"labelsTr/{case_id}.nii.gz"
        items.append(item)
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": items, "validation": [], "test": []}))
    return path


def test_adds_cached_maps_once(tmp_path):
    path = _datalist(tmp_path)
    assert ensure_supervoxels(path, voxels_per_segment=64) == str(path)
    items = json.loads(path.read_text())["training"]
    assert [i["superpixel"] for i in items] == [f"supervoxels/c{k}_supervoxels.nii.gz" for k in (0, 1)]
    written = nib.load(str(tmp_path / items[0]["superpixel"]))
    image = nib.load(str(tmp_path / "imagesTr" / "c0.nii.gz"))
    np.testing.assert_allclose(written.affine, image.affine)
    expected = compute_supervoxels(np.asarray(image.dataobj), [1.5, 1.5, 2.0], voxels_per_segment=64)
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    record = json.loads((tmp_path / "supervoxels" / "params.json").read_text())
    assert record["params"] == supervoxel_cache_params(voxels_per_segment=64)
    assert 0.9 < record["cases"]["c0"]["asa"] <= 1.0
    # a second call finds every map and changes nothing
    stamp = (tmp_path / items[0]["superpixel"]).stat().st_mtime_ns
    datalist_stamp = path.stat().st_mtime_ns
    ensure_supervoxels(path, voxels_per_segment=64)
    assert (tmp_path / items[0]["superpixel"]).stat().st_mtime_ns == stamp
    assert path.stat().st_mtime_ns == datalist_stamp


def test_reuses_the_cache_of_matching_parameters_and_recomputes_otherwise(tmp_path):
    path = _datalist(tmp_path, with_clean=False)
    ensure_supervoxels(path, voxels_per_segment=64)
    sv_file = tmp_path / "supervoxels" / "c0_supervoxels.nii.gz"
    stamp = sv_file.stat().st_mtime_ns
    # drop the key: the cached map with the same parameters is reused
    content = json.loads(path.read_text())
    for item in content["training"]:
        del item["superpixel"]
    path.write_text(json.dumps(content))
    ensure_supervoxels(path, voxels_per_segment=64)
    assert sv_file.stat().st_mtime_ns == stamp
    assert "superpixel" in json.loads(path.read_text())["training"][0]
    # other parameters with force: recomputed, the record follows
    ensure_supervoxels(path, voxels_per_segment=27, force=True)
    assert json.loads((tmp_path / "supervoxels" / "params.json").read_text())["params"]["voxels_per_segment"] == 27


def test_cache_parameters_match_the_script(tmp_path):
    spec = importlib.util.spec_from_file_location("make_supervoxels_for_ensure", REPO / "scripts" /
                                                  "make_supervoxels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    args = module.parse_args(["--datalist", str(tmp_path / "d.json")])
    assert module.supervoxel_params(args) == supervoxel_cache_params()
    args = module.parse_args(["--datalist", str(tmp_path / "d.json"), "--n-segments", "50", "--compactness", "2"])
    assert module.supervoxel_params(args) == supervoxel_cache_params(n_segments=50, compactness=2.0)


def test_errors_name_the_datalist(tmp_path):
    path = _datalist(tmp_path)
    with pytest.raises(ValueError, match="datalist.json.*'validation_x'"):
        ensure_supervoxels(path, splits=("validation_x",))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        ensure_supervoxels(bad)


def test_worker_pool_gives_the_same_maps_and_reports_every_case(tmp_path):
    serial_dir, pool_dir = tmp_path / "serial", tmp_path / "pool"
    serial_dir.mkdir()
    pool_dir.mkdir()
    serial, pooled = _datalist(serial_dir), _datalist(pool_dir)
    rows = []
    ensure_supervoxels(serial, voxels_per_segment=27)
    ensure_supervoxels(pooled, voxels_per_segment=27, workers=2, report=rows.append)
    for case_id in ("c0", "c1"):
        a = nib.load(str(serial_dir / "supervoxels" / f"{case_id}_supervoxels.nii.gz"))
        b = nib.load(str(pool_dir / "supervoxels" / f"{case_id}_supervoxels.nii.gz"))
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert [r["case_id"] for r in rows] == ["c0", "c1"] and not any(r["cached"] for r in rows)
    record = json.loads((pool_dir / "supervoxels" / "params.json").read_text())
    assert rows[0]["asa"] == record["cases"]["c0"]["asa"] and rows[0]["seconds"] > 0
    # second pass with keep_existing=False: the record decides, every case reported as cached
    rows.clear()
    ensure_supervoxels(pooled, voxels_per_segment=27, workers=2, keep_existing=False, report=rows.append)
    assert [(r["case_id"], r["cached"]) for r in rows] == [("c0", True), ("c1", True)]
    assert rows[1]["ue"] == record["cases"]["c1"]["ue"] and rows[1]["seconds"] is None


def test_keep_existing_false_recomputes_on_new_parameters(tmp_path):
    path = _datalist(tmp_path)
    ensure_supervoxels(path, voxels_per_segment=64)
    k_before = json.loads((tmp_path / "supervoxels" / "params.json").read_text())["cases"]["c0"]["num_supervoxels"]
    ensure_supervoxels(path, voxels_per_segment=8)  # config time: the existing map is kept
    assert json.loads((tmp_path / "supervoxels" / "params.json").read_text())["params"]["voxels_per_segment"] == 64
    ensure_supervoxels(path, voxels_per_segment=8, keep_existing=False)
    record = json.loads((tmp_path / "supervoxels" / "params.json").read_text())
    assert record["params"]["voxels_per_segment"] == 8
    assert record["cases"]["c0"]["num_supervoxels"] > k_before


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_cases_are_all_named_and_the_datalist_kept(tmp_path, workers):
    path = _datalist(tmp_path)
    content = json.loads(path.read_text())
    content["training"].append(dict(content["training"][0], case_id="gone", image="imagesTr/gone.nii.gz"))
    content["training"].append(dict(content["training"][0], case_id="lost", image="imagesTr/lost.nii.gz"))
    path.write_text(json.dumps(content))
    before = path.read_text()
    with pytest.raises(ValueError, match=r"2 case\(s\) failed.*gone: .*gone.nii.gz: file not found.*lost: "):
        ensure_supervoxels(path, voxels_per_segment=64, workers=workers)
    assert path.read_text() == before
    # the cases that worked are cached
    assert set(json.loads((tmp_path / "supervoxels" / "params.json").read_text())["cases"]) == {"c0", "c1"}


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        ensure_supervoxels(_datalist(tmp_path), workers=0)
