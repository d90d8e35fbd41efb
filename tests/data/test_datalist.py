from __future__ import annotations

import json
from pathlib import Path

import pytest

from custom.data.datalist import load_datalist, read_datalist_meta, relative_path, validate_datalist
from custom.io import DataError


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def _datalist() -> dict:
    return {
        "name": "toy",
        "labels": {"0": "background", "1": "left_atrium"},
        "num_classes": 2,
        "spacing": [1.25, 1.25, 1.25],
        "seed": 0,
        "noise": {"name": "mtcl", "params": {}},
        "training": [
            {"case_id": "a", "image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz",
             "label_clean": "labelsTr/a.nii.gz", "quality": "hq", "noisy_dice": 1.0},
            {"case_id": "b", "image": "imagesTr/b.nii.gz", "label": "labelsTr_noisy/b.nii.gz",
             "label_clean": "labelsTr/b.nii.gz", "quality": "lq", "noisy_dice": 0.7},
            {"case_id": "c", "image": "imagesTr/c.nii.gz", "label": "labelsTr_noisy/c.nii.gz",
             "label_clean": "labelsTr/c.nii.gz", "quality": "lq", "noisy_dice": 0.6},
        ],
        "validation": [{"case_id": "v", "image": "imagesTr/v.nii.gz", "label": "labelsTr/v.nii.gz"}],
        "test": [],
    }


def _write(folder: Path, content: dict, create_files: bool = True) -> Path:
    path = folder / "dl" / "datalist.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    if create_files:
        for split in ("training", "validation", "test"):
            for item in content.get(split, []):
                for key in ("image", "label", "label_clean"):
                    if key in item:
                        _touch(path.parent / item[key])
    return path


def test_paths_are_absolute_and_relative_to_the_datalist_folder(tmp_path, monkeypatch):
    path = _write(tmp_path, _datalist())
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    items = load_datalist(path)
    assert [item["case_id"] for item in items] == ["a", "b", "c"]
    assert items[1]["label"] == str((path.parent / "labelsTr_noisy/b.nii.gz").resolve())
    assert items[1]["label_clean"] == str((path.parent / "labelsTr/b.nii.gz").resolve())
    assert items[1]["quality"] == "lq" and items[1]["noisy_dice"] == 0.7  # other keys untouched
    validation = load_datalist(path, "validation")
    assert len(validation) == 1 and Path(validation[0]["image"]).is_absolute()
    assert load_datalist(path, "test") == []


def test_quality_filter(tmp_path):
    path = _write(tmp_path, _datalist())
    assert [i["case_id"] for i in load_datalist(path, quality="hq")] == ["a"]
    assert [i["case_id"] for i in load_datalist(path, quality="lq")] == ["b", "c"]


def test_absolute_paths_are_kept(tmp_path):
    content = _datalist()
    elsewhere = tmp_path / "elsewhere" / "img.nii.gz"
    _touch(elsewhere)
    content["training"][0]["image"] = str(elsewhere)
    path = _write(tmp_path, content)
    assert load_datalist(path)[0]["image"] == str(elsewhere)


def test_missing_file_names_datalist_case_and_file(tmp_path):
    path = _write(tmp_path, _datalist())
    (path.parent / "labelsTr_noisy/c.nii.gz").unlink()
    with pytest.raises(DataError) as info:
        load_datalist(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "'c'" in message and "labelsTr_noisy/c.nii.gz" in message and "not found" in message
    # without the file check the same datalist loads
    assert len(load_datalist(path, check_files=False)) == 3
    # the filter skips the broken item before its files are checked
    assert len(load_datalist(path, quality="hq")) == 1


def _broken(mutate) -> dict:
    content = _datalist()
    mutate(content)
    return content


@pytest.mark.parametrize(
    "mutate, split, expected",
    [
        (lambda d: d["training"][1].pop("label"), "training", "lacks required key(s) ['label']"),
        (lambda d: d["training"][0].pop("quality"), "training", "lacks required key(s) ['quality']"),
        (lambda d: d["validation"][0].pop("case_id"), "validation", "lacks required key(s) ['case_id']"),
        (lambda d: d["training"][0].update(quality="medium"), "training", "quality 'medium'"),
        (lambda d: d["training"][0].update(image_meta="x"), "training", "reserved by MONAI"),
        (lambda d: d["training"][2].update(case_id="b"), "training", "duplicates case_id 'b'"),
        (lambda d: d.pop("test"), "test", "no 'test' split"),
        (lambda d: d.update(training={"a": 1}), "training", "must be a list"),
        (lambda d: d.update(training=[]), "training", "'training' split is empty"),
        (lambda d: d["training"].append("x.nii.gz"), "training", "training[3] must be an object"),
        (lambda d: d["training"][0].update(image=""), "training", "non-empty path string"),
        (lambda d: d.update(num_classes=3), "training", "'num_classes' is 3"),
        (lambda d: d.update(num_classes=1, labels=None), "training", "integer >= 2"),
        (lambda d: d.update(spacing=[1, 1]), "training", "'spacing' must be a list of 3 positive numbers"),
    ],
)
def test_structure_errors(tmp_path, mutate, split, expected):
    path = _write(tmp_path, _broken(mutate), create_files=False)
    with pytest.raises(DataError) as info:
        load_datalist(path, split, check_files=False)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_unreadable_datalists(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="datalist not found"):
        load_datalist(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"training": [')
    with pytest.raises(DataError, match="cannot read datalist JSON"):
        load_datalist(broken)
    array = tmp_path / "array.json"
    array.write_text("[]")
    with pytest.raises(DataError, match="must be a JSON object"):
        read_datalist_meta(array)


def test_bad_arguments(tmp_path):
    path = _write(tmp_path, _datalist())
    with pytest.raises(ValueError, match="split must be one of"):
        load_datalist(path, "train")
    with pytest.raises(ValueError, match="quality must be one of"):
        load_datalist(path, quality="HQ")
    with pytest.raises(ValueError, match="only applies to the 'training' split"):
        load_datalist(path, "validation", quality="hq")


def test_read_meta_returns_everything_but_the_splits(tmp_path):
    path = _write(tmp_path, _datalist(), create_files=False)
    meta = read_datalist_meta(path)
    assert set(meta) == {"name", "labels", "num_classes", "spacing", "seed", "noise"}
    assert meta["num_classes"] == 2 and meta["spacing"] == [1.25, 1.25, 1.25]


def test_validate_datalist_on_a_dict_returns_copies():
    content = _datalist()
    items = validate_datalist(content, "mem.json", "training")
    items[0]["image"] = "changed"
    assert content["training"][0]["image"] == "imagesTr/a.nii.gz"


def test_relative_path(tmp_path):
    assert relative_path(tmp_path / "data/imagesTr/x.nii.gz", tmp_path / "datalist.json") == "data/imagesTr/x.nii.gz"
    assert relative_path(tmp_path / "a/x.nii.gz", tmp_path / "b/datalist.json") == "../a/x.nii.gz"
