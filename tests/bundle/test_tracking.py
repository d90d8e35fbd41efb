"""`--tracking mlflow` on a method config: MONAI's MLflow handlers find our trainer/validator and log metrics, into
``<output_dir>/mlruns.db``, and the executed config is logged as an artifact although ``output_dir`` is given as a
plain path (as ``--output_dir`` on the command line gives it)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_mlflow_tracking_logs_training_and_validation(demo_dataset, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from monai.bundle import run

    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "bundle"
    run("training", config_file=["configs/alc_la.json", "configs/quick.json"], tracking="mlflow",
        dataset_dir=str(demo_dataset.parent), datalist=str(demo_dataset), output_dir=str(out), device="cpu")
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1
    for metric in ("metrics.train_loss", "metrics.val_mean_dice"):
        assert metric in runs.columns and runs[metric].notna().all(), metric
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    artifacts = [a.path for a in client.list_artifacts(runs["run_id"].iloc[0])]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts


def test_repair_artifact_path(tmp_path):
    from custom.handlers.tracking import repair_artifact_path

    written = tmp_path / "config_20260101_000000.json"
    written.write_text("{}")
    assert repair_artifact_path(f"{tmp_path} + '/config_20260101_000000.json'") == str(written)
    assert repair_artifact_path(str(written)) == str(written)  # an existing path stays
    missing = f"{tmp_path} + '/config_19990101_000000.json'"
    assert repair_artifact_path(missing) == missing  # nothing to point at: unchanged
    assert repair_artifact_path(None) is None
