"""scripts/audit_labels.py: the label audit from a trained (tiny ALC) bundle on a NIfTI folder whose files have a
non-identity affine (rotated axes, anisotropic spacing, so that the bundle's preprocessing reorients and resamples):
the refined labels keep the label files' shape and affine, progress per case, the ranking file, clear errors.

The audits that load the bundle run in a fresh interpreter: the bundle's ``scripts`` package must not meet this
repository's ``scripts/`` folder in the test process (see tests/handlers/test_bundle_conventions.py).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from custom.data.datalist import load_datalist
from custom.noise.quality import foreground_dice
from tests.handlers.test_bundle_conventions import trained  # noqa: F401 - the tiny trained ALC bundle (fixture)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "audit_labels.py"
# axes rotated by 90 degrees in-plane, 1.0 mm slices (the bundle resamples to 1.25 mm), shifted origin
AFFINE = np.array([[0.0, -1.25, 0.0, 20.0], [1.25, 0.0, 0.0, -10.0], [0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _script_module():
    spec = importlib.util.spec_from_file_location("audit_labels_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _audit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _save(array, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


@pytest.fixture(scope="module")
def nifti_folders(tmp_path_factory, demo_dataset) -> Path:
    """``images/``, ``labels/`` (noisy) and ``clean/`` of two LQ cases of the demo set, re-saved with AFFINE."""
    root = tmp_path_factory.mktemp("audit_inputs")
    items = [i for i in load_datalist(demo_dataset, "training") if i.get("quality") == "lq"][:2]
    for item in items:
        name = f"{item['case_id']}.nii.gz"
        _save(np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32), root / "images" / name)
        _save(np.asarray(nib.load(item["label"]).dataobj).astype(np.uint8), root / "labels" / name)
        _save(np.asarray(nib.load(item["label_clean"]).dataobj).astype(np.uint8), root / "clean" / name)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _folders(root: Path) -> list[str]:
    return ["--images", str(root / "images"), "--labels", str(root / "labels")]


def test_alc_audit_of_a_nifti_folder_keeps_the_label_geometry(trained, nifti_folders, tmp_path):  # noqa: F811
    out = tmp_path / "audit"
    proc = _audit("--bundle", str(trained), *_folders(nifti_folders), "--clean_labels", str(nifti_folders / "clean"),
                  "--output_dir", str(out), "--ranking", str(tmp_path / "ranking.json"), "--device", "cpu",
                  "--num_samples", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/2]" in proc.stderr and "[2/2]" in proc.stderr and "teacher_uncertainty=" in proc.stderr
    rows = _rows(out / "label_audit.csv")
    assert len(rows) == 2 and {r["score_name"] for r in rows} == {"teacher_uncertainty"}
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    for row in rows:
        refined, noisy = nib.load(row["refined_label"]), nib.load(row["noisy_label"])
        assert refined.shape == noisy.shape == (40, 40, 32)
        np.testing.assert_allclose(refined.affine, AFFINE, atol=1e-5)
        assert row["noisy_dice"] != ""  # the clean labels were given
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert ranking["score_name"] == "teacher_uncertainty" and ranking["n_cases"] == 2
    assert set(ranking["metrics"]) == {"audit", "cleanlab"}
    for case in ranking["cases"]:
        assert case["corrupted"] is True  # MTCL noise: every LQ case corrupted
        assert 0.0 <= case["scores"]["cleanlab"] <= 1.0


def test_disagreement_audit_scores_one_minus_the_dice_to_the_noisy_label(trained, nifti_folders, tmp_path):  # noqa
    out = tmp_path / "audit"
    proc = _audit("--bundle", str(trained), *_folders(nifti_folders), "--output_dir", str(out), "--source",
                  "disagreement", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in _rows(out / "label_audit.csv"):
        assert row["score_name"] == "prediction_disagreement" and "noisy_dice" not in row  # no clean labels
        refined = np.asarray(nib.load(row["refined_label"]).dataobj).astype(np.int64)
        noisy = np.asarray(nib.load(row["noisy_label"]).dataobj).astype(np.int64)
        assert float(row["score"]) == pytest.approx(1 - foreground_dice(refined, noisy, 2), abs=1e-6)


def test_a_label_on_another_grid_fails_with_one_line_and_writes_nothing(trained, nifti_folders, tmp_path):  # noqa
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "images" / "a.nii.gz").symlink_to(next((nifti_folders / "images").iterdir()))
    _save(np.zeros((40, 40, 30), dtype=np.uint8), bad / "labels" / "a.nii.gz")
    out = tmp_path / "audit"
    proc = _audit("--bundle", str(trained), *_folders(bad), "--output_dir", str(out), "--device", "cpu",
                  "--source", "disagreement", cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"noisyseg: error: {bad / 'labels' / 'a.nii.gz'}: label shape (40, 40, 30) differs")
    assert not out.exists()


def test_option_errors_name_the_option(nifti_folders, tmp_path, capsys):
    script = _script_module()
    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    _save(np.zeros((4, 4, 4), dtype=np.uint8), labels_only / "other.nii.gz")
    cases = [
        (["--images", str(nifti_folders / "images"), "--labels", str(labels_only)], "--labels: "),
        (["--images", str(tmp_path / "missing"), "--labels", str(labels_only)], "--images: "),
        (["--images", str(nifti_folders / "images")], "--labels: --images and --labels go together"),
        (["--datalist", "x.json", "--images", str(nifti_folders / "images")], "--datalist: give either"),
        (_folders(nifti_folders) + ["--ranking", str(tmp_path / "r.json")], "--ranking: needs the clean labels"),
        (_folders(nifti_folders), "--bundle: "),  # tmp_path is no trained bundle
    ]
    for extra, message in cases:
        code = script.main(["--bundle", str(tmp_path), "--output_dir", str(tmp_path / "out"), *extra])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 1 and last.startswith(f"noisyseg: error: {message}"), (extra, last)
        assert not (tmp_path / "out").exists()


def test_a_non_empty_output_folder_is_refused(trained, nifti_folders, tmp_path, capsys):  # noqa: F811
    script = _script_module()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = script.main(["--bundle", str(trained), *_folders(nifti_folders), "--output_dir", str(out)])
    assert code == 1 and "--output_dir: " in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
