"""``custom.annotation.reviewed_labels`` and ``scripts/merge_reviewed_labels.py``: reviewed labels become HQ training
labels of a new datalist."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from custom.annotation.reviewed_labels import merge_reviewed_labels, reviewed_label_files
from custom.data import load_datalist
from custom.io import DataError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _resolved(items: list[dict]) -> list[dict]:
    """Items with their paths resolved (``load_datalist`` joins them to the datalist's folder as written)."""
    return [{k: str(Path(v).resolve()) if k in ("image", "label", "label_clean") else v for k, v in i.items()}
            for i in items]


def _lq_ids(datalist: Path) -> list[str]:
    return [i["case_id"] for i in load_datalist(datalist, "training") if i["quality"] == "lq"]


def _review(folder: Path, datalist: Path, case_ids: list[str]) -> Path:
    """Stand-in for labels submitted in MONAI Label: the clean label saved as labels/final/<case_id>.nii.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in load_datalist(datalist, "training"):
        if item["case_id"] in case_ids:
            shutil.copyfile(item["label_clean"], folder / f"{item['case_id']}.nii.gz")
    return folder


def test_reviewed_cases_train_as_hq_on_their_reviewed_label(tmp_path, demo_dataset):
    lq = _lq_ids(demo_dataset)
    reviewed = _review(tmp_path / "studies" / "labels" / "final", demo_dataset, lq[:2])
    out, merged = merge_reviewed_labels(demo_dataset, reviewed, tmp_path / "elsewhere" / "datalist.json")
    assert merged == lq[:2]

    before = {i["case_id"]: i for i in _resolved(load_datalist(demo_dataset, "training"))}
    # load_datalist checks that every file exists: the paths resolve from the new datalist's folder
    after = {i["case_id"]: i for i in _resolved(load_datalist(out, "training"))}
    assert list(after) == list(before)
    for case_id, item in after.items():
        assert set(item) == set(before[case_id])  # same keys: items of one batch collate key by key
        if case_id in lq[:2]:
            assert item["quality"] == "hq"
            assert Path(item["label"]) == (reviewed / f"{case_id}.nii.gz").resolve()
            assert item["label_clean"] == before[case_id]["label_clean"]
        else:
            assert item == before[case_id]
    for split in ("validation", "test"):
        assert _resolved(load_datalist(out, split)) == _resolved(load_datalist(demo_dataset, split))
    content = json.loads(out.read_text())
    assert content["reviewed_cases"] == sorted(lq[:2])
    assert content["labels"] == json.loads(demo_dataset.read_text())["labels"]

    # a second round adds to the first
    _review(reviewed, demo_dataset, lq[2:3])
    out2, merged2 = merge_reviewed_labels(out, reviewed, tmp_path / "round2.json")
    assert json.loads(out2.read_text())["reviewed_cases"] == sorted(lq[:3])


def test_names_that_are_no_training_case_are_refused(tmp_path, demo_dataset):
    reviewed = tmp_path / "final"
    reviewed.mkdir()
    (reviewed / "typo_case.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="typo_case"):
        merge_reviewed_labels(demo_dataset, reviewed, tmp_path / "out.json")
    (reviewed / "typo_case.nii.gz").unlink()
    test_case = json.loads(demo_dataset.read_text())["test"][0]["case_id"]
    (reviewed / f"{test_case}.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="only training cases"):
        merge_reviewed_labels(demo_dataset, reviewed, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(DataError, match="new file"):
        merge_reviewed_labels(demo_dataset, reviewed, demo_dataset)


def test_reviewed_label_files(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "b.nii").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert sorted(reviewed_label_files(tmp_path)) == ["a", "b"]
    (tmp_path / "a.nii").write_bytes(b"")
    with pytest.raises(DataError, match="second reviewed label"):
        reviewed_label_files(tmp_path)
    with pytest.raises(DataError, match="not found"):
        reviewed_label_files(tmp_path / "missing")


def test_script(tmp_path, demo_dataset):
    lq = _lq_ids(demo_dataset)
    reviewed = _review(tmp_path / "final", demo_dataset, lq[:1])
    script = REPO_ROOT / "scripts" / "merge_reviewed_labels.py"
    proc = subprocess.run([sys.executable, str(script), "--datalist", str(demo_dataset), "--reviewed", str(reviewed),
                           "--out", str(tmp_path / "reviewed.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert lq[0] in proc.stdout and "1 training case(s)" in proc.stdout
    proc = subprocess.run([sys.executable, str(script), "--datalist", str(demo_dataset), "--reviewed",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("noisyseg: error: ")
