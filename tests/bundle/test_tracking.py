"""`--tracking mlflow` on a method config: MONAI's MLflow handlers find our trainer/validator and log metrics."""

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
