"""``custom.annotation.audit_queue``: the audit's ranking served as a review queue, without a server."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.annotation.audit_queue import AuditQueue, case_id_of, read_audit

AUDIT_COLUMNS = ["rank", "case_id", "score_name", "score", "changed_fraction", "refined_label", "noisy_label"]


def _write_csv(path: Path, rows: list[dict], columns: list[str] = AUDIT_COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(folder: Path, ranked: list[str]) -> list[dict]:
    return [{"rank": r, "case_id": c, "score_name": "teacher_uncertainty", "score": 1.0 / r, "changed_fraction": 0.1,
             "refined_label": str(folder / "labels" / f"{c}.nii.gz"), "noisy_label": f"/data/{c}.nii.gz"}
            for r, c in enumerate(ranked, start=1)]


@pytest.fixture
def audit_csv(tmp_path) -> Path:
    folder = tmp_path / "audit"
    # rows deliberately out of order in the file: the rank column decides
    rows = _rows(folder, ["case_c", "case_a", "case_d", "case_b"])
    return _write_csv(folder / "label_audit.csv", [rows[2], rows[0], rows[3], rows[1]])


@pytest.mark.parametrize("name, expected", [
    ("synth_004", "synth_004"),
    ("synth_004.nii.gz", "synth_004"),
    ("/studies/synth_004.nii.gz", "synth_004"),
    ("/studies/synth_004.NII", "synth_004"),
    ("case.v2.nrrd", "case.v2"),
    ("case.v2", "case.v2"),
])
def test_case_id_is_the_file_stem(name, expected):
    assert case_id_of(name) == expected


def test_read_audit_orders_by_rank(audit_csv):
    entries = read_audit(audit_csv)
    assert [e.rank for e in entries] == [1, 2, 3, 4]
    assert [e.case_id for e in entries] == ["case_c", "case_a", "case_d", "case_b"]
    assert entries[0].score == pytest.approx(1.0) and entries[0].score_name == "teacher_uncertainty"
    assert entries[0].changed_fraction == pytest.approx(0.1)


def test_next_case_skips_submitted_and_unknown_images(audit_csv):
    queue = AuditQueue.from_csv(audit_csv)
    images = ["case_a", "case_b", "case_c", "case_d", "not_audited"]
    image_id, entry = queue.next_case(images)
    assert (image_id, entry.rank) == ("case_c", 1)
    # the first served case gets a submitted label: the second one comes next, then the third
    assert queue.next_case(images, submitted=["case_c"])[0] == "case_a"
    assert queue.next_case(images, submitted={"case_c", "case_a"})[0] == "case_d"
    assert [i for i, _ in queue.pending(images, submitted=["case_c"])] == ["case_a", "case_d", "case_b"]
    # everything audited is reviewed: nothing left, even though an unaudited image is unlabelled
    assert queue.next_case(images, submitted=["case_a", "case_b", "case_c", "case_d"]) is None


def test_next_case_only_offers_images_of_the_datastore(audit_csv):
    queue = AuditQueue.from_csv(audit_csv)
    # the top case is not among the studies: the best one that is comes first
    assert queue.next_case(["case_b", "case_d"])[0] == "case_d"
    assert queue.next_case([]) is None
    assert queue.next_case(["other"]) is None


def test_file_names_and_paths_map_to_case_ids(audit_csv):
    queue = AuditQueue.from_csv(audit_csv)
    images = ["/studies/case_a.nii.gz", "/studies/case_c.nii.gz"]
    assert queue.next_case(images)[0] == "/studies/case_c.nii.gz"
    assert queue.next_case(images, submitted=["case_c.nii.gz"])[0] == "/studies/case_a.nii.gz"
    assert queue.entry("/studies/case_d.nii.gz").rank == 3
    assert queue.entry("case_x") is None


def test_ties_in_rank_break_by_case_id(tmp_path):
    rows = _rows(tmp_path, ["b", "a"])
    rows[1]["rank"] = 1
    queue = AuditQueue.from_csv(_write_csv(tmp_path / "label_audit.csv", rows))
    assert queue.next_case(["b", "a"])[0] == "a"


def test_relative_and_moved_refined_labels_resolve_in_the_audit_folder(tmp_path):
    folder = tmp_path / "moved_audit"
    (folder / "labels").mkdir(parents=True)
    for case in ("x", "y"):
        (folder / "labels" / f"{case}.nii.gz").write_bytes(b"")
    rows = _rows(tmp_path / "where_it_was_written", ["x", "y"])
    rows[0]["refined_label"] = "labels/x.nii.gz"  # relative to the CSV
    entries = read_audit(_write_csv(folder / "label_audit.csv", rows))
    assert entries[0].refined_label == (folder / "labels" / "x.nii.gz").resolve()
    assert entries[1].refined_label == (folder / "labels" / "y.nii.gz").resolve()  # absolute path gone: found here


def test_bad_audit_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        read_audit(_write_csv(tmp_path / "a.csv", [{"case_id": "x"}], columns=["case_id"]))
    rows = _rows(tmp_path, ["x", "x"])
    with pytest.raises(ValueError, match="appears twice"):
        read_audit(_write_csv(tmp_path / "b.csv", rows))
    rows = _rows(tmp_path, ["x"])
    rows[0]["rank"] = "first"
    with pytest.raises(ValueError, match="not an integer"):
        read_audit(_write_csv(tmp_path / "c.csv", rows))


def test_reads_the_csv_of_the_project_audit_writer(tmp_path):
    from custom.refinement.label_audit import AuditCase, write_label_audit

    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    cases = []
    for case_id, score in (("lq_low", 0.1), ("lq_high", 0.9), ("lq_mid", 0.5)):
        noisy = tmp_path / "noisy" / f"{case_id}.nii.gz"
        noisy.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), affine), str(noisy))
        refined = np.zeros((4, 4, 3), np.int64)
        refined[1:3, 1:3, 1] = 1
        cases.append(AuditCase(case_id, refined, affine, None, score, str(noisy)))
    csv_path = write_label_audit(cases, tmp_path / "audit", "teacher_uncertainty", num_classes=2)
    queue = AuditQueue.from_csv(csv_path)
    assert [e.case_id for e in queue.entries] == ["lq_high", "lq_mid", "lq_low"]
    assert all(e.refined_label.is_file() for e in queue.entries)
    assert queue.next_case(["lq_low", "lq_mid", "lq_high"], submitted=["lq_high"])[0] == "lq_mid"


def test_module_needs_only_the_standard_library():
    # it is copied into a MONAI Label app, where neither this repository nor numpy/torch may be importable
    import custom.annotation.audit_queue as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= {"__future__", "csv", "os", "collections", "pathlib", "typing"}, imported
